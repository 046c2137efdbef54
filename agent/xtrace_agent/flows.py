"""The accounting stage of xdp mode: what the XDP source observed in one interval, turned into
cumulative flow counters, `other` flows, interface totals and the samples every sink gets.

    XdpCollector.collect() -> Observed (deltas) -> FlowAccounting.report() -> Report

Conservation (docs/architecture.md): per interface and direction, at every report,
    sum of its flows + its `other` flow == xtrace_interface_packets_total (and _bytes_total)
exactly; with sampling the flows are estimates (counts x N), so the equality holds up to the
sampling. `other` holds what the kernel could not track per flow (malformed, non-IP, table
full: xtrace_xdp_untracked_*{reason}), the flows over the series budget, and the counts of
flows that stopped being exported (idle or retired).
"""

from __future__ import annotations

import time
from collections import Counter
from operator import itemgetter

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent.accumulator import Accumulator, Totals
from xtrace_agent.columns import FlowBlock, FlowSeries
from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health
from xtrace_agent.samples import Report, Sample
from xtrace_agent.stages import BTH, ENDPOINTS, GROUP, TRAFFIC_TYPE, FlowId, Group, Observed
from xtrace_agent.xdp.flowtable import TableDeltas
from xtrace_agent.xdp.layout import reasons

PACKETS = dm.NETWORK_PACKETS.name
BYTES = dm.NETWORK_BYTES.name
# XTrace-Catch's gauges: what each flow moved in the last interval (xdp.flowGauges)
FLOW_PACKETS = dm.FLOW_PACKETS.name
FLOW_BYTES = dm.FLOW_BYTES.name
IFACE_PACKETS = dm.IFACE_PACKETS.name
IFACE_BYTES = dm.IFACE_BYTES.name
UNTRACKED_PACKETS = dm.UNTRACKED_PACKETS.name
UNTRACKED_BYTES = dm.UNTRACKED_BYTES.name
UNOBSERVED_PACKETS = dm.UNOBSERVED_PACKETS.name
UNOBSERVED_BYTES = dm.UNOBSERVED_BYTES.name
OTHER = "other"

# untracked reason -> the older global self-metric that sums it over interfaces
_GLOBAL = {"malformed": sm.XDP_MALFORMED, "non_ip": sm.XDP_NON_IP, "table_full": sm.XDP_TABLE_FULL}

LABEL_NAMES = FlowId._fields[ENDPOINTS]  # the label of each endpoint slot, in order
_OTHER_ENDPOINTS = (OTHER, OTHER, 0, 0, 0, OTHER)


def other_of(key: tuple) -> tuple:
    """The FlowId of the `other` flow of a key's group."""
    return (key[GROUP], *_OTHER_ENDPOINTS, None, None)


def group_labels(group: Group, directed: bool) -> dict[str, str]:
    """Labels of a per-interface series: `direction` only when the agent counts both directions,
    so that with ingress alone every series is exactly what it was before egress existed."""
    return {"interface": group[0], "direction": group[1]} if directed else {"interface": group[0]}


def flow_labels(key: tuple, directed: bool = False) -> dict[str, str]:
    """The labels of a FlowId's series (made once per flow for its lifetime)."""
    labels = group_labels(key[GROUP], directed)
    labels.update(zip(LABEL_NAMES, map(str, key[ENDPOINTS]), strict=True))
    if key[TRAFFIC_TYPE] == "roce":
        labels["rdma_opcode"], labels["dest_qp"] = map(str, key[BTH])
    return labels


def directed_flow_labels(key: tuple) -> dict[str, str]:
    return flow_labels(key, True)


