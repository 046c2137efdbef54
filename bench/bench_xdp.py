"""XDP program cost per packet (BPF_PROG_TEST_RUN) beside the previous program and an empty one,
the egress (TC) program's beside the ingress one, and drain cost.

Prints a table: measure | measured | target | ok. Per-packet numbers are the median of 5 runs of
2,000,000 repetitions on one frame; the empty XDP program (the floor) and the program before the
exact-accounting rewrite (bench/reference/xtrace_before.c: LRU table, per-interface totals,
lookup-and-delete drain) are timed in the same run, and the target is a ratio to the latter.
Egress: the TC entry point on the same frames, and an empty TC program (its floor: running a
program on an skb costs more than on an XDP buffer); the target is its cost above its floor
within 1.2x of the ingress program's cost above the XDP floor. For scale, one per-CPU hash lookup
of a 48-byte key (and nothing else) is timed the same way under both hooks. The same comparison
on live hooks: UDP over a veth between two namespaces, each program's cost from the kernel's own
run-time statistics (BPF_ENABLE_STATS, on only while measuring), floors being empty programs on
the same hooks (XDP: the peer's receive side, which gets the same frames; TC: a second tcx link
on the same egress).
Drain: the active flow table filled with bpf_map_update_batch, then one drain (swap of the tables
with its RCU grace period, batch lookup-and-delete, per-CPU sums, decoding into FlowKey), median of 3.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tests import frames as F  # noqa: E402
from xtrace_agent.cli import gc_paused  # noqa: E402
from xtrace_agent.collectors.xdp import XdpCollector  # noqa: E402
from xtrace_agent.config import AgentConfig, XdpConfig  # noqa: E402
from xtrace_agent.flows import FlowAccounting  # noqa: E402
from xtrace_agent.health import Health  # noqa: E402
from xtrace_agent.xdp import compiler, libbpf  # noqa: E402
from xtrace_agent.xdp.program import XdpProgram  # noqa: E402

REPEAT = 2_000_000
RUNS = 5
RATIO_TARGET = 1.10  # per packet, against the previous program measured in the same run
EGRESS_TARGET = 1.20  # egress above the TC floor, against ingress above the XDP floor
REFERENCE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xtrace_before.c")
DRAIN_TARGET_MS = {10_000: None, 100_000: 250}
EMPTY_C = r"""
#include <uapi/linux/bpf.h>
int xtrace_bench_empty(struct xdp_md *ctx) { return XDP_PASS; }
int xtrace_bench_empty_tc(struct __sk_buff *skb) { return -1; }

