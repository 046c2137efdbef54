"""XDP collector: keeps the program attached to the wanted interfaces and turns drains into samples.

Each interval: reconcile attachments (an interface that vanished and came back is attached
again), drain the kernel tables, fold the deltas into cumulative counters, emit samples and the
old tool's text lines.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from operator import itemgetter

from xtrace_agent import netdev
from xtrace_agent.accumulator import Accumulator, Totals
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health, describe
from xtrace_agent.samples import Report, Sample

log = logging.getLogger("xtrace.xdp")

PACKETS = "xtrace_network_packets_total"
BYTES = "xtrace_network_bytes_total"
IFACE_PACKETS = "xtrace_interface_packets_total"
IFACE_BYTES = "xtrace_interface_bytes_total"
OTHER = "other"

# kernel stat name -> (self-metric, help)
_STATS = {
    "malformed": ("xtrace_xdp_malformed_packets_total", "Packets whose headers were cut short or invalid."),
    "non_ip": ("xtrace_xdp_non_ip_packets_total", "Packets that are not IPv4/IPv6 (counted in interface totals only)."),
    "table_full": ("xtrace_xdp_table_full_packets_total", "Packets not tracked per flow: flow table insert failed."),
    "evicted": ("xtrace_xdp_flows_evicted_total", "Flows evicted from the kernel LRU table before a drain."),
}
for _name, _help in _STATS.values():
    describe(_name, "counter", _help)
describe("xtrace_flows_tracked", "gauge", "Flows currently exported per interface (series budget use).")
describe("xtrace_flows_folded_total", "counter", "Flows folded into the `other` flow because the series budget was full.")
describe("xtrace_flows_expired_total", "counter", "Flows that stopped being exported after the idle timeout.")
describe("xtrace_xdp_attached", "gauge", "1 when the XDP program is attached to the interface (label mode).")
describe("xtrace_collector_duration_seconds", "gauge", "Time the last collection took.")


# A flow's identity in what we export: the label values (so a recreated interface, with a new
# ifindex, continues the same series). Ports and protocol stay ints until they become labels.
FlowLabels = tuple  # (interface, src_ip, dst_ip, src_port, dst_port, protocol, traffic_type, opcode, qp)
_NO_BTH = (None, None)  # the BTH fields mean nothing outside RoCE: kept out of other flows' identity
LABEL_NAMES = ("interface", "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "traffic_type")


def _other(key: FlowLabels) -> FlowLabels:
    return (key[0], OTHER, OTHER, 0, 0, 0, OTHER, None, None)


def _endpoint(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def flow_labels(key: FlowLabels) -> dict[str, str]:
    labels = dict(zip(LABEL_NAMES, map(str, key[:7]), strict=True))
    if key[6] == "roce":
        labels["rdma_opcode"] = str(key[7])
        labels["dest_qp"] = str(key[8])
    return labels


def text_line(key: FlowLabels, packets: int, bytes_: int, with_interface: bool) -> str:
    """The old tool's line, with extra key=value fields appended (never inserted) for new facts."""
    iface, src, dst, sport, dport, proto, ttype, opcode, qp = key
    line = f"{_endpoint(src, sport)} -> {_endpoint(dst, dport)} proto={proto} packets={packets} bytes={bytes_}"
    if ttype == "roce":
        line += f" traffic_type=roce rdma_opcode={opcode} dest_qp={qp}"
    elif ttype != "ethernet":
        line += f" traffic_type={ttype}"
    if with_interface:
        line += f" interface={iface}"
    return line


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
        self.flows = Accumulator(cfg.xdp.max_flows, cfg.xdp.idle_timeout, _other, describe=flow_labels)
        self.ifaces = Totals()
        self.stats = Totals()

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
                li = netdev.link(name)
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
            self._reconcile(strict=not self.cfg.from_file)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None
        self._attached.clear()

    # attachment --------------------------------------------------------------------------
    def _reconcile(self, strict: bool = False) -> None:
        from xtrace_agent.xdp.program import AttachError

        wanted = netdev.expand(self.cfg.interfaces)
        live = self.program.attached()  # one kernel query per link, once per interval
        for spec in self.cfg.interfaces:
            if netdev.is_pattern(spec):
                if netdev.matching(spec, wanted):
                    self._ok(spec, f"xdp:{spec}")
                else:  # a glob that matches nothing (yet): not ready, so nobody believes it counts
                    self._problem(spec, f"xdp:{spec}", "no interface matches")
        for name in wanted:
            li = netdev.link(name)
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
                if strict:
                    raise
                self._problem(name, component, str(e))
                continue
            if name in self._attached:
                log.info("interface %s is back (ifindex %d): attached again (%s)", name, li.ifindex, mode)
            else:
                log.info("attached to %s (ifindex %d, %s mode)", name, li.ifindex, mode)
            self._attached[name] = li.ifindex
            self._names[li.ifindex] = name
            self.health.set("xtrace_xdp_attached", 1, {"interface": name, "mode": mode})
            if li.is_down:
                self._problem(name, component, "link down")
            else:
                self._ok(name, component)
        for name in list(self._attached):
            if name not in wanted:  # a glob no longer matches (renamed): let it go
                ifindex = self._attached.pop(name)
                self.program.detach(ifindex)

    def _text(self) -> list[str]:
        """The old tool's lines: per interface, busiest flows first, the `other` flow last."""
        multi = len(self.cfg.interfaces) > 1 or any(netdev.is_pattern(s) for s in self.cfg.interfaces)
        rows = sorted(self.flows.items(), key=lambda r: (r[0][0], r[3], -r[2]))
        return [text_line(key, packets, bytes_, multi) for key, packets, bytes_, _ in rows]

    def _problem(self, name: str, component: str, reason: str) -> None:
        if self._problems.get(name) != reason:
            log.warning("%s: %s", name, reason)
            self._problems[name] = reason
        self.health.not_ready(component, reason)

    def _ok(self, name: str, component: str) -> None:
        self._problems.pop(name, None)
        self.health.ready(component)

    # collection --------------------------------------------------------------------------
    def collect(self, now: float) -> Report:
        began = time.monotonic()
        drained = self.program.drain()
        flows = drained.flows
        # one comprehension, no call per flow: at 100k flows every Python call costs ~5 ms
        ifaces = {i: (self._iface_name(i),) for i in {fk[0] for fk in flows}}
        deltas = {ifaces[fk[0]] + fk[1:7] + (fk[7:] if fk[6] == "roce" else _NO_BTH): c for fk, c in flows.items()}
        if len(deltas) < len(flows):
            # two ifindexes under one name (a link recreated within the interval): add them up
            deltas = {}
            for fk, (p, b) in flows.items():
                key = ifaces[fk[0]] + fk[1:7] + (fk[7:] if fk[6] == "roce" else _NO_BTH)
                old = deltas.get(key, (0, 0))
                deltas[key] = (old[0] + p, old[1] + b)
        self.flows.add(deltas, now)
        self.flows.expire(now)
        for ifindex, (p, b) in drained.interfaces.items():
            self.ifaces.add(self._iface_name(ifindex), p, b)
        for stat, value in drained.stats.items():
            self.stats.add(stat, value)
        # attach after the drain, so what a vanished link counted was read under its old name
        self._reconcile()
        report = self._report(now)
        self.health.set("xtrace_collector_duration_seconds", time.monotonic() - began, {"collector": "xdp"})
        return report

    def _iface_name(self, ifindex: int) -> str:
        return self._names.get(ifindex) or f"ifindex{ifindex}"

    def _report(self, now: float) -> Report:
        samples: list[Sample] = []
        append = samples.append
        new = tuple.__new__  # Sample(...) runs a Python-level __new__: 3x slower at 200k samples
        for labels, packets, bytes_ in self.flows.described():
            append(new(Sample, (PACKETS, labels, packets, now)))
            append(new(Sample, (BYTES, labels, bytes_, now)))
        per_iface = Counter(map(itemgetter(0), self.flows.keys()))
        lines = self._text() if self.cfg.output == "text" else []
        for iface, (p, b) in sorted(self.ifaces.values.items()):
            samples.append(Sample(IFACE_PACKETS, {"interface": iface}, p, now))
            samples.append(Sample(IFACE_BYTES, {"interface": iface}, b, now))
        for stat, (value,) in self.stats.values.items():
            if stat in _STATS:
                self.health.set(_STATS[stat][0], value)
        for iface in self._attached:
            self.health.set("xtrace_flows_tracked", per_iface.get(iface, 0), {"interface": iface})
        self.health.set("xtrace_flows_folded_total", self.flows.folded_flows)
        self.health.set("xtrace_flows_expired_total", self.flows.expired_flows)
        return Report(now, samples, lines)

