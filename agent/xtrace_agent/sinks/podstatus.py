"""Pod status as a sink: each report hands the agent's readiness to the pod-status reporter.

The reporter (xtrace_agent.podstatus) writes the condition `xtrace.io/AgentReady` from its own
thread, only when readiness changed; write() here only takes the current reasons, so it never
waits on the API server. Outside a pod there is no such sink.
"""

from __future__ import annotations

from collections.abc import Mapping

from xtrace_agent import podstatus
from xtrace_agent.health import Health
from xtrace_agent.samples import Report


class PodStatusSink:
    def __init__(self, reporter: podstatus.PodStatusReporter):
        self.reporter = reporter

    @classmethod
    def from_environment(cls, health: Health, env: Mapping[str, str] | None = None) -> PodStatusSink | None:
        reporter = podstatus.start(health, env)
        return cls(reporter) if reporter else None

    def write(self, report: Report) -> None:
        self.reporter.observe()

    def close(self, timeout: float) -> None:
        self.reporter.close(min(timeout, 1.0))  # a write in flight is abandoned: the pod is going away
