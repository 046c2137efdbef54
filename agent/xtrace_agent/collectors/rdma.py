"""The `rdma` and `nccl` sources: RDMA port counters from sysfs, as samples and one text line per port.

`rdma` reads ports/<n>/counters (the PMA port counters); `nccl` adds ports/<n>/hw_counters (mlx5
queue and congestion counters: the ones NCCL traffic moves, such as out_of_buffer, retransmits
and CNPs). Every counter is pushed as a monotonic total (rdma.counters.CounterTracker): wraps
corrected, resets absorbed, saturated error counters flagged instead of pushed frozen.
"""

from __future__ import annotations

import fnmatch
import time

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.rdma import sysfs
from xtrace_agent.rdma.counters import HW_NOT_COUNTERS, WORD_BYTES, CounterTracker, width
from xtrace_agent.samples import Report, Sample

COLLECTOR = "rdma"
# The GID table holds up to 256 entries per port, mostly unused (each read fails): reading it every
# interval would cost more than all the counters. Net devices change rarely (bond or VLAN set up).
NETDEV_REFRESH_SECONDS = 60.0

# sysfs counter -> (derived metric, multiplier, name in the text line).
DERIVED = {
    "port_xmit_data": (dm.RDMA_TX_BYTES.name, WORD_BYTES, "tx_bytes"),
    "port_rcv_data": (dm.RDMA_RX_BYTES.name, WORD_BYTES, "rx_bytes"),
    "port_xmit_packets": (dm.RDMA_TX_PACKETS.name, 1, "tx_packets"),
    "port_rcv_packets": (dm.RDMA_RX_PACKETS.name, 1, "rx_packets"),
}
# MLNX_OFED's mlx4 keeps 32-bit values in counters/ and the 64-bit ones in counters_ext/<name>_64:
# where both exist, the derived metrics use the 64-bit one, unless it reads less than the narrow one
# (some firmware leaves the *_packets_64 files at 0): the same count, wider, cannot be smaller.
WIDE = {name: f"{name}_64" for name in DERIVED}



def _is_pattern(spec: str) -> bool:
    return any(c in spec for c in "*?[")


class _Totals:
    """The four derived totals of a port at one read, for the per-second rates of the text line."""

    __slots__ = ("timestamp", "values")

    def __init__(self, timestamp: float, values: dict[str, int | None]):
        self.timestamp = timestamp
        self.values = values


def _si(value: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.2f}{unit}"
        value /= 1000
    return f"{value:.2f}T"