struct key48 { __u32 w[12]; };
BPF_TABLE("percpu_hash", struct key48, __u64, bench_lookup, 1024);
static __always_inline void lookup(void *data, void *end, __u32 ifindex)
{
    struct key48 key = {};
    if (data + 34 > end)
        return;
    key.w[0] = ifindex;
    key.w[4] = *(__u32 *)(data + 26);
    __u64 *v = bench_lookup.lookup(&key);
    if (v)
        *v += 1;
    else
        bench_lookup.update(&key, &(__u64){1});
}
int xtrace_bench_lookup(struct xdp_md *ctx)
{
    lookup((void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->ingress_ifindex);
    return XDP_PASS;
}
int xtrace_bench_lookup_tc(struct __sk_buff *skb)
{
    lookup((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex);
    return -1;
}
"""
REFERENCE_PROGRAMS = ("xtrace_bench_empty", "xtrace_bench_empty_tc", "xtrace_bench_lookup", "xtrace_bench_lookup_tc")

A4, B4, A6, B6 = "198.51.100.1", "198.51.100.2", "2001:db8:be::1", "2001:db8:be::2"
FRAMES = {
    "IPv4/UDP": F.ethernet(payload=F.ipv4(A4, B4, F.udp(10000, 20000, b"x" * 18))),
    "IPv6/TCP": F.ethernet(payload=F.ipv6(A6, B6, F.tcp(10001, 443, b"x" * 6))),
    "VLAN+IPv4/UDP": F.ethernet(payload=F.ipv4(A4, B4, F.udp(10002, 20000, b"x" * 14)), vlans=[100]),
    "RoCEv2 (IPv4, BTH)": F.ethernet(payload=F.roce(A4, B4, opcode=0x0A, dest_qp=0x1234, payload=b"x" * 6)),
}


def ns_per_packet(fd: int, frame: bytes) -> float:
    return statistics.median(libbpf.prog_test_run(fd, frame, REPEAT)[1] for _ in range(RUNS))


def _run_stats(prog_id: int) -> tuple[int, int]:
    info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True,
                                     text=True, check=True).stdout)
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def live_ns(program: XdpProgram, empty, packets: int = 200_000) -> dict[str, float]:
    """ns per packet of ingress, egress and their empty floors, on live hooks (see the docstring)."""
    from tests.helpers.netns import VethPair, _free_subnet, run_in_netns

    pair = VethPair(tag=f"bn{os.getpid() % 10000}", n=_free_subnet())
    pair.create()
    link = None
    try:
        b = socket.if_nametoindex(pair.dev_b)
        program.attach(pair.dev_b, b, False, "auto")
        program.attach(pair.dev_b, b, False, "auto", "egress")
        link = libbpf.tcx_attach(empty.programs["xtrace_bench_empty_tc"], b)
        run_in_netns(pair.ns_a, lambda: libbpf.xdp_attach(socket.if_nametoindex(pair.dev_a),
                                                          empty.programs["xtrace_bench_empty"], 0))
        ids = {"ingress": program.prog_ids["xtrace_eth"], "egress": program.prog_ids["xtrace_eth_tx"],
               "xdp floor": libbpf.prog_info(empty.programs["xtrace_bench_empty"]).id,
               "tc floor": libbpf.prog_info(empty.programs["xtrace_bench_empty_tc"]).id}
        lib = libbpf.lib()
        lib.bpf_enable_stats.argtypes = [ctypes.c_int]
        stats_fd = libbpf._check(lib.bpf_enable_stats(0), "bpf_enable_stats")  # BPF_STATS_RUN_TIME
        try:
            before = {k: _run_stats(i) for k, i in ids.items()}

            def send(sock, dst):
                for i in range(packets):
                    sock.sendto(b"x" * 18, (dst, 20000 + i % 100))

            sock_a = pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
            run_in_netns(pair.ns_a, send, sock_a, pair.ip4_b)
            sock_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            send(sock_b, pair.ip4_a)
            time.sleep(0.2)
            after = {k: _run_stats(i) for k, i in ids.items()}
        finally:
            os.close(stats_fd)
        return {k: (after[k][0] - before[k][0]) / max(1, after[k][1] - before[k][1]) for k in ids}
    finally:
        program.detach(b, "egress")
        program.detach(b)
        if link is not None:
            os.close(link)
        pair.destroy()


def fill(program: XdpProgram, n: int) -> None:
    """n distinct IPv4/UDP flows with per-CPU values, written in batches from user space."""
    table = program._tables[program._active]  # the one the program counts into now
    info = table.info
    keys = np.zeros(n, dtype=table.key_dtype)
    idx = np.arange(n, dtype=np.uint32)
    keys["ifindex"] = 1
    src = np.zeros((n, 16), dtype=np.uint8)
    src[:, 10:12] = 0xFF
    src[:, 12] = 10
    src[:, 13:16] = idx.astype(">u4").view(np.uint8).reshape(n, 4)[:, 1:]
    keys["src"] = src.view("V16").reshape(n)
    dst = np.zeros((n, 16), dtype=np.uint8)
    dst[:, 10:12] = 0xFF
    dst[:, 12:16] = (192, 0, 2, 1)
    keys["dst"] = dst.view("V16").reshape(n)
    keys["src_port"] = idx % 60000 + 1024
    keys["dst_port"] = 443
    keys["protocol"] = 17
    keys["ip_version"] = 4
    slot = (info.value_size + 7) // 8
    values = np.zeros((n, program.ncpu, slot), dtype=np.uint64)
    values[:, :, 0] = 1
    values[:, :, 1] = 1500
    step = 8192
    for i in range(0, n, step):
        k = np.ascontiguousarray(keys[i:i + step])
        v = np.ascontiguousarray(values[i:i + step])
        libbpf.update_batch(info.fd, k.ctypes.data, v.ctypes.data, len(k))


def drain_ms(program: XdpProgram, n: int) -> float:
    times = []
    for _ in range(3):
        fill(program, n)
        began = time.perf_counter()
        with gc_paused():  # as in the agent, where every collection runs with the GC paused
            drained = program.drain()
        times.append((time.perf_counter() - began) * 1000)
        assert len(drained.flows) == n, (len(drained.flows), n)
    return statistics.median(times)


def collect_ms(program: XdpProgram, n: int, flow_gauges: bool = True) -> float:
    """One agent interval at n live flows: drain, accumulate, samples (JSON/remote-write path),
    under the agent's own GC policy. The first interval (label caches cold) is not counted."""
    cfg = AgentConfig(interfaces=(), output="json", xdp=XdpConfig(max_flows=2 * n, flow_gauges=flow_gauges))
    health = Health()
    collector = XdpCollector(cfg, health, program_loader=lambda _: program)
    collector.program = program  # no interface to attach: the table is filled from user space
    accounting = FlowAccounting(cfg, health)
    times = []
    for i in range(4):
        fill(program, n)
        began = time.perf_counter()
        with gc_paused():
            report = accounting.report(collector.collect(float(i)), float(i))
        times.append((time.perf_counter() - began) * 1000)
        assert len(report.samples) >= 2 * n
    return statistics.median(times[1:])


def main() -> int:
    if os.geteuid() != 0:
        print("bench_xdp needs root (BPF_PROG_TEST_RUN)")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "empty.c")
        with open(src, "w") as f:
            f.write(EMPTY_C)
        empty = compiler.compile_and_load(16, 1, source=src, programs=REFERENCE_PROGRAMS,
                                          tc=("xtrace_bench_empty_tc", "xtrace_bench_lookup_tc"))
    before = compiler.compile_and_load(XdpConfig().flow_table_size, 1, source=REFERENCE_C, programs=("xtrace_eth",))
    program = XdpProgram.load(XdpConfig())
    big = XdpProgram.load(XdpConfig(flow_table_size=131072))
    try:
        floor = ns_per_packet(empty.programs["xtrace_bench_empty"], FRAMES["IPv4/UDP"])
        tc_floor = ns_per_packet(empty.programs["xtrace_bench_empty_tc"], FRAMES["IPv4/UDP"])
        rows.append(("empty XDP program (floor), ns/packet", f"{floor:.0f}", "-", ""))
        rows.append(("empty TC program (egress floor), ns/packet", f"{tc_floor:.0f}", "-", ""))
        one_xdp = ns_per_packet(empty.programs["xtrace_bench_lookup"], FRAMES["IPv4/UDP"]) - floor
        one_tc = ns_per_packet(empty.programs["xtrace_bench_lookup_tc"], FRAMES["IPv4/UDP"]) - tc_floor
        rows.append(("one hash lookup above floor: TC (XDP), ns", f"{one_tc:.0f} ({one_xdp:.0f})", "-",
                     f"x{one_tc / max(one_xdp, 1):.2f}"))
        for name, frame in FRAMES.items():
            old = ns_per_packet(before.programs["xtrace_eth"], frame)
            ns = ns_per_packet(program.prog_fd(), frame)
            ratio = ns / old
            rows.append((f"{name}, ns/packet (previous program)", f"{ns:.0f} ({old:.0f})",
                         f"x{RATIO_TARGET:.2f}", f"x{ratio:.2f} " + ("ok" if ratio <= RATIO_TARGET else "MISS")))
            out = ns_per_packet(program.prog_fd(egress=True), frame)
            ratio = (out - tc_floor) / max(ns - floor, 1)
            rows.append(("  egress, ns/packet (above floor; ingress above floor)",
                         f"{out:.0f} ({out - tc_floor:.0f}; {ns - floor:.0f})", f"x{EGRESS_TARGET:.2f}",
                         f"x{ratio:.2f} " + ("ok" if ratio <= EGRESS_TARGET else "MISS")))
        live = live_ns(program, empty)
        ratio = (live["egress"] - live["tc floor"]) / max(live["ingress"] - live["xdp floor"], 1)
        rows.append(("live veth, UDP: egress (ingress), ns/packet", f"{live['egress']:.0f} ({live['ingress']:.0f})",
                     "-", ""))
        rows.append(("  floors: empty TC (empty XDP), ns/packet", f"{live['tc floor']:.0f} ({live['xdp floor']:.0f})",
                     "-", ""))
        rows.append(("  egress above floor / ingress above floor", f"x{ratio:.2f}", f"x{EGRESS_TARGET:.2f}",
                     "ok" if ratio <= EGRESS_TARGET else "MISS"))
        for n, target in DRAIN_TARGET_MS.items():
            ms = drain_ms(big, n)
            ok = "" if target is None else ("ok" if ms <= target else "MISS")
            rows.append((f"drain + decode {n // 1000}k live flows, ms", f"{ms:.0f}",
                         "-" if target is None else f"<= {target}", ok))
        for n, target in DRAIN_TARGET_MS.items():
            ms = collect_ms(big, n)
            ok = "" if target is None else ("ok" if ms <= target else "MISS")
            rows.append((f"interval: drain+accumulate+samples {n // 1000}k, ms", f"{ms:.0f}",
                         "-" if target is None else f"<= {target}", ok))
        n = max(DRAIN_TARGET_MS)
        ms = collect_ms(big, n, flow_gauges=False)
        rows.append((f"  the same {n // 1000}k without the flow gauges, ms", f"{ms:.0f}", "-", ""))
    finally:
        program.close()
        big.close()
        empty.close()
        before.close()
    print(f"{'measure':<52} | {'measured':>9} | {'target':>7} | ok")
    for name, value, target, ok in rows:
        print(f"{name:<52} | {value:>9} | {target:>7} | {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
