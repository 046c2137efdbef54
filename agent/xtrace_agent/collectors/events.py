"""The drop and TCP event source beside the XDP source (xdp.drops, xdp.tcp): loads the event
programs, attaches them to their tracepoints, keeps `watched` equal to the (interface,
direction) pairs the XDP source is attached to, and drains both kinds each interval.

A kernel that cannot give a feature (no BTF, no tracepoint, a field unlike what the programs
read) refuses it in one line at start: on the command line that is the user's to fix (exit 2);
from --config the agent keeps counting traffic and stays not ready with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from xtrace_agent import drops, tcp
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import AgentFailure, UsageError
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.stages import Group
from xtrace_agent.xdp.layout import EGRESS

log = logging.getLogger("xtrace.xdp")

COMPONENT = "xdp:events"


def features(cfg: AgentConfig) -> tuple[str, ...]:
    return tuple(f for f in ("drops", "tcp") if getattr(cfg.xdp, f))


class EventsSource:
    """The event programs of one agent (None-safe: with no feature on, every call does nothing)."""

    def __init__(self, cfg: AgentConfig, health: Health, loader: Callable | None = None):
        self.cfg = cfg
        self.health = health
        self.features = features(cfg)
        self._load = loader
        self.program = None
        self._places: set[int] = set()

    def start(self) -> None:
        if not self.features:
            return
        if self._load is None:
            from xtrace_agent.xdp.events import EventsProgram
            self._load = EventsProgram.load
        from xtrace_agent.xdp.events import Unavailable

        try:
            self.program = self._load(self.features, self.cfg.xdp.drop_table_size, self.cfg.xdp.tcp_table_size)
            attached = self.program.attach()
        except AgentFailure as e:
            self.close()
            if not self.cfg.from_file:
                raise (UsageError(str(e)) if isinstance(e, Unavailable) else e) from None
            log.error("%s; counting traffic without it", e)
            self.health.not_ready(Kind.FEATURE_UNAVAILABLE, COMPONENT, str(e))
            return
        self.health.note("tracepoints", ", ".join(attached))
        log.info("attached to tracepoints %s", ", ".join(attached))

    def sync(self, attached: dict[tuple[str, str], int]) -> None:
        """Watch exactly the (interface, direction) pairs the XDP source is attached to."""
        if self.program is None:
            return
        want = {ifindex | (EGRESS if direction == "egress" else 0) for (_, direction), ifindex in attached.items()}
        for place in want - self._places:
            self.program.watch(place)
        for place in self._places - want:
            self.program.unwatch(place)
        self._places = want

    def collect(self, group_of: Callable[[int], Group], watched: tuple[Group, ...]):
        """(drops.DropsObserved | None, tcp.TcpObserved | None) since the last call."""
        if self.program is None:
            return None, None
        seen_drops = seen_tcp = None
        if "drops" in self.features:
            seen_drops = drops.observe(self.program.drain_drops(), group_of, self.program.reason_name, watched)
        if "tcp" in self.features:
            seen_tcp = tcp.observe(self.program.drain_tcp(), group_of, watched)
        return seen_drops, seen_tcp

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None
        self._places.clear()
