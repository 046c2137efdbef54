"""Sinks deliver Reports: stdout, remote write, the /metrics endpoint.

    write(report)  -- hand over one interval; must return quickly (a slow or dead receiver is
                      the sink's own problem: queue, count, retry in its own thread)
    close(timeout) -- flush what can be flushed within `timeout` seconds, persist the rest
                      if the sink has a spool; idempotent

A failing sink never blocks the collector or another sink: the pipeline isolates each call.
"""

from __future__ import annotations

from typing import Protocol

from xtrace_agent.samples import Report


class Sink(Protocol):
    def write(self, report: Report) -> None: ...

    def close(self, timeout: float) -> None: ...
