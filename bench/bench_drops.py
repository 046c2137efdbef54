"""Cost of the drop and TCP event programs, and of the traffic program with them off and on.

- Traffic program per packet (BPF_PROG_TEST_RUN, median of 5 runs of 2,000,000 on an IPv4/UDP
  frame): without the event programs loaded, then with them loaded, attached and watching, in the
  same run. They are separate programs on tracepoints, so the ratio should be 1.0 within noise.
- Per drop and per TCP event on live hooks: real drops (UDP to a closed port over a veth, each
  freed with NO_SOCKET on the watched end) and a real TCP transfer over a veth with loss made by
  an nft rule at the receiver; each program's cost from the kernel's own run-time statistics
  (BPF_ENABLE_STATS, on only while measuring), beside an empty raw tracepoint program attached
  to the same tracepoint in the same window (the floor: what any program there costs). Also the
  drop program's cost on a drop of an interface nobody watches (the early exit every other drop
  on the node takes).
- BPF_PROG_TEST_RUN of the drop program (raw tracepoints allow it, one run per call, no repeat):
  the syscall loop time beside the empty program's; with no kernel skb to hand it this only
  times the entry and the early exit.

Prints: measure | measured | reference (same run) | ratio.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_xdp import _run_stats  # noqa: E402
from tests import frames as F  # noqa: E402
from xtrace_agent.config import XdpConfig  # noqa: E402
from xtrace_agent.xdp import compiler, layout, libbpf  # noqa: E402
from xtrace_agent.xdp.events import EventsProgram  # noqa: E402
from xtrace_agent.xdp.program import XdpProgram  # noqa: E402

REPEAT = 2_000_000
RUNS = 5
DROPS = 100_000
TEST_RUNS = 200_000
FRAME = F.ethernet(payload=F.ipv4("198.51.100.1", "198.51.100.2", F.udp(10000, 20000, b"x" * 18)))
EMPTY_C = r"""
#include <uapi/linux/bpf.h>
int xtrace_bench_tp_drop(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int xtrace_bench_tp_probe(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int xtrace_bench_tp_retrans(struct bpf_raw_tracepoint_args *ctx) { return 0; }
"""
FLOORS = {"kfree_skb": "xtrace_bench_tp_drop", "tcp_probe": "xtrace_bench_tp_probe",
          "tcp_retransmit_skb": "xtrace_bench_tp_retrans"}


def traffic_ns(program: XdpProgram) -> float:
    fd = program.prog_fd()
    return statistics.median(libbpf.prog_test_run(fd, FRAME, REPEAT)[1] for _ in range(RUNS))


def per_event(ids: dict[str, int], work) -> dict[str, tuple[float, int]]:
    """(ns per run, runs) of each program while work() runs, from the kernel's run-time stats."""
    lib = libbpf.lib()
    lib.bpf_enable_stats.argtypes = [libbpf.c_int]
    stats_fd = libbpf._check(lib.bpf_enable_stats(0), "bpf_enable_stats")  # BPF_STATS_RUN_TIME
    try:
        before = {k: _run_stats(i) for k, i in ids.items()}
        work()
        time.sleep(0.2)
        after = {k: _run_stats(i) for k, i in ids.items()}
    finally:
        os.close(stats_fd)
    out = {}
    for k in ids:
        runs = after[k][1] - before[k][1]
        out[k] = ((after[k][0] - before[k][0]) / max(1, runs), runs)
    return out


def send_drops(pair, count: int) -> None:
    from tests.helpers.netns import run_in_netns

    sock = pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)

    def send():
        for _ in range(count):
            sock.sendto(b"x" * 18, (pair.ip4_b, 9))  # no socket on port 9 of host b

    run_in_netns(pair.ns_a, send)
    sock.close()


def tcp_transfer(pair, megabytes: int = 64, loss_every: int = 50) -> None:
    """Host b sends to host a; an nft rule at a's receiving end drops every Nth segment."""
    from tests.helpers.netns import lossy_tcp_transfer

    lossy_tcp_transfer(pair, megabytes, loss_every, "xtbench", join=60)


def test_run_ns(fd: int, runs: int = TEST_RUNS) -> float:
    args = (0, 0, 3, 0)
    t0 = time.perf_counter_ns()
    for _ in range(runs):
        libbpf.raw_tp_test_run(fd, args)
    return (time.perf_counter_ns() - t0) / runs


def row(name: str, value: float, ref: float | None, unit: str = "ns") -> None:
    ratio = f"{value / ref:.2f}" if ref else "-"
    refs = f"{ref:.1f} {unit}" if ref is not None else "-"
    print(f"| {name} | {value:.1f} {unit} | {refs} | {ratio} |")


def main() -> int:
    from tests.helpers.netns import VethPair, _free_subnet

    traffic = XdpProgram.load(XdpConfig())
    off = traffic_ns(traffic)
    floors = _floors()
    events = EventsProgram.load(("drops", "tcp"))
    events.attach()
    pair = VethPair(tag=f"bd{os.getpid() % 10000}", n=_free_subnet())
    pair.create()
    links = []
    try:
        b = socket.if_nametoindex(pair.dev_b)
        for place in (b, b | layout.EGRESS):
            events.watch(place)
        on = traffic_ns(traffic)
        for event, prog in FLOORS.items():
            links.append(libbpf.raw_tracepoint_open(event, floors.programs[prog]))
        ids = {name: libbpf.prog_info(fd).id for name, fd in events.programs.items()}
        ids.update({f"floor {e}": libbpf.prog_info(floors.programs[p]).id for e, p in FLOORS.items()})
        watched = per_event(ids, lambda: send_drops(pair, DROPS))
        events.drain_drops()
        for place in (b, b | layout.EGRESS):
            events.unwatch(place)
        unwatched = per_event(ids, lambda: send_drops(pair, DROPS))
        for place in (b, b | layout.EGRESS):
            events.watch(place)
        tcp = per_event(ids, lambda: tcp_transfer(pair))
        drop_tr = test_run_ns(events.programs["xtrace_drop"])
        empty_tr = test_run_ns(floors.programs["xtrace_bench_tp_drop"])
    finally:
        for fd in links:
            os.close(fd)
        pair.destroy()
        events.close()
        floors.close()
        traffic.close()
    print("| measure | measured | reference (same run) | ratio |")
    print("|---|---|---|---|")
    row("traffic program per packet, drop+TCP programs loaded and watching (ref: not loaded)", on, off)
    w, f = watched["xtrace_drop"], watched["floor kfree_skb"]
    row(f"per drop on a watched interface ({w[1]} kfree_skb runs; ref: empty program there)", w[0], f[0])
    u, fu = unwatched["xtrace_drop"], unwatched["floor kfree_skb"]
    row(f"per drop on an unwatched interface ({u[1]} runs; ref: empty program)", u[0], fu[0])
    p, fp = tcp["xtrace_tcp_probe"], tcp["floor tcp_probe"]
    row(f"per tcp_probe event ({p[1]} runs; ref: empty program)", p[0], fp[0])
    r, fr = tcp["xtrace_tcp_retrans"], tcp["floor tcp_retransmit_skb"]
    row(f"per retransmit event ({r[1]} runs; ref: empty program)", r[0], fr[0])
    row("BPF_PROG_TEST_RUN per call, drop program, early exit (ref: empty program)", drop_tr, empty_tr)
    return 0


def _floors():
    src = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"xtrace-bench-floors-{os.getpid()}.c")
    with open(src, "w") as f:
        f.write(EMPTY_C)
    try:
        return compiler.compile_and_load(0, 1, source=src, programs=tuple(FLOORS.values()), tc=(),
                                         raw_tracepoints=tuple(FLOORS.values()), maps=(),
                                         what="the empty raw tracepoint programs")
    finally:
        os.unlink(src)


if __name__ == "__main__":
    sys.exit(main())
