"""The `rdma` and `nccl` sources: RDMA port counters read from sysfs, raw, with the ports' net devices.

`rdma` reads ports/<n>/counters (the PMA port counters); `nccl` adds ports/<n>/hw_counters (mlx5
queue and congestion counters: the ones NCCL traffic moves, such as out_of_buffer, retransmits
and CNPs). Both read the NIC statistics of the ports' net devices and of the interfaces the config
names (nic.source; docs/nic-metrics.md): at about 0.2 ms per netdev they cost little beside the
port counters (bench/bench_nic.py). Turning the raw reads into monotonic totals is the next stage's
job (ports.PortAccounting).
"""

from __future__ import annotations

import fnmatch
import time

from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.nic.source import NicSource, Target, config_targets, rdma_targets
from xtrace_agent.ports import COLLECTOR
from xtrace_agent.rdma import sysfs
from xtrace_agent.rdma.counters import HW_NOT_COUNTERS
from xtrace_agent.readiness import Kind
from xtrace_agent.stages import PortsObserved

# The GID table holds up to 256 entries per port, mostly unused (each read fails): reading it every
# interval would cost more than all the counters. Net devices change rarely (bond or VLAN set up).
NETDEV_REFRESH_SECONDS = 60.0


def _is_pattern(spec: str) -> bool:
    return any(c in spec for c in "*?[")


class RdmaCollector:
    """stages.Source for modes `rdma` (port counters) and `nccl` (+ hw_counters)."""

    def __init__(self, cfg: AgentConfig, health: Health, clock=time.time, owners=None):
        self.root = cfg.sysfs
        self.hw_counters = cfg.mode == "nccl"
        self.specs = tuple(cfg.devices)
        self.from_file = cfg.from_file
        self.health = health
        self.clock = clock  # stamps each port's reading; tests pass a fake one
        self._netdevs: dict[tuple[str, int], tuple[float, str, list[Target]]] = {}
        self._failing: set[tuple[str, int, str]] = set()
        self._labels = {"collector": COLLECTOR}
        health.inc(sm.COLLECTOR_ERRORS, 0, self._labels)  # from the first report, at 0
        self.nic = NicSource(cfg.sysfs, cfg.ethtool_dir, clock)
        self.nic_interfaces = cfg.nic.interfaces
        self._nic_errors = 0
        health.inc(sm.COLLECTOR_ERRORS, 0, {"collector": "nic"})
        # pod attribution (owners.table.OwnerTable, or None): who holds each device, asked of the
        # kubelet per period and on device change, looked up here every interval
        self.owners = owners

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
        self.nic.close()

    # one interval ----------------------------------------------------------------------------
    def collect(self, now: float) -> PortsObserved:
        began = time.perf_counter()
        ports: list[sysfs.Port] = []
        failing: set[tuple[str, int, str]] = set()
        found = sysfs.devices(self.root)
        if self.owners is not None:
            self.owners.update(found)
            self.health.set(sm.RDMA_ATTRIBUTED, len(self.owners.by_rdma))
            for kind, n in self.owners.failures_by_kind.items():
                self.health.set(sm.POD_RESOURCES_FAILURES, n, {"kind": kind})
        selected = self._selected(found)
        for device in selected:
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
                ports.append(port)
        # A file counts as one error when it starts failing, not once per interval: an iWARP port
        # whose counters always read "N/A (no PMA)" is a fact, not an ongoing failure rate.
        new = failing - self._failing
        if new:
            self.health.inc(sm.COLLECTOR_ERRORS, len(new), self._labels)
        self._failing = failing
        netdevs = {(p.device, p.port): self._netdev(p.device, p.port, now)[0] for p in ports}
        owners = {} if self.owners is None else {d: o for d in selected if (o := self.owners.labels(d))}
        netdev_owners = {} if self.owners is None else self.owners.netdev_labels()
        return PortsObserved(ports, netdevs, began, self._nic(ports, now), owners, netdev_owners)

    def _nic(self, ports: list[sysfs.Port], now: float) -> list:
        targets: list[Target] = []
        for p in ports:
            targets += [t for t in self._netdev(p.device, p.port, now)[1] if t not in targets]
        targets += config_targets(self.root, self.nic_interfaces, {t.netdev for t in targets})
        readings = self.nic.read(targets)
        if self.nic.errors > self._nic_errors:  # parts that started failing, once each
            self.health.inc(sm.COLLECTOR_ERRORS, self.nic.errors - self._nic_errors, {"collector": "nic"})
            self._nic_errors = self.nic.errors
        return readings

    def _selected(self, found: list[str]) -> list[str]:
        if not self.specs:
            if found:
                self.health.ready(COLLECTOR)
            else:
                self.health.not_ready(Kind.DEVICE_NOT_FOUND, COLLECTOR,
                                      f"no RDMA devices in {sysfs.class_dir(self.root)}")
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
                    self.health.not_ready(Kind.DEVICE_NOT_FOUND, component,
                                          f"RDMA device {spec} not found in {sysfs.class_dir(self.root)}")
            out.extend(d for d in matched if d not in out)
        return out

    def _netdev(self, device: str, port: int, now: float) -> tuple[str, list[Target]]:
        """The port's net devices (comma-separated, for port_info) and the NIC targets they give."""
        cached = self._netdevs.get((device, port))
        if cached is None or now - cached[0] >= NETDEV_REFRESH_SECONDS or now < cached[0]:
            names = sysfs.netdevs(self.root, device, port)
            cached = (now, ",".join(names), rdma_targets(self.root, device, port, names))
            self._netdevs[(device, port)] = cached
        return cached[1], cached[2]
