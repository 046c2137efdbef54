"""The NIC source: per netdev and interval, the driver's `ethtool -S` table (live through the ioctl,
or from a captured `DIR/<netdev>.txt` dump), the standard pause statistics (ethtool netlink, live
only) and `carrier_changes` (sysfs), as raw readings (NicReading). nic/accounting.py makes samples.

Which netdevs: those of every RDMA port (rdma_targets: the GID table's, bond and VLAN members in their
place, IPoIB) and those the config names. A netdev that cannot be read (gone, a driver without ethtool
statistics or without pause statistics, no dump file) gives no reading of that part and one debug log
line when it starts failing, not one per interval.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from typing import NamedTuple

from xtrace_agent.nic import dump
from xtrace_agent.nic.ethtool import EthtoolFailure, PauseReader, StatsReader, sysfs_counter
from xtrace_agent.rdma import sysfs

log = logging.getLogger("xtrace_agent.nic")

# A netdev that is not there (or has no ethtool statistics), and a driver without pause statistics, are
# asked again this rarely, not every interval: a failing ioctl and its exception cost more than a read.
RETRY_SECONDS = 60.0
ABSENT = ("no such interface", "driver has no such statistics")  # not a transient: the table changing


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


def rdma_targets(root: str, device: str, port: int, netdevs: tuple[str, ...] | None = None) -> list[Target]:
    """The netdevs of one RDMA port (the GID table's for RoCE, IPoIB for InfiniBand; `netdevs` if the
    caller has them already), bond and VLAN members in their place."""
    out: list[Target] = []
    for netdev in sysfs.netdevs(root, device, port) if netdevs is None else netdevs:
        for lower in lower_netdevs(root, netdev):
            if all(t.netdev != lower for t in out):
                out.append(Target(lower, device, str(port)))
    return out


def config_targets(root: str, names: tuple[str, ...], taken: set[str]) -> list[Target]:
    """The interfaces the config names (globs match /sys/class/net), less those an RDMA port claims."""
    out: list[Target] = []
    try:
        present = sorted(os.listdir(os.path.join(root, "class", "net")))
    except OSError:
        present = []
    for spec in names:
        matched = fnmatch.filter(present, spec) if any(c in spec for c in "*?[") else [spec]
        out.extend(Target(n) for n in matched if n not in taken and all(t.netdev != n for t in out))
    return out


def listing(root: str, ethtool_dir: str | None, interfaces: tuple[str, ...]) -> list[str]:
    """`xtrace-agent -l`: each netdev whose NIC statistics rdma/nccl mode reads, and what it reads."""
    from xtrace_agent.nic import names
    targets: list[Target] = []
    for device in sysfs.devices(root):
        for port in sysfs.ports(root, device):
            targets += [t for t in rdma_targets(root, device, port) if t not in targets]
    targets += config_targets(root, interfaces, {t.netdev for t in targets})
    source = NicSource(root, ethtool_dir)
    lines = []
    try:
        for target in targets:
            where = f" ({target.device} port {target.port})" if target.device else ""
            reading = source.read([target])
            if not reading:
                lines.append(f"{target.netdev}{where}: no statistics")
                continue
            table = reading[0].table
            plan = names.plan(table.names)
            metrics = sorted({e.metric for e in plan.named})
            lines.append(f"{target.netdev}{where}: {len(table.names)} statistics, {len(plan.named)} named series "
                         f"({', '.join(m.removeprefix('xtrace_nic_') for m in metrics) or 'none'})")
    finally:
        source.close()
    return lines


class NicReading(NamedTuple):
    """One netdev's raw statistics at one time; a part that could not be read is None."""

    target: Target
    timestamp: float
    table: dump.Table | None
    pause: dict[str, int] | None  # {"rx": frames, "tx": frames}
    carrier_changes: int | None


class NicSource:
    """Reads the NIC statistics of the targets it is handed, one interval at a time."""

    def __init__(self, root: str = "/sys", ethtool_dir: str | None = None, clock=time.time):
        self.root = root
        self.ethtool_dir = ethtool_dir
        self.clock = clock
        self._stats = self._pause = None
        self.off: str | None = None  # why no live statistics can be read at all
        if ethtool_dir is None:
            try:
                self._stats, self._pause = StatsReader(), PauseReader()
            except (EthtoolFailure, OSError) as e:
                self.off = getattr(e, "why", None) or str(e)
                log.warning("NIC statistics off: %s", self.off)
        self._pause_off: dict[str, float] = {}
        self._absent: dict[str, float] = {}
        self._failing: dict[tuple[str, str], str] = {}
        self.errors = 0  # parts that started failing (the caller counts them as collector errors)

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

    def read(self, targets: list[Target]) -> list[NicReading]:
        if self.off:
            return []
        failing: dict[tuple[str, str], str] = {}
        out = []
        for target in targets:
            reading = self._one(target, failing)
            if reading.table is not None:
                out.append(reading)
        self._failing = failing
        return out

    def _table(self, netdev: str) -> dump.Table:
        if self.ethtool_dir is not None:
            table = dump.read(os.path.join(self.ethtool_dir, f"{netdev}.txt"))
            if table is None:
                raise EthtoolFailure("no dump file")
            return table
        return self._stats.read(netdev)

    def _one(self, target: Target, failing: dict) -> NicReading:
        t0 = self.clock()
        key = (target.netdev, "statistics")
        absent = self._absent.get(target.netdev)
        if absent is not None and time.monotonic() - absent < RETRY_SECONDS:
            failing[key] = self._failing.get(key, "")
            return NicReading(target, t0, None, None, None)
        try:
            table = self._table(target.netdev)
            self._absent.pop(target.netdev, None)
        except EthtoolFailure as e:
            if self.ethtool_dir is None and e.why in ABSENT:  # a dump file is cheap to look for: every interval
                self._absent[target.netdev] = time.monotonic()
            self._fails(target.netdev, "statistics", e.why, failing)
            table = None
        ts = (t0 + self.clock()) / 2
        if table is None:
            return NicReading(target, ts, None, None, None)  # gone, not in the bundle, or nothing to read
        carrier = sysfs_counter(self.root, target.netdev, "carrier_changes")
        if carrier is None:
            self._fails(target.netdev, "carrier_changes", "unreadable", failing)
        return NicReading(target, ts, table, self._standard_pause(target.netdev, failing), carrier)

    def _standard_pause(self, netdev: str, failing: dict) -> dict[str, int] | None:
        if self._pause is None:
            return None
        now = time.monotonic()
        key = (netdev, "pause statistics")
        off = self._pause_off.get(netdev)
        if off is not None and now - off < RETRY_SECONDS:
            failing[key] = self._failing.get(key, "")
            return None
        try:
            frames = self._pause.read(netdev)
        except EthtoolFailure as e:
            self._pause_off[netdev] = now
            self._fails(netdev, "pause statistics", e.why, failing)
            return None
        self._pause_off.pop(netdev, None)
        return frames