class FlowAccounting:
    """stages.Accounting for xdp: cumulative flows, `other`, interface totals and untracked counts,
    as one Report per interval."""

    def __init__(self, cfg: AgentConfig, health: Health):
        self.cfg = cfg
        self.health = health
        self.sampling = cfg.xdp.sampling
        self.reasons = reasons(self.sampling)
        self.directed = "egress" in cfg.xdp.directions
        labels_of = directed_flow_labels if self.directed else flow_labels
        # a flow's description is its series identity: labels made when a sink asks, label bytes
        # encoded once for its lifetime (columns.FlowSeries)
        self.flows = Accumulator(cfg.xdp.max_flows, cfg.xdp.idle_timeout, other_of,
                                 describe=lambda key: FlowSeries(key, labels_of))
        self._per_group_cache: tuple[int, Counter] = (-1, Counter())
        self.interfaces = Totals()
        self.untracked = Totals()
        self.unobserved = Totals()
        self.sampled = 0
        # xdp.drops, xdp.tcp: their own accounting and series budgets (drops.py, tcp.py, which
        # build their labels with this module's functions: imported here, not at the top)
        from xtrace_agent.drops import DropAccounting
        from xtrace_agent.tcp import TcpAccounting

        self.drops = DropAccounting(cfg.xdp.max_drop_flows, cfg.xdp.idle_timeout, self.directed) \
            if cfg.xdp.drops else None
        self.tcp = TcpAccounting(cfg.xdp.max_tcp_flows, cfg.xdp.idle_timeout, self.directed) if cfg.xdp.tcp else None
        # every self-metric an alert may use exists from the first report, at 0
        for metric in (*_GLOBAL.values(), sm.XDP_UNATTRIBUTED_PACKETS, sm.XDP_UNATTRIBUTED_BYTES, sm.XDP_SAMPLED,
                       sm.FLOWS_FOLDED, sm.FLOWS_EXPIRED, sm.FLOWS_RETIRED):
            health.set(metric, 0)

    def report(self, seen: Observed, now: float) -> Report:
        for group in seen.watched:  # present at 0 from the first report, traffic or not
            self.interfaces.add(group, 0, 0)
            if group[1] == "ingress":  # the driver's receive counters: ingress only
                self.unobserved.add(group[0], 0, 0)
            self.flows.add_other(other_of((group,)), 0, 0, now)
            for reason in self.reasons:
                self.untracked.add((group, reason), 0, 0)
        if isinstance(seen.flows, TableDeltas):
            self.flows.add_table(seen.flows, now)
        else:
            self.flows.add(seen.flows, now)
        for (group, reason), (packets, bytes_) in seen.untracked.items():
            self.untracked.add((group, reason), packets, bytes_)
            if reason == "unsampled":
                continue  # these are what the scaled flow counts stand for
            if reason == "table_full" and self.sampling > 1:  # only sampled packets reach the table
                packets, bytes_ = packets * self.sampling, bytes_ * self.sampling
            self.flows.add_other(other_of((group,)), packets, bytes_, now)
        for group, (packets, bytes_) in seen.interfaces.items():
            self.interfaces.add(group, packets, bytes_)
        for iface, (packets, bytes_) in seen.unobserved.items():
            self.unobserved.add(iface, packets, bytes_)
        self.flows.expire(now)
        self.sampled += seen.sampled
        report = self._report(seen, now)
        if self.drops is not None and seen.drops is not None:
            report.extend(self.drops.report(seen.drops, now))
        if self.tcp is not None and seen.tcp is not None:
            report.extend(self.tcp.report(seen.tcp, now))
        if seen.began is not None:
            self.health.set(sm.COLLECTOR_DURATION, time.monotonic() - seen.began, {"collector": "xdp"})
        return report

    def _flow_block(self, now: float) -> FlowBlock:
        """Every live flow and `other` entry in columns (no object per sample: columns.py)."""
        gauges = self.cfg.xdp.flow_gauges
        block = FlowBlock((PACKETS, BYTES), (FLOW_PACKETS, FLOW_BYTES) if gauges else None, now)
        block.series, block.packets, block.bytes, moved = self.flows.columns(now if gauges else None)
        if moved is not None:
            block.moved, block.moved_packets, block.moved_bytes = moved
        return block

    def _per_group(self) -> Counter:
        """Live flows per group (a count over 100k keys: recounted only when flows come or go)."""
        if self._per_group_cache[0] != self.flows.version:
            self._per_group_cache = (self.flows.version, Counter(map(itemgetter(0), self.flows.keys())))
        return self._per_group_cache[1]

    def _report(self, seen: Observed, now: float) -> Report:
        samples: list[Sample] = []
        directed = self.directed
        for group, (p, b) in sorted(self.interfaces.values.items()):
            samples.append(Sample(IFACE_PACKETS, group_labels(group, directed), p, now))
            samples.append(Sample(IFACE_BYTES, group_labels(group, directed), b, now))
        for iface, (p, b) in sorted(self.unobserved.values.items()):
            samples.append(Sample(UNOBSERVED_PACKETS, {"interface": iface}, p, now))
            samples.append(Sample(UNOBSERVED_BYTES, {"interface": iface}, b, now))
        per_reason: Counter = Counter()
        for (group, reason), (p, b) in sorted(self.untracked.values.items()):
            samples.append(Sample(UNTRACKED_PACKETS, {**group_labels(group, directed), "reason": reason}, p, now))
            samples.append(Sample(UNTRACKED_BYTES, {**group_labels(group, directed), "reason": reason}, b, now))
            per_reason[reason] += p
        health = self.health
        for reason, metric in _GLOBAL.items():
            health.set(metric, per_reason[reason])
        health.set(sm.XDP_UNATTRIBUTED_PACKETS, seen.unattributed[0])
        health.set(sm.XDP_UNATTRIBUTED_BYTES, seen.unattributed[1])
        health.set(sm.XDP_SAMPLED, self.sampled)
        per_iface = self._per_group()
        flows = seen.flows
        in_table = flows.group_counts() if isinstance(flows, TableDeltas) else Counter(map(itemgetter(0), flows))
        for group in seen.watched:
            health.set(sm.FLOWS_TRACKED, per_iface.get(group, 0), group_labels(group, directed))
            health.set(sm.XDP_TABLE_FLOWS, in_table.get(group, 0), group_labels(group, directed))
        health.set(sm.FLOWS_FOLDED, self.flows.folded_flows)
        health.set(sm.FLOWS_EXPIRED, self.flows.expired_flows)
        health.set(sm.FLOWS_RETIRED, self.flows.retired_flows)
        return Report(now, samples, flows=self._flow_block(now))
