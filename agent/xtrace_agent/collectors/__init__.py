"""Collectors turn a source (the kernel flow map, sysfs) into one Report per interval.

A collector knows nothing about output. Its lifecycle:
    start()  -- attach / open; raise UsageError or AgentFailure with one clear line
    collect(now) -> Report  -- called once per interval; must never raise for a transient
                               problem (a vanished interface, an unreadable file): record it
                               in Health and carry on
    close()  -- detach; always called (in a finally), must be idempotent
"""

from __future__ import annotations

from typing import Protocol

from xtrace_agent.samples import Report


class Collector(Protocol):
    def start(self) -> None: ...

    def collect(self, now: float) -> Report: ...

    def close(self) -> None: ...
