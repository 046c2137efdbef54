"""The agent's own health: the values of its self-metrics, and readiness reasons.

Every stage (collector, accounting, sink) records what it drops or fails here, so that every limit
is visible as a metric (docs/design.md, "Rules that hold everywhere"). The metrics themselves are
defined once, typed, in selfmetrics.py; a name string is refused. Thread-safe: sinks update it from
their own threads while the HTTP server reads it.
"""

from __future__ import annotations

import threading
import time

from xtrace_agent.readiness import Kind, Problem
from xtrace_agent.samples import Sample
from xtrace_agent.selfmetrics import SelfMetric


def _checked(metric: SelfMetric, labels: dict[str, str] | None) -> None:
    if not isinstance(metric, SelfMetric):
        raise TypeError(f"self-metrics are selfmetrics.* definitions, not {metric!r}")
    if labels and not metric.labels.issuperset(labels):
        raise ValueError(f"{metric.name} has no label {sorted(set(labels) - metric.labels)}")


class Health:
    """Self-metrics (counters and gauges keyed by name and labels) and readiness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple, tuple[str, dict[str, str], float]] = {}
        self._not_ready: dict[str, Problem] = {}
        self._notes: dict[str, str] = {}
        self.started = time.time()

    @staticmethod
    def _key(name: str, labels: dict[str, str] | None) -> tuple:
        return (name, *sorted((labels or {}).items()))

    def inc(self, metric: SelfMetric, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        _checked(metric, labels)
        key = self._key(metric.name, labels)
        with self._lock:
            old = self._values.get(key)
            self._values[key] = (metric.name, dict(labels or {}), (old[2] if old else 0) + amount)

    def set(self, metric: SelfMetric, value: float, labels: dict[str, str] | None = None) -> None:
        _checked(metric, labels)
        with self._lock:
            self._values[self._key(metric.name, labels)] = (metric.name, dict(labels or {}), value)

    def get(self, metric: SelfMetric, labels: dict[str, str] | None = None) -> float:
        _checked(metric, labels)
        with self._lock:
            v = self._values.get(self._key(metric.name, labels))
        return v[2] if v else 0

    def samples(self, timestamp: float) -> list[Sample]:
        with self._lock:
            items = list(self._values.values())
        return [Sample(n, dict(labels), v, timestamp) for n, labels, v in items]

    # readiness ------------------------------------------------------------
    def not_ready(self, kind: Kind, component: str, message: str) -> None:
        """Mark a component (e.g. 'xdp:eth1', 'remote_write:vm') not ready: what kind of problem, and why."""
        if not isinstance(kind, Kind):
            raise TypeError(f"a readiness problem's kind is a readiness.Kind, not {kind!r}")
        with self._lock:
            self._not_ready[component] = Problem(kind, component, message)

    def ready(self, component: str) -> None:
        with self._lock:
            self._not_ready.pop(component, None)

    def problems(self) -> list[Problem]:
        """Every component's problem, by component."""
        with self._lock:
            return [self._not_ready[c] for c in sorted(self._not_ready)]

    def reasons(self) -> dict[str, str]:
        """component -> message (what /readyz prints)."""
        return {p.component: p.message for p in self.problems()}

    def note(self, topic: str, text: str) -> None:
        """A fact /readyz shows whatever the readiness (e.g. the kernel headers the program was built with)."""
        with self._lock:
            self._notes[topic] = text

    def notes(self) -> dict[str, str]:
        with self._lock:
            return dict(self._notes)
