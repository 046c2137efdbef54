"""The accounting stage of drops: what the drop program counted in one interval, turned into
cumulative per-flow and per-interface counters by the kernel's reason.

    EventsProgram.drain_drops() -> observe() -> DropsObserved (deltas) -> DropAccounting.report()

Conservation, per (interface, direction) and reason, at every report:
    sum of its flows + its `other` flow == xtrace_interface_drop_packets_total (and _bytes_total)
exactly. `other` holds the drops the program could not key by flow (non-IP, malformed), those
that found the drop table full, the flows over the drop series budget and those that stopped
being exported (idle, retired). Drops with no place at all (every table full) are counted in
xtrace_drop_lost_packets_total, outside every interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from xtrace_agent import datametrics as dm
from xtrace_agent.accumulator import Accumulator, Totals
from xtrace_agent.flows import flow_labels, group_labels, other_of
from xtrace_agent.samples import Sample
from xtrace_agent.stages import NO_BTH, Group
from xtrace_agent.xdp.events import DropsDrained

PACKETS = dm.DROP_PACKETS.name
BYTES = dm.DROP_BYTES.name
IFACE_PACKETS = dm.IFACE_DROP_PACKETS.name
IFACE_BYTES = dm.IFACE_DROP_BYTES.name
LOST_PACKETS = dm.DROP_LOST_PACKETS.name
LOST_BYTES = dm.DROP_LOST_BYTES.name

DropKey = tuple  # FlowLabels + (reason,)


class DropsObserved(NamedTuple):
    """Drops in one interval (deltas), by the labels they will carry."""

    flows: dict[DropKey, tuple[int, int]]
    other: dict[tuple[Group, str], tuple[int, int]]  # (group, reason): not keyable by flow
    lost: tuple[int, int]  # cumulative since the program was loaded
    watched: tuple[Group, ...] = ()


def observe(drained: DropsDrained, group_of: Callable[[int], Group], reason_name: Callable[[int], str],
            watched: tuple[Group, ...] = ()) -> DropsObserved:
    """Name the interfaces and reasons of a drain (ifindex words are the program's)."""
    flows: dict[DropKey, tuple[int, int]] = {}
    for (fk, reason), (p, b) in drained.flows.items():
        key = (group_of(fk[0]), *fk[1:7], *(fk[7:] if fk[6] == "roce" else NO_BTH), reason_name(reason))
        cur = flows.get(key, (0, 0))
        flows[key] = (cur[0] + p, cur[1] + b)
    other: dict[tuple[Group, str], tuple[int, int]] = {}
    untracked = [((i, r), c) for (i, _why, r), c in drained.untracked.items()]
    for (ifindex, reason), (p, b) in [*untracked, *drained.full.items()]:
        key = (group_of(ifindex), reason_name(reason))
        cur = other.get(key, (0, 0))
        other[key] = (cur[0] + p, cur[1] + b)
    return DropsObserved(flows, other, drained.lost, watched)


def drop_other(key: DropKey) -> DropKey:
    return (*other_of(key[:9]), key[9])


class DropAccounting:
    """Cumulative drop counters per flow and reason (under a series budget) and per interface."""

    def __init__(self, max_flows: int, idle_timeout: float, directed: bool):
        self.directed = directed
        describe = self._labels
        self.flows = Accumulator(max_flows, idle_timeout, drop_other, describe=describe)
        self.interfaces = Totals()  # (group, reason) -> [packets, bytes]
        self.lost = (0, 0)

    def _labels(self, key: DropKey) -> dict[str, str]:
        labels = flow_labels(key[:9], self.directed)
        labels["reason"] = key[9]
        return labels

    def report(self, seen: DropsObserved, now: float) -> list[Sample]:
        self.flows.add(seen.flows, now)
        for key, (p, b) in seen.flows.items():
            self.interfaces.add((key[0], key[9]), p, b)
        for (group, reason), (p, b) in seen.other.items():
            self.flows.add_other(drop_other((group, *(None,) * 8, reason)), p, b, now)
            self.interfaces.add((group, reason), p, b)
        self.flows.expire(now)
        self.lost = seen.lost
        samples = []
        for labels, p, b in self.flows.described():
            samples.append(Sample(PACKETS, labels, p, now))
            samples.append(Sample(BYTES, labels, b, now))
        for (group, reason), (p, b) in sorted(self.interfaces.values.items()):
            labels = {**group_labels(group, self.directed), "reason": reason}
            samples.append(Sample(IFACE_PACKETS, labels, p, now))
            samples.append(Sample(IFACE_BYTES, labels, b, now))
        samples.append(Sample(LOST_PACKETS, {}, self.lost[0], now))
        samples.append(Sample(LOST_BYTES, {}, self.lost[1], now))
        return samples
