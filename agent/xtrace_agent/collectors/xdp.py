"""XDP source: keeps the program attached to the wanted interfaces and reports what it counted.

Each interval: swap and drain the kernel tables, name the interfaces, reconcile attachments (an
interface that vanished and came back is attached again). What comes out is an Observed of
deltas; turning those into cumulative counters is the next stage's job (flows.FlowAccounting).
"""

from __future__ import annotations

import logging
import time

from xtrace_agent import netdev
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.flows import NO_BTH, Observed
from xtrace_agent.health import Health, describe

log = logging.getLogger("xtrace.xdp")

describe("xtrace_xdp_attached", "gauge", "1 when the XDP program is attached to the interface (label mode).")


class XdpCollector:
    """Counts traffic per flow on the configured interfaces with the XDP program."""

    def __init__(self, cfg: AgentConfig, health: Health, program_loader=None):
        self.cfg = cfg
        self.health = health
        self._load = program_loader
        self.program = None
        self._attached: dict[str, int] = {}  # interface name -> ifindex we attached to
        self._names: dict[int, str] = {}  # ifindex -> name, also for links gone since the last drain
        self._problems: dict[str, str] = {}
        self._modes: dict[str, str] = {}  # interface -> mode of its xtrace_xdp_attached series
        self._unwatched: set[str] = set()  # present, but our program could not be (re)attached
        self._rx_since: dict[str, tuple[int, int]] = {}  # their driver rx counters at the last look

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
        try:
            self.program.claim(self.cfg.interval)
            self._reconcile(strict=not self.cfg.from_file, first=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None
        self._attached.clear()

    # attachment --------------------------------------------------------------------------
    def _reconcile(self, strict: bool = False, first: bool = False) -> None:
        from xtrace_agent.xdp.attach import AgentConflict, AttachError

        wanted = netdev.expand(self.cfg.interfaces)
        live = self.program.attached()  # one kernel query per link, once per interval
        self._unwatched = set()
        for spec in self.cfg.interfaces:
            if netdev.is_pattern(spec):
                if netdev.matching(spec, wanted):
                    self._ok(spec, f"xdp:{spec}")
                else:  # a glob that matches nothing (yet): not ready, so nobody believes it counts
                    self._problem(spec, f"xdp:{spec}", "no interface matches")
        for name in wanted:
            li = netdev.link(name, self.cfg.sysfs)
            component = f"xdp:{name}"
            if li is None:
                if name in self._attached:
                    log.warning("interface %s disappeared; will attach again when it returns", name)
                    del self._attached[name]
                self._problem(name, component, "interface not found")
                continue
            if self._attached.get(name) == li.ifindex and li.ifindex in live:
                if li.is_down:
                    self._problem(name, component, "link down")
                else:
                    self._ok(name, component)
                continue
            try:
                mode = self.program.attach(name, li.ifindex, li.infiniband, self.cfg.xdp.attach_mode)
            except AttachError as e:
                if strict or (first and isinstance(e, AgentConflict)):
                    raise
                self._problem(name, component, str(e))
                self._unwatched.add(name)
                if name in self._modes:
                    self.health.set("xtrace_xdp_attached", 0, {"interface": name, "mode": self._modes[name]})
                continue
            if name in self._attached:
                log.info("interface %s is back (ifindex %d): attached again (%s)", name, li.ifindex, mode)
            else:
                log.info("attached to %s (ifindex %d, %s mode)", name, li.ifindex, mode)
            self._attached[name] = li.ifindex
            self._names[li.ifindex] = name
            if self._modes.get(name, mode) != mode:
                self.health.set("xtrace_xdp_attached", 0, {"interface": name, "mode": self._modes[name]})
            self._modes[name] = mode
            self.health.set("xtrace_xdp_attached", 1, {"interface": name, "mode": mode})
            if li.is_down:
                self._problem(name, component, "link down")
            else:
                self._ok(name, component)
        for name in list(self._attached):
            if name not in wanted:  # a glob no longer matches (renamed): let it go
                ifindex = self._attached.pop(name)
                self.program.detach(ifindex)

    def _problem(self, name: str, component: str, reason: str) -> None:
        if self._problems.get(name) != reason:
            log.warning("%s: %s", name, reason)
            self._problems[name] = reason
        self.health.not_ready(component, reason)

    def _ok(self, name: str, component: str) -> None:
        self._problems.pop(name, None)
        self.health.ready(component)

    # collection --------------------------------------------------------------------------
    def collect(self, now: float) -> Observed:
        began = time.monotonic()
        unobserved = self._unobserved()
        drained = self.program.drain()
        flows = drained.flows
        # one comprehension, no call per flow: at 100k flows every Python call costs ~5 ms
        ifaces = {i: (self._iface_name(i),) for i in {fk[0] for fk in flows}}
        deltas = {ifaces[fk[0]] + fk[1:7] + (fk[7:] if fk[6] == "roce" else NO_BTH): c for fk, c in flows.items()}
        if len(deltas) < len(flows):
            # two ifindexes under one name (a link recreated within the interval): add them up
            deltas = {}
            for fk, (p, b) in flows.items():
                key = ifaces[fk[0]] + fk[1:7] + (fk[7:] if fk[6] == "roce" else NO_BTH)
                old = deltas.get(key, (0, 0))
                deltas[key] = (old[0] + p, old[1] + b)
        untracked: dict[tuple[str, str], tuple[int, int]] = {}
        for (ifindex, reason), (p, b) in drained.untracked.items():
            key = (self._iface_name(ifindex), reason)
            old = untracked.get(key, (0, 0))
            untracked[key] = (old[0] + p, old[1] + b)
        interfaces: dict[str, tuple[int, int]] = {}
        for ifindex, (p, b) in drained.interfaces.items():
            name = self._iface_name(ifindex)
            old = interfaces.get(name, (0, 0))
            interfaces[name] = (old[0] + p, old[1] + b)
        # attach after the drain, so what a vanished link counted was read under its old name
        self._reconcile()
        for name in self._unwatched - self._rx_since.keys():
            self._look(name)
        for name in self._rx_since.keys() - self._unwatched:
            del self._rx_since[name]
        watching = self.program.attached()
        watched = tuple(name for name, ifindex in self._attached.items() if ifindex in watching)
        return Observed(deltas, untracked, interfaces, drained.sampled, self.program.unattributed(),
                        watched, began, unobserved)

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

    def _iface_name(self, ifindex: int) -> str:
        return self._names.get(ifindex) or f"ifindex{ifindex}"
