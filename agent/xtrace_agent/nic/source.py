"""NIC statistics of the netdevs that carry RDMA ports (and of interfaces named in the config), as samples.

Per netdev and interval: the driver's `ethtool -S` table (live through the ioctl, or from a captured
`DIR/<netdev>.txt` dump), the standard pause statistics (ethtool netlink, live only) and
`carrier_changes` (sysfs). The table's names are mapped once per string set (nic.names.plan); every
counter goes through the RDMA counters' CounterTracker, so what is pushed never goes backwards across
a driver reload (a drop is a reset) and mlx5's 32-bit firmware counters are wrap-corrected.

A netdev that cannot be read (gone, a driver without ethtool statistics or without pause statistics,
no dump file) gives no series and one debug log line when it starts failing, not one per interval.
"""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple

from xtrace_agent.nic import dump, names
from xtrace_agent.nic.ethtool import EthtoolFailure, PauseReader, StatsReader, sysfs_counter
from xtrace_agent.rdma import sysfs
from xtrace_agent.rdma.counters import CounterTracker
from xtrace_agent.samples import Report, Sample

log = logging.getLogger("xtrace_agent.nic")

# A driver without pause statistics is asked again this rarely (a netlink round trip costs ~0.7 ms).
PAUSE_RETRY_SECONDS = 60.0


class Target(NamedTuple):
    """A netdev to read, and the RDMA port whose traffic it carries ("" where none is known)."""

    netdev: str
    device: str = ""
    port: str = ""

    def labels(self) -> dict[str, str]:
        out = {"netdev": self.netdev}
        if self.device:
            out["device"] = self.device
            out["port"] = self.port
        return out


def lower_netdevs(root: str, netdev: str, depth: int = 0) -> list[str]:
    """The physical netdevs under a bond or VLAN device (`lower_*` links in sysfs), or [netdev] itself.

    A bond or VLAN device has no NIC counters of its own: its members' ports carry the traffic."""
    base = os.path.join(root, "class", "net", netdev)
    try:
        lowers = sorted(e[len("lower_"):] for e in os.listdir(base) if e.startswith("lower_"))
    except OSError:
        lowers = []
    if not lowers or depth > 4:
        return [netdev]
    out: list[str] = []
    for lower in lowers:
        out.extend(n for n in lower_netdevs(root, lower, depth + 1) if n not in out)
    return out


def rdma_targets(root: str, device: str, port: int) -> list[Target]:
    """The netdevs of one RDMA port (the GID table's for RoCE, IPoIB for InfiniBand), bond members included."""
    out: list[Target] = []
    for netdev in sysfs.netdevs(root, device, port):
        for lower in lower_netdevs(root, netdev):
            if all(t.netdev != lower for t in out):
                out.append(Target(lower, device, str(port)))
    return out


class NicStats:
    """Reads the NIC statistics of a list of targets into a Report, one interval at a time."""

    def __init__(self, root: str = "/sys", ethtool_dir: str | None = None,
                 raw: names.RawSelection = names.NO_RAW, clock=time.time):
        self.root = root
        self.ethtool_dir = ethtool_dir
        self.raw = raw
        self.clock = clock
        self.tracker = CounterTracker()
        self._stats = StatsReader() if ethtool_dir is None else None
        self._pause = PauseReader() if ethtool_dir is None else None
        self._pause_off: dict[str, float] = {}
        self._plans: dict[tuple[str, ...], names.Plan] = {}
        self._failing: dict[tuple[str, str], str] = {}
        self.errors = 0  # things that started failing (the caller counts them as collector errors)

    def close(self) -> None:
        for r in (self._stats, self._pause):
            if r is not None:
                r.close()

    def _fails(self, netdev: str, what: str, why: str, failing: dict) -> None:
        key = (netdev, what)
        failing[key] = why
        if self._failing.get(key) != why:
            log.debug("nic %s: no %s (%s)", netdev, what, why)
            self.errors += 1

    def collect(self, targets: list[Target], report: Report) -> None:
        failing: dict[tuple[str, str], str] = {}
        for target in targets:
            try:
                self._one(target, report, failing)
            except EthtoolFailure as e:
                self._fails(target.netdev, "statistics", e.why, failing)
        self._failing = failing

    def _table(self, netdev: str) -> dump.Table:
        if self.ethtool_dir is not None:
            table = dump.read(os.path.join(self.ethtool_dir, f"{netdev}.txt"))
            if table is None:
                raise EthtoolFailure("no dump file")
            return table
        return self._stats.read(netdev)

    def _plan(self, table: dump.Table) -> names.Plan:
        plan = self._plans.get(table.names)
        if plan is None:
            if len(self._plans) > 64:  # string sets change rarely; never let renames grow this
                self._plans.clear()
            plan = self._plans[table.names] = names.plan(table.names, self.raw)
        return plan

    def _one(self, target: Target, report: Report, failing: dict) -> None:
        t0 = self.clock()
        table = self._table(target.netdev)
        ts = (t0 + self.clock()) / 2
        base = target.labels()
        out = report.samples
        values = table.values
        for entry in self._plan(table).named:
            raw = values[entry.index]
            labels = {**base, **dict(entry.labels)}
            if entry.gauge:
                out.append(Sample(entry.metric, labels, raw * entry.scale, ts))
                continue
            value = self.tracker.update((target.netdev, entry.stat), raw, entry.width).value
            if value is not None:
                out.append(Sample(entry.metric, labels, value * entry.scale, ts))
        for index, stat in self._plan(table).raw:
            out.append(Sample(names.RAW, {**base, "stat": stat}, values[index], ts))
        self._carrier(target, base, out, failing)
        self._standard_pause(target, base, out, failing)

    def _carrier(self, target: Target, base: dict, out: list, failing: dict) -> None:
        raw = sysfs_counter(self.root, target.netdev, "carrier_changes")
        if raw is None:
            self._fails(target.netdev, "carrier_changes", "unreadable", failing)
            return
        value = self.tracker.update((target.netdev, "carrier_changes"), raw, names.W64).value
        out.append(Sample(names.CARRIER_CHANGES, dict(base), value, self.clock()))

    def _standard_pause(self, target: Target, base: dict, out: list, failing: dict) -> None:
        if self._pause is None:
            return
        now = time.monotonic()
        off = self._pause_off.get(target.netdev)
        if off is not None and now - off < PAUSE_RETRY_SECONDS:
            failing[(target.netdev, "pause statistics")] = self._failing.get((target.netdev, "pause statistics"), "")
            return
        try:
            frames = self._pause.read(target.netdev)
        except EthtoolFailure as e:
            self._pause_off[target.netdev] = now
            self._fails(target.netdev, "pause statistics", e.why, failing)
            return
        self._pause_off.pop(target.netdev, None)
        ts = self.clock()
        for direction, raw in sorted(frames.items()):
            value = self.tracker.update((target.netdev, f"standard_pause_{direction}"), raw, names.W64).value
            out.append(Sample(names.STANDARD_PAUSE, {**base, "direction": direction}, value, ts))
