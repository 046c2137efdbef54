"""Agent start-up time to attached, and steady-state memory, on a real veth with live flows.

Targets (issue 2): steady-state RSS <= 100 MiB (a naive BCC agent stays near 190 MiB because
LLVM stays resident after the compile; NetObserv's agent runs at about 110 MiB per node).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.netns import AGENT, VethPair  # noqa: E402

FLOWS = 2000
INTERVAL = 1.0


def attached(dev: str) -> bool:
    out = subprocess.run(["ip", "-d", "-j", "link", "show", "dev", dev], capture_output=True, text=True).stdout
    return bool(out and json.loads(out)[0].get("xdp"))


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main() -> int:
    if os.geteuid() != 0:
        print("bench_agent needs root (XDP on a veth)")
        return 1
    veth = VethPair(tag=f"b{os.getpid() % 10000}", n=88)
    veth.create()
    agent = None
    try:
        began = time.monotonic()
        agent = subprocess.Popen([AGENT, "-i", veth.dev_b, "--interval", str(INTERVAL), "--http-listen", "",
                                  "--output", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not attached(veth.dev_b):
            if agent.poll() is not None:
                print("agent failed:", agent.stderr.read().decode())
                return 1
            time.sleep(0.01)
        startup = time.monotonic() - began
        sender = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        rss = []
        for _ in range(5):
            for port in range(FLOWS):  # FLOWS distinct flows every interval
                sender.sendto(b"x" * 64, (veth.ip4_b, 10000 + port))
            time.sleep(INTERVAL)
            rss.append(status_kib(agent.pid, "VmRSS"))
        peak = status_kib(agent.pid, "VmHWM")
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    finally:
        if agent and agent.poll() is None:
            agent.kill()
        veth.destroy()
    steady = rss[-1] / 1024
    rows = [
        ("start-up to XDP attached (s)", f"{startup:.2f}", "-", ""),
        (f"steady-state RSS, {FLOWS} live flows (MiB)", f"{steady:.1f}", "<= 100", "ok" if steady <= 100 else "MISS"),
        ("peak RSS of the agent process (MiB)", f"{peak / 1024:.1f}", "-", ""),
    ]
    print(f"{'measure':<46} | {'measured':>9} | {'target':>7} | ok")
    for name, value, target, ok in rows:
        print(f"{name:<46} | {value:>9} | {target:>7} | {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
