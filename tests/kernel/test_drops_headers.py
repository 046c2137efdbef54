"""Headers of another kernel than the running one still attribute drops exactly (issue "What
went wrong with the packets"): the compile here uses Debian's 6.1 headers while the kernel is
another version; the offsets the drop program reads come from the running kernel's BTF.

The test first shows that the headers are wrong for this kernel (offsetof() compiled against
them differs from the BTF for fields the program reads), then that a program built with the
headers' offsets misses the drops (the control: the test would see the bug), and that the real
one, with the BTF's offsets, counts every drop under its flow.
"""

from __future__ import annotations

import platform
import socket
import time

import pytest

from tests.conftest import need
from tests.kernel.test_drops import Watch, closed_port, drop_flows, events, flow_of, send_udp  # noqa: F401
from xtrace_agent.xdp import events as ev
from xtrace_agent.xdp import headers, libbpf

pytestmark = pytest.mark.kernel

INCLUDES = ("linux/skbuff.h", "linux/netdevice.h", "net/sock.h", "net/tcp.h", "net/net_namespace.h")


def header_offsets() -> dict[str, int]:
    """offsetof() of every field the programs read, as the headers BCC compiles with say."""
    headers.resolve()
    from bcc import BPF

    src = "".join(f"#include <{h}>\n" for h in INCLUDES)
    names = list(ev.FIELDS)
    for i, name in enumerate(names):
        struct_name, member = ev.FIELDS[name]
        src += f"int f{i}(struct bpf_raw_tracepoint_args *ctx) {{ return offsetof(struct {struct_name}, {member}); }}\n"
    b = BPF(text=src.encode())
    try:
        return {name: libbpf.raw_tp_test_run(b.load_func(f"f{i}".encode(), BPF.RAW_TRACEPOINT).fd, (0,))
                for i, name in enumerate(names)}
    finally:
        b.cleanup()


def test_headers_of_another_kernel_still_attribute_exactly(events, veth):  # noqa: F811
    used = headers.choose(platform.release())
    need(used is not None and used.release != platform.release(),
         "the kernel headers here match the running kernel: nothing to prove")
    from_headers = header_offsets()
    from_btf = ev.kernel_layout(("drops",)).defines
    wrong = sorted(n for n in from_headers if from_headers[n] != from_btf[n])
    assert {"XT_OFF_DEV_IFINDEX", "XT_OFF_SKB_HEAD"} <= set(wrong), wrong  # the headers lie about this kernel

    def udp_drops(prog) -> tuple[dict, tuple]:
        w = Watch(prog, veth.dev_b)
        try:
            port = closed_port()
            sport = send_udp(veth, port, 6)
            time.sleep(0.1)
            snap = w.report()
            return drop_flows(snap, veth), flow_of(veth.dev_b, "ingress", veth.ip4_a, veth.ip4_b, sport, port, 17,
                                                   "NO_SOCKET")
        finally:
            w.close()

    # the control: the same program with the headers' offsets does not find these drops
    with ev.EventsProgram.load(("drops",), offsets={n: from_headers[n] for n in wrong}) as misled:
        misled.attach()
        got, key = udp_drops(misled)
        assert got.get(key) != 6
    # the agent's program, offsets from the BTF: every drop, under its flow
    got, key = udp_drops(events)
    assert got == {key: 6}
    assert socket.if_nametoindex(veth.dev_b)
