"""The accounting stage of the rdma and nccl modes: each port's raw sysfs counters, read by the
RDMA source, turned into monotonic totals and the samples every sink gets.

    RdmaCollector.collect() -> PortsObserved (raw readings) -> PortAccounting.report() -> Report

Every counter is pushed as a monotonic total (rdma.counters.CounterTracker): wraps corrected,
resets absorbed, saturated error counters flagged instead of pushed frozen.
"""

from __future__ import annotations

import time

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent.health import Health
from xtrace_agent.nic.accounting import NicAccounting
from xtrace_agent.nic.names import NO_RAW, RawSelection
from xtrace_agent.rdma import sysfs
from xtrace_agent.rdma.counters import WORD_BYTES, CounterTracker, width
from xtrace_agent.samples import Report, Sample
from xtrace_agent.stages import PortsObserved

COLLECTOR = "rdma"
# sysfs counter -> (derived metric, multiplier): port_*_data count 4-byte words.
DERIVED = {
    "port_xmit_data": (dm.RDMA_TX_BYTES.name, WORD_BYTES),
    "port_rcv_data": (dm.RDMA_RX_BYTES.name, WORD_BYTES),
    "port_xmit_packets": (dm.RDMA_TX_PACKETS.name, 1),
    "port_rcv_packets": (dm.RDMA_RX_PACKETS.name, 1),
}
# MLNX_OFED's mlx4 keeps 32-bit values in counters/ and the 64-bit ones in counters_ext/<name>_64:
# where both exist, the derived metrics use the 64-bit one, unless it reads less than the narrow one
# (some firmware leaves the *_packets_64 files at 0): the same count, wider, cannot be smaller.
WIDE = {name: f"{name}_64" for name in DERIVED}


class PortAccounting:
    """stages.Accounting for rdma and nccl: raw port readings -> monotonic totals and samples."""

    def __init__(self, health: Health, nic_raw: RawSelection = NO_RAW):
        self.health = health
        self.tracker = CounterTracker()
        self.nic = NicAccounting(nic_raw)
        self._labels = {"collector": COLLECTOR}
        # pod attribution: a held device's counters count from its owner's first report (_count)
        self._owner_of: dict[str, tuple] = {}
        self._since: dict[tuple, int] = {}

    def report(self, seen: PortsObserved, now: float) -> Report:
        report = Report(timestamp=now)
        for port in seen.ports:
            owner = self._owner(port.device, seen.owners.get(port.device))
            self._export(port, seen.netdevs.get((port.device, port.port), ""), owner, report.samples)
        self.nic.samples(seen.nic, report.samples, seen.owners, seen.netdev_owners)
        self.health.set(sm.RDMA_WRAPS, self.tracker.wraps)
        self.health.set(sm.RDMA_RESETS, self.tracker.resets)
        self.health.set(sm.COLLECTOR_DURATION, time.perf_counter() - seen.began, self._labels)
        return report

    def _owner(self, device: str, labels: dict[str, str] | None) -> dict[str, str]:
        """The pod labels of a device ({} when no pod holds it); a new owner restarts its counts."""
        key = tuple(labels.values()) if labels else ()
        if self._owner_of.get(device, ()) != key:
            self._owner_of[device] = key
            self._since = {k: v for k, v in self._since.items() if k[0] != device}
        return labels or {}

    def _count(self, key: tuple, total: int, owned: bool) -> int:
        """What a series pushes: the hardware's total, or for a held device what moved since its
        owner's first report. The owner's series starts at 0 and holds only its own traffic, so
        increase() per pod is right even though the hardware counts the previous owners' too."""
        if not owned:
            return total
        return total - self._since.setdefault(key, total)

    def _export(self, port: sysfs.Port, netdev: str, owner: dict[str, str], out: list[Sample]) -> None:
        ts = port.timestamp
        owned = bool(owner)
        base = {"device": port.device, "port": str(port.port), **owner}
        out.append(Sample(dm.RDMA_PORT_INFO.name, {
            **base, "link_layer": port.link_layer or "unknown", "state": port.state or "unknown",
            "phys_state": port.phys_state or "unknown", "rate": port.rate or "unknown", "netdev": netdev,
        }, 1, ts))
        rate = port.rate_bytes_per_second
        if rate is not None:
            out.append(Sample(dm.RDMA_PORT_RATE.name, dict(base), rate, ts))

        derived: dict[str, int | None] = dict.fromkeys(DERIVED)
        for group, metric, values in (("counters", dm.RDMA_PORT_COUNTER.name, port.counters),
                                      ("hw_counters", dm.RDMA_HW_COUNTER.name, port.hw_counters)):
            for name in sorted(values):
                raw = values[name]
                if raw is None:
                    continue  # absent: no sample rather than a wrong one
                w = width(group, name)
                key = (port.device, port.port, group, name)
                reading = self.tracker.update(key, raw, w)
                if w.saturates:
                    out.append(Sample(dm.RDMA_COUNTER_SATURATED.name, {**base, "counter": name},
                                      1 if reading.saturated else 0, ts))
                if reading.value is None:
                    continue
                value = self._count(key, reading.value, owned)
                out.append(Sample(metric, {**base, "counter": name}, value, ts))
                if group == "counters" and name in DERIVED:
                    derived[name] = value
        for name, wide in WIDE.items():
            raw_wide, raw_narrow = port.counters.get(wide), port.counters.get(name)
            if raw_wide is not None and (raw_narrow is None or raw_wide >= raw_narrow):
                key = (port.device, port.port, "counters", wide)
                derived[name] = self._count(key, self.tracker.total(key), owned)
        for name, (metric, factor) in DERIVED.items():
            if derived[name] is not None:
                out.append(Sample(metric, dict(base), derived[name] * factor, ts))
