"""XDP source: keeps the program attached to the wanted interfaces and reports what it counted.

Each interval: swap and drain the kernel tables, name the interfaces, reconcile attachments (an
interface that vanished and came back is attached again), for each direction configured
(ingress: XDP; egress: TC). What comes out is a stages.Observed of deltas, per (interface,
direction); turning those into cumulative counters is the next stage's job (flows.FlowAccounting).
The kernel is reached only through a stages.Program (xdp.program.XdpProgram, or a test's fake).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from xtrace_agent import netdev
from xtrace_agent import selfmetrics as sm
from xtrace_agent.collectors.events import EventsSource
from xtrace_agent.config import AgentConfig, XdpConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.stages import Observed, Program
from xtrace_agent.xdp.flowtable import FlowTable, TableDeltas, flow_ids, merged
from xtrace_agent.xdp.layout import split_ifindex

log = logging.getLogger("xtrace.xdp")


class XdpCollector:
    """stages.Source: counts traffic per flow on the configured interfaces with the XDP program."""

    def __init__(self, cfg: AgentConfig, health: Health,
                 program_loader: Callable[[XdpConfig], Program] | None = None, events_loader: Callable | None = None):
        self.cfg = cfg
        self.health = health
        self._load = program_loader
        self.program: Program | None = None
        self.directions = cfg.xdp.directions
        self._directed = "egress" in self.directions  # series carry a `direction` label
        self._attached: dict[tuple[str, str], int] = {}  # (interface, direction) -> ifindex we attached to
        self._names: dict[int, str] = {}  # ifindex -> name, also for links gone since the last drain
        self._problems: dict[str, str] = {}  # what was logged last per interface (and direction)
        self._modes: dict[tuple[str, str], str] = {}  # -> mode of its xtrace_xdp_attached series
        self._unwatched: set[str] = set()  # present, but our program could not be (re)attached
        self._rx_since: dict[str, tuple[int, int]] = {}  # their driver rx counters at the last look
        self.events = EventsSource(cfg, health, events_loader)  # xdp.drops, xdp.tcp

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        specs = self.cfg.interfaces
        if not self.cfg.from_file:
            # the command line, as in the old tool: a missing or down interface is the user's mistake
            present = netdev.names()
            for name in specs:
                if netdev.is_pattern(name):
                    if not netdev.matching(name, present):
                        raise UsageError(f"no interface matches {name!r} (found: {', '.join(present) or 'none'})")
                    continue
                li = netdev.link(name, self.cfg.sysfs)
                if li is None:
                    found = ", ".join(netdev.names()) or "none"
                    raise UsageError(f"unknown interface {name!r} (found: {found}); list them with -l")
                if li.is_down:
                    raise UsageError(f"interface {name!r} is down: bring it up (ip link set {name} up) "
                                     "or choose another with -i")
        if self._load is None:
            from xtrace_agent.xdp.program import XdpProgram
            self._load = XdpProgram.load
        self.program = self._load(self.cfg.xdp)
        # /readyz keeps saying which headers the running program was built with
        self.health.note("kernel headers", self.program.headers)
        try:
            if "egress" in self.directions:
                self.program.egress.resolve()  # a kernel with no egress hook: one line, before anything
            self.program.claim(self.cfg.interval)
            self.events.start()  # before attaching: each attachment is watched from its first packet
            self._reconcile(strict=not self.cfg.from_file, first=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.events.close()
        if self.program is not None:
            self.program.close()
            self.program: Program | None = None
        self._attached.clear()

    # attachment --------------------------------------------------------------------------
    def _reconcile(self, strict: bool = False, first: bool = False) -> None:
        """Attach where the program should be and is not; report what cannot be watched."""
        wanted = netdev.expand(self.cfg.interfaces)
        # one kernel query per link, once per interval
        live = {d: self.program.attached(d) for d in self.directions}
        self._unwatched = set()
        for spec in self.cfg.interfaces:
            if netdev.is_pattern(spec):
                if netdev.matching(spec, wanted):
                    self._ok(spec, f"xdp:{spec}")
                else:  # a glob that matches nothing (yet): not ready, so nobody believes it counts
                    self._problem(spec, f"xdp:{spec}", Kind.INTERFACE_NOT_FOUND, "no interface matches")
        for name in wanted:
            li = netdev.link(name, self.cfg.sysfs)
            for direction in self.directions:
                self._reconcile_one(name, li, direction, live[direction], strict, first)
        for where in list(self._attached):
            if where[0] not in wanted:  # a glob no longer matches (renamed): let it go
                ifindex = self._attached.pop(where)
                self.program.detach(ifindex, where[1])
        self.events.sync(self._attached)

    def _reconcile_one(self, name: str, li: netdev.Link | None, direction: str, live, strict: bool,
                       first: bool) -> None:
        from xtrace_agent.xdp.attach import AgentConflict, AttachError
        from xtrace_agent.xdp.egress import NoEgressHook

        where = (name, direction)
        # ingress keeps the component name it always had; egress is an xdp component too
        component = f"xdp:{name}" if direction == "ingress" else f"xdp:{name} ({direction})"
        problem_key = name if direction == "ingress" else f"{name} {direction}"
        if li is None:
            if where in self._attached:
                if direction == self.directions[0]:
                    log.warning("interface %s disappeared; will attach again when it returns", name)
                del self._attached[where]
            self._problem(problem_key, component, Kind.INTERFACE_NOT_FOUND, "interface not found")
            return
        if not (self._attached.get(where) == li.ifindex and li.ifindex in live):
            try:
                mode = self.program.attach(name, li.ifindex, li.infiniband, self.cfg.xdp.attach_mode, direction)
            except AttachError as e:
                if strict or isinstance(e, NoEgressHook) or (first and isinstance(e, AgentConflict)):
                    raise
                self._problem(problem_key, component, Kind.NOT_ATTACHED, str(e))
                if direction == "ingress":
                    self._unwatched.add(name)
                if where in self._modes:
                    self.health.set(sm.XDP_ATTACHED, 0, self._attached_labels(where, self._modes[where]))
                return
            self._attached_now(where, li.ifindex, mode)
        if li.is_down:
            self._problem(problem_key, component, Kind.LINK_DOWN, "link down")
        else:
            self._ok(problem_key, component)

    def _attached_now(self, where: tuple[str, str], ifindex: int, mode: str) -> None:
        name, direction = where
        if where in self._attached:
            log.info("interface %s is back (ifindex %d): attached again (%s %s)", name, ifindex, direction, mode)
        else:
            log.info("attached to %s (ifindex %d, %s, %s)", name, ifindex, direction, mode)
        self._attached[where] = ifindex
        self._names[ifindex] = name
        if self._modes.get(where, mode) != mode:
            self.health.set(sm.XDP_ATTACHED, 0, self._attached_labels(where, self._modes[where]))
        self._modes[where] = mode
        self.health.set(sm.XDP_ATTACHED, 1, self._attached_labels(where, mode))

    def _attached_labels(self, where: tuple[str, str], mode: str) -> dict[str, str]:
        labels = {"interface": where[0], "mode": mode}
        if self._directed:
            labels["direction"] = where[1]
        return labels

    def _problem(self, name: str, component: str, kind: Kind, reason: str) -> None:
        if self._problems.get(name) != reason:
            log.warning("%s: %s", name, reason)
            self._problems[name] = reason
        self.health.not_ready(kind, component, reason)

    def _ok(self, name: str, component: str) -> None:
        self._problems.pop(name, None)
        self.health.ready(component)

    # collection --------------------------------------------------------------------------
    def collect(self, now: float) -> Observed:
        began = time.monotonic()
        unobserved = self._unobserved()
        drained = self.program.drain()
        flows = drained.flows
        if isinstance(flows, FlowTable):  # the real program: columns, no object per flow (flowtable.py)
            deltas = TableDeltas(flows, self._group)
        else:
            deltas = self._deltas(flows)
        untracked: dict[tuple[tuple[str, str], str], tuple[int, int]] = {}
        for (ifindex, reason), (p, b) in drained.untracked.items():
            key = (self._group(ifindex), reason)
            old = untracked.get(key, (0, 0))
            untracked[key] = (old[0] + p, old[1] + b)
        interfaces: dict[tuple[str, str], tuple[int, int]] = {}
        for ifindex, (p, b) in drained.interfaces.items():
            group = self._group(ifindex)
            old = interfaces.get(group, (0, 0))
            interfaces[group] = (old[0] + p, old[1] + b)
        # attach after the drain, so what a vanished link counted was read under its old name
        self._reconcile()
        for name in self._unwatched - self._rx_since.keys():
            self._look(name)
        for name in self._rx_since.keys() - self._unwatched:
            del self._rx_since[name]
        watching = {d: self.program.attached(d) for d in self.directions}
        watched = tuple(where for where, ifindex in self._attached.items() if ifindex in watching[where[1]])
        seen_drops, seen_tcp = self.events.collect(self._group, watched)
        return Observed(deltas, untracked, interfaces, drained.sampled, self.program.unattributed(),
                        watched, began, unobserved, seen_drops, seen_tcp)

    def _deltas(self, flows: dict) -> dict:
        """FlowKey -> FlowId, for a Program that hands over a dict (a test's fake)."""
        ids = flow_ids(flows, {i: (self._group(i),) for i in {fk[0] for fk in flows}})
        deltas = dict(zip(ids, flows.values(), strict=True))
        # two ifindexes under one name (a link recreated within the interval): add them up
        return deltas if len(deltas) == len(flows) else merged(zip(ids, flows.values(), strict=True))

    def _look(self, name: str) -> tuple[int, int] | None:
        cur = netdev.rx_counters(name, self.cfg.sysfs)
        if cur is None:
            self._rx_since.pop(name, None)
        else:
            self._rx_since[name] = cur
        return cur

    def _unobserved(self) -> dict[str, tuple[int, int]]:
        """What the drivers of wanted interfaces without our program received since the last look
        (up to the moment our program is back): traffic no flow and no interface total can hold."""
        out = {}
        for name, (p0, b0) in list(self._rx_since.items()):
            cur = self._look(name)
            if cur is not None and cur[0] >= p0 and cur[1] >= b0:
                out[name] = (cur[0] - p0, cur[1] - b0)
        return out

    def _group(self, raw: int) -> tuple[str, str]:
        """(interface name, direction) of a flow key's ifindex word."""
        ifindex, direction = split_ifindex(raw)
        return (self._names.get(ifindex) or f"ifindex{ifindex}", direction)
