"""Agent start-up time to attached, and steady-state memory, on a real veth with live flows.

Targets (issue 2): steady-state RSS <= 100 MiB (a naive BCC agent stays near 190 MiB because
LLVM stays resident after the compile; NetObserv's agent runs at about 110 MiB per node).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import status_kib  # noqa: E402

from tests.helpers.netns import AGENT, VethPair, xdp_prog  # noqa: E402

FLOW_COUNTS = (2000, 20000)  # 20,000 = the default per-node series budget (xdp.maxFlows)
INTERVAL = 1.0


def measure(flows: int) -> tuple[float, float, float]:
    """(seconds to attached, steady RSS MiB, peak RSS MiB) with `flows` live flows every interval."""
    veth = VethPair(tag=f"b{os.getpid() % 10000}", n=88)
    veth.create()
    agent = None
    try:
        began = time.monotonic()
        agent = subprocess.Popen([AGENT, "-i", veth.dev_b, "--interval", str(INTERVAL), "--http-listen", "",
                                  "--output", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not xdp_prog(veth.dev_b):
            if agent.poll() is not None:
                raise SystemExit(f"agent failed: {agent.stderr.read().decode()}")
            time.sleep(0.01)
        startup = time.monotonic() - began
        sender = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        rss = []
        for _ in range(5):
            for i in range(flows):  # `flows` distinct flows every interval
                sender.sendto(b"x" * 64, (veth.ip4_b, 10000 + i))
            time.sleep(INTERVAL)
            rss.append(status_kib(agent.pid, "VmRSS"))
        peak = status_kib(agent.pid, "VmHWM")
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    finally:
        if agent and agent.poll() is None:
            agent.kill()
        veth.destroy()
    return startup, rss[-1] / 1024, peak / 1024


def main() -> int:
    if os.geteuid() != 0:
        print("bench_agent needs root (XDP on a veth)")
        return 1
    rows = []
    for flows in FLOW_COUNTS:
        startup, steady, peak = measure(flows)
        if flows == FLOW_COUNTS[0]:
            rows.append(("start-up to XDP attached (s)", f"{startup:.2f}", "-", ""))
        rows.append((f"steady-state RSS, {flows} live flows (MiB)", f"{steady:.1f}", "<= 100",
                     "ok" if steady <= 100 else "MISS"))
        rows.append((f"peak RSS, {flows} live flows (MiB)", f"{peak:.1f}", "-", ""))
    print(f"{'measure':<46} | {'measured':>9} | {'target':>7} | ok")
    for name, value, target, ok in rows:
        print(f"{name:<46} | {value:>9} | {target:>7} | {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
