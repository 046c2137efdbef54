"""What the benchmarks share (they run as scripts: bench/ is on sys.path)."""

from __future__ import annotations

import statistics
import time


def median_ms(fn, rounds: int, warmup: bool = True) -> float:
    """The median wall time of `fn()` over `rounds` calls, in ms (after one untimed call unless told not)."""
    if warmup:
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def status_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM), 0 when the process has none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def print_rows(rows: list[tuple[str, str, str, bool]], target_width: int = 0) -> int:
    """The name | measured | target | ok table; 0 when every row is ok, else 1."""
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}} | {'measured':>10} | {'target':>{target_width}} | ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}} | {measured:>10} | {target:>{target_width}} | {'yes' if ok else 'NO'}")
    return 0 if all(r[3] for r in rows) else 1
