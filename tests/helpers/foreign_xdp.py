"""Attach another tool's XDP program (named foreign_tool) to a device, then exit.

Run as `python -m tests.helpers.foreign_xdp DEV`: the program stays attached after this process
exits (netlink XDP does), which is exactly the situation the agent must respect.
"""

import sys

from xtrace_agent.xdp import headers


def main(dev: str) -> None:
    headers.resolve()  # the agent's own header resolution, so this works where the agent does
    from bcc import BPF

    b = BPF(text="int foreign_tool(struct xdp_md *ctx) { return XDP_PASS; }")
    b.attach_xdp(dev, b.load_func("foreign_tool", BPF.XDP), 0)


if __name__ == "__main__":
    main(sys.argv[1])
