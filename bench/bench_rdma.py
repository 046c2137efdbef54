"""Sampling cost of the rdma/nccl collector per interval on a busy node: 8 devices x 2 ports x ~80 counters.

The tree is generated in a temporary directory (tmpfs-like page cache, as sysfs is in memory);
real sysfs adds the driver's own cost per read (a firmware command for some mlx5 counters,
cached for `hw_counters/lifespan` ms), which no user-space code can avoid.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time

from benchlib import print_rows

from xtrace_agent.collectors.rdma import RdmaCollector
from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health
from xtrace_agent.ports import PortAccounting

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_MS = 20.0
ROUNDS = 50


def _make_sysfs():
    path = os.path.join(HERE, "..", "tests", "fixtures", "make_sysfs.py")
    spec = importlib.util.spec_from_file_location("make_sysfs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interval_ms(root: str, mode: str) -> tuple[float, float, int]:
    """(first interval incl. net device discovery, median steady interval) in ms, and samples per report."""
    health = Health()
    collector = RdmaCollector(AgentConfig(mode=mode, sysfs=root), health)
    accounting = PortAccounting(health)
    collector.start()
    t = time.perf_counter()
    now = time.time()
    report = accounting.report(collector.collect(now), now)
    first = (time.perf_counter() - t) * 1000
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        now = time.time()
        accounting.report(collector.collect(now), now)
        times.append((time.perf_counter() - t) * 1000)
    return first, statistics.median(times), len(report.samples)


def main() -> int:
    make_sysfs = _make_sysfs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        per_port = make_sysfs.big_tree(tmp, devices=8, ports=2)
        for mode in ("rdma", "nccl"):
            first, steady, samples = _interval_ms(tmp, mode)
            rows.append((f"{mode}: interval, 16 ports ({samples} samples)", f"{steady:.2f} ms",
                         f"< {TARGET_MS:g} ms", steady < TARGET_MS))
            rows.append((f"{mode}: first interval, then every 60 s (+ GID scan)", f"{first:.2f} ms", "-", True))
    print(f"node: 8 devices x 2 ports x {per_port} counter files per port; median of {ROUNDS} intervals")
    return print_rows(rows, target_width=8)


if __name__ == "__main__":
    sys.exit(main())