class RdmaCollector:
    """Collector (see collectors/__init__.py) for modes `rdma` (port counters) and `nccl` (+ hw_counters)."""

    def __init__(self, cfg: AgentConfig, health: Health, clock=time.time):
        self.root = cfg.sysfs
        self.hw_counters = cfg.mode == "nccl"
        self.specs = tuple(cfg.devices)
        self.from_file = cfg.from_file
        self.health = health
        self.clock = clock  # stamps each port's reading; tests pass a fake one
        self.tracker = CounterTracker()
        self._netdevs: dict[tuple[str, int], tuple[float, str]] = {}
        self._previous: dict[tuple[str, int], _Totals] = {}
        self._failing: set[tuple[str, int, str]] = set()
        self._labels = {"collector": COLLECTOR}
        health.inc(sm.COLLECTOR_ERRORS, 0, self._labels)  # from the first report, at 0

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        found = sysfs.devices(self.root)
        missing = [s for s in self.specs if not _is_pattern(s) and s not in found]
        if not self.from_file:
            where = sysfs.class_dir(self.root)
            if missing:
                raise UsageError(f"unknown RDMA device {missing[0]} (found: {', '.join(found) or 'none'})")
            if not found:
                raise UsageError(f"no RDMA devices in {where}: is an RDMA driver loaded? (-l lists them)")
        self._selected(found)  # readiness for the config-file case: not ready until they appear

    def close(self) -> None:
        pass

    # one interval ----------------------------------------------------------------------------
    def collect(self, now: float) -> Report:
        started = time.perf_counter()
        report = Report(timestamp=now)
        failing: set[tuple[str, int, str]] = set()
        for device in self._selected(sysfs.devices(self.root)):
            for number in sysfs.ports(self.root, device):
                try:
                    port = sysfs.read_port(self.root, device, number, self.hw_counters, HW_NOT_COUNTERS,
                                           self.clock)
                except OSError:  # belt and braces: sysfs.read_port already turns these into None
                    port = None
                if port is None:  # listed, then gone before we could read it
                    self.health.inc(sm.COLLECTOR_ERRORS, 1, self._labels)
                    continue
                for file, _why in port.problems:
                    failing.add((device, number, file))
                self._export(port, now, report)
        # A file counts as one error when it starts failing, not once per interval: an iWARP port
        # whose counters always read "N/A (no PMA)" is a fact, not an ongoing failure rate.
        new = failing - self._failing
        if new:
            self.health.inc(sm.COLLECTOR_ERRORS, len(new), self._labels)
        self._failing = failing
        self.health.set(sm.RDMA_WRAPS, self.tracker.wraps)
        self.health.set(sm.RDMA_RESETS, self.tracker.resets)
        self.health.set(sm.COLLECTOR_DURATION, time.perf_counter() - started, self._labels)
        return report

    def _selected(self, found: list[str]) -> list[str]:
        if not self.specs:
            if found:
                self.health.ready(COLLECTOR)
            else:
                self.health.not_ready(COLLECTOR, f"no RDMA devices in {sysfs.class_dir(self.root)}")
            return found
        out: list[str] = []
        for spec in self.specs:
            if _is_pattern(spec):
                matched = fnmatch.filter(found, spec)
            else:
                matched = [spec] if spec in found else []
                component = f"{COLLECTOR}:{spec}"
                if matched:
                    self.health.ready(component)
                else:
                    self.health.not_ready(component, f"RDMA device {spec} not found in {sysfs.class_dir(self.root)}")
            out.extend(d for d in matched if d not in out)
        return out

    def _netdev(self, device: str, port: int, now: float) -> str:
        cached = self._netdevs.get((device, port))
        if cached is None or now - cached[0] >= NETDEV_REFRESH_SECONDS or now < cached[0]:
            cached = (now, ",".join(sysfs.netdevs(self.root, device, port)))
            self._netdevs[(device, port)] = cached
        return cached[1]

    def _export(self, port: sysfs.Port, now: float, report: Report) -> None:
        ts = port.timestamp
        base = {"device": port.device, "port": str(port.port)}
        netdev = self._netdev(port.device, port.port, now)
        out = report.samples
        out.append(Sample(dm.RDMA_PORT_INFO.name, {
            **base, "link_layer": port.link_layer or "unknown", "state": port.state or "unknown",
            "phys_state": port.phys_state or "unknown", "rate": port.rate or "unknown", "netdev": netdev,
        }, 1, ts))
        rate = port.rate_bytes_per_second
        if rate is not None:
            out.append(Sample(dm.RDMA_PORT_RATE.name, dict(base), rate, ts))

        derived: dict[str, int | None] = dict.fromkeys(DERIVED)
        saturated: list[str] = []
        for group, metric, values in (("counters", dm.RDMA_PORT_COUNTER.name, port.counters),
                                      ("hw_counters", dm.RDMA_HW_COUNTER.name, port.hw_counters)):
            for name in sorted(values):
                raw = values[name]
                if raw is None:
                    continue  # absent: no sample rather than a wrong one
                w = width(group, name)
                reading = self.tracker.update((port.device, port.port, group, name), raw, w)
                if w.saturates:
                    out.append(Sample(dm.RDMA_COUNTER_SATURATED.name, {**base, "counter": name},
                                      1 if reading.saturated else 0, ts))
                    if reading.saturated:
                        saturated.append(name)
                if reading.value is None:
                    continue
                out.append(Sample(metric, {**base, "counter": name}, reading.value, ts))
                if group == "counters" and name in DERIVED:
                    derived[name] = reading.value
        for name, wide in WIDE.items():
            raw_wide, raw_narrow = port.counters.get(wide), port.counters.get(name)
            if raw_wide is not None and (raw_narrow is None or raw_wide >= raw_narrow):
                derived[name] = self.tracker.total((port.device, port.port, "counters", wide))
        for name, (metric, factor, _) in DERIVED.items():
            if derived[name] is not None:
                out.append(Sample(metric, dict(base), derived[name] * factor, ts))
        report.text.append(self._line(port, netdev, derived, saturated))

    def _line(self, port: sysfs.Port, netdev: str, derived: dict[str, int | None], saturated: list[str]) -> str:
        key = (port.device, port.port)
        previous = self._previous.get(key)
        self._previous[key] = _Totals(port.timestamp, derived)
        head = (f"{port.device} port={port.port} netdev={netdev or '-'} link_layer={port.link_layer or '?'} "
                f"state={port.state or '?'} rate={(port.rate or '?').split(' (')[0].replace(' ', '')}")
        parts = [head]
        dt = port.timestamp - previous.timestamp if previous else 0.0
        for counter, (_, factor, label) in DERIVED.items():
            value = derived[counter]
            if value is None:
                parts.append(f"{label}=-")
            elif previous is None or dt <= 0 or previous.values.get(counter) is None:
                parts.append(f"{label}={value * factor}")  # first interval: totals
            else:
                per_second = (value - previous.values[counter]) * factor / dt
                parts.append(f"{label}/s={_si(per_second)}")
        if saturated:
            parts.append(f"saturated={','.join(saturated)}")
        return " ".join(parts)
