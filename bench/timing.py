"""Timing shared by the benchmarks (run as scripts: bench/ is on sys.path)."""

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
