"""The accounting stage of TCP events: retransmitted segments per flow, and the sockets' smoothed
RTT as a histogram with fixed buckets.

    EventsProgram.drain_tcp() -> observe() -> TcpObserved (deltas) -> TcpAccounting.report()

Retransmits: per flow (the traffic flows' labels), under the TCP series budget; the flows over
it, the sockets that found the table full and the flows that stopped being exported are in the
interface's `other` flow, so per (interface, direction) the flows add up to
xtrace_interface_tcp_retransmits_total exactly.

RTT: the kernel counts each srtt observation (one per segment a socket receives, tcp:tcp_probe)
in power-of-two microsecond slots; the agent exports a Prometheus histogram per interface
(and direction) with the fixed bounds BUCKETS, a subset of the slot bounds, so each bucket is
exact and a sum over nodes (sum by (le)) is exact too. Per flow, the sum and count of its
observations (`xtrace_tcp_flow_rtt_seconds_sum/_count`) give its mean srtt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from xtrace_agent import datametrics as dm
from xtrace_agent.accumulator import Accumulator, Totals
from xtrace_agent.flows import flow_labels, group_labels, other_of
from xtrace_agent.samples import Sample
from xtrace_agent.stages import Group
from xtrace_agent.xdp.events import RTT_SLOTS, TcpDrained

RETRANS = dm.TCP_RETRANS.name
IFACE_RETRANS = dm.IFACE_TCP_RETRANS.name
RTT = dm.TCP_RTT_COUNT.name.removesuffix("_count")  # _bucket, _sum, _count
FLOW_RTT = dm.TCP_FLOW_RTT_COUNT.name.removesuffix("_count")  # _sum, _count
LOST = dm.TCP_LOST.name
# histogram bounds: slot i of the kernel holds srtt in (2^(i-1), 2^i] us; every second slot
# bound from 16 us to 4.19 s, so a bucket is a sum of whole slots
BUCKET_SLOTS = tuple(range(4, 23, 2))
BUCKETS = tuple((1 << i) / 1e6 for i in BUCKET_SLOTS)
RETRANS_I, COUNT_I, SUM_I = 0, 1, 2  # a flow's vector
HIST_SUM, HIST_SLOT0 = 0, 1  # a histogram's vector


def le_text(seconds: float) -> str:
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


class TcpObserved(NamedTuple):
    flows: dict[tuple, np.ndarray]  # FlowId -> [retrans, rtt_count, rtt_sum_us]
    other: dict[Group, np.ndarray]  # the table had no room
    lost: int  # cumulative events with no place at all
    watched: tuple[Group, ...] = ()
    histograms: dict[Group, np.ndarray] = {}  # [sum_us, slots...] gained in the interval


def observe(drained: TcpDrained, group_of: Callable[[int], Group], watched: tuple[Group, ...] = ()) -> TcpObserved:
    flows: dict[tuple, np.ndarray] = {}
    for fk, vec in drained.flows.items():
        key = (group_of(fk[0]), *fk[1:7], None, None)
        flows[key] = flows[key] + vec if key in flows else vec
    other: dict[Group, np.ndarray] = {}
    for ifindex, vec in drained.untracked.items():
        g = group_of(ifindex)
        other[g] = other[g] + vec if g in other else vec
    histograms: dict[Group, np.ndarray] = {}
    for ifindex, vec in drained.histograms.items():
        g = group_of(ifindex)
        histograms[g] = histograms[g] + vec if g in histograms else vec
    return TcpObserved(flows, other, drained.lost, watched, histograms)


class TcpAccounting:
    """Cumulative retransmits per flow and interface, RTT histograms per interface."""

    def __init__(self, max_flows: int, idle_timeout: float, directed: bool):
        self.directed = directed
        describe = (lambda key: flow_labels(key, True)) if directed else flow_labels
        self.retrans = Accumulator(max_flows, idle_timeout, other_of, describe=describe)
        self.rtt = Accumulator(max_flows, idle_timeout, other_of, describe=describe)
        self.interfaces = Totals()  # group -> [retransmits]
        self.histograms: dict[Group, np.ndarray] = {}  # group -> [sum_us, slots...], cumulative
        self.lost = 0

    def report(self, seen: TcpObserved, now: float) -> list[Sample]:
        for group in seen.watched:
            self.interfaces.add(group, 0)
            self.histograms.setdefault(group, np.zeros(1 + RTT_SLOTS, dtype=np.uint64))
        for group, vec in seen.histograms.items():
            self.histograms[group] = self.histograms.get(group, 0) + vec
        self.retrans.add({k: (int(v[RETRANS_I]), 0) for k, v in seen.flows.items()}, now)
        self.rtt.add({k: (int(v[COUNT_I]), int(v[SUM_I])) for k, v in seen.flows.items() if v[COUNT_I]}, now)
        for key, vec in [*seen.flows.items(), *(((g,), v) for g, v in seen.other.items())]:
            group = key[0]
            if len(key) == 1:  # no flow: straight to the interface's `other`
                self.retrans.add_other(other_of(key), int(vec[RETRANS_I]), 0, now)
                self.rtt.add_other(other_of(key), int(vec[COUNT_I]), int(vec[SUM_I]), now)
            self.interfaces.add(group, int(vec[RETRANS_I]))
        self.retrans.expire(now)
        self.rtt.expire(now)
        self.lost = seen.lost
        return self._samples(now)

    def _samples(self, now: float) -> list[Sample]:
        samples = [Sample(RETRANS, labels, p, now) for labels, p, _ in self.retrans.described()]
        for labels, count, sum_us in self.rtt.described():
            samples.append(Sample(FLOW_RTT + "_count", labels, count, now))
            samples.append(Sample(FLOW_RTT + "_sum", labels, sum_us / 1e6, now))
        for group, (n,) in sorted(self.interfaces.values.items()):
            samples.append(Sample(IFACE_RETRANS, group_labels(group, self.directed), n, now))
        for group, hist in sorted(self.histograms.items()):
            labels = group_labels(group, self.directed)
            cumulative = np.cumsum(hist[HIST_SLOT0:])
            count = int(cumulative[-1])
            for i, le in zip(BUCKET_SLOTS, BUCKETS, strict=True):
                samples.append(Sample(RTT + "_bucket", {**labels, "le": le_text(le)}, int(cumulative[i]), now))
            samples.append(Sample(RTT + "_bucket", {**labels, "le": "+Inf"}, count, now))
            samples.append(Sample(RTT + "_sum", labels, int(hist[HIST_SUM]) / 1e6, now))
            samples.append(Sample(RTT + "_count", labels, count, now))
        samples.append(Sample(LOST, {}, self.lost, now))
        return samples
