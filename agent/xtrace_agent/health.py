"""The agent's own health: self-metrics any stage may set, and readiness reasons.

Every stage (collector, accumulator, sink) records what it drops or fails here, so
that every limit is visible as a metric (DESIGN.md §5). Thread-safe: sinks update it
from their own threads while the HTTP server reads it.
"""

from __future__ import annotations

import threading
import time

from xtrace_agent.samples import Sample

_HELP: dict[str, tuple[str, str]] = {}


def describe(name: str, kind: str, help_text: str) -> None:
    """Register the type (counter|gauge) and help text of a self-metric, for /metrics."""
    _HELP[name] = (kind, help_text)


def description(name: str) -> tuple[str, str] | None:
    return _HELP.get(name)


class Health:
    """Self-metrics (counters and gauges keyed by name and labels) and readiness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple, tuple[str, dict[str, str], float]] = {}
        self._not_ready: dict[str, str] = {}
        self.started = time.time()

    @staticmethod
    def _key(name: str, labels: dict[str, str] | None) -> tuple:
        return (name, *sorted((labels or {}).items()))

    def inc(self, name: str, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        key = self._key(name, labels)
        with self._lock:
            old = self._values.get(key)
            self._values[key] = (name, dict(labels or {}), (old[2] if old else 0) + amount)

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            self._values[self._key(name, labels)] = (name, dict(labels or {}), value)

    def get(self, name: str, labels: dict[str, str] | None = None) -> float:
        with self._lock:
            v = self._values.get(self._key(name, labels))
        return v[2] if v else 0

    def samples(self, timestamp: float) -> list[Sample]:
        with self._lock:
            items = list(self._values.values())
        return [Sample(n, dict(labels), v, timestamp) for n, labels, v in items]

    # readiness ------------------------------------------------------------
    def not_ready(self, component: str, reason: str) -> None:
        """Mark a component (e.g. 'xdp:eth1', 'remote_write:vm') not ready, with why."""
        with self._lock:
            self._not_ready[component] = reason

    def ready(self, component: str) -> None:
        with self._lock:
            self._not_ready.pop(component, None)

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._not_ready)
