"""The columnar drain (xdp/flowtable.py) and Accumulator.add_table(): the same flows, counts and
series as the per-flow dict path, interval after interval.

Random traffic goes through both paths side by side: the dict path (FlowKey dict -> the source's
FlowId dict -> Accumulator.add) and the column path (raw kernel keys -> TableDeltas ->
Accumulator.add_table, which finds rows by raw key and decodes only new keys). Everything an
accumulator exports is compared after every interval, through the cases where a raw key is not
one flow for ever: a link recreated under its name within an interval (two ifindexes, one
FlowId), an ifindex renamed, budget pressure, idle expiry and returning tombstones.
"""

import random

import numpy as np
import pytest

from xtrace_agent.accumulator import Accumulator
from xtrace_agent.collectors.xdp import XdpCollector
from xtrace_agent.config import AgentConfig
from xtrace_agent.flows import other_of
from xtrace_agent.health import Health
from xtrace_agent.stages import FlowKey
from xtrace_agent.xdp.flowtable import FlowTable, TableDeltas

# the kernel key's fields as the compile child reports them (xdp.layout.dtype_of), padding included
KEY = np.dtype({"names": ["ifindex", "src", "dst", "src_port", "dst_port", "protocol", "ip_version",
                          "traffic_type", "rdma_opcode", "dest_qp"],
                "formats": ["<u4", "V16", "V16", "<u2", "<u2", "u1", "u1", "u1", "u1", "<u4"],
                "offsets": [0, 4, 20, 36, 38, 40, 41, 42, 43, 44], "itemsize": 48})
V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def keys(rows: list[tuple]) -> np.ndarray:
    """(ifindex, src host, version, sport, traffic type, qp) rows as kernel keys."""
    out = np.zeros(len(rows), KEY)
    for i, (ifindex, host, version, sport, ttype, qp) in enumerate(rows):
        src = V4_MAPPED + bytes((10, 0, 0, host)) if version == 4 else bytes((0x20, 0x01, 0x0d, 0xb8)) + b"\0" * 11 + bytes((host,))
        dst = V4_MAPPED + bytes((10, 0, 1, 1)) if version == 4 else bytes((0x20, 0x01, 0x0d, 0xb8)) + b"\0" * 11 + b"\x01"
        out[i] = (ifindex, src, dst, sport, 4791 if ttype == 1 else 9999, 17, version, ttype, 4 if ttype == 1 else 0, qp)
    return out


class Names:
    """The source's ifindex -> group naming, changed by the test as links come and go."""

    def __init__(self):
        self.names = {1: "eth0", 2: "eth1", 3: "eth2"}

    def group(self, ifindex: int) -> tuple[str, str]:
        return (self.names.get(ifindex, f"ifindex{ifindex}"), "ingress")


def exported(acc: Accumulator, now: float) -> tuple:
    series, packets, bytes_, moved = acc.columns(now)
    keys_ = [s for s in series]  # descriptions are the keys themselves here
    moved = moved[0], moved[1].tolist(), moved[2].tolist()
    return (list(zip(keys_, packets.tolist(), bytes_.tolist(), strict=True)), moved,
            acc.folded_flows, acc.expired_flows, acc.retired_flows, sorted(acc.keys()))


def test_a_table_decodes_to_the_flow_keys_the_dict_path_made():
    table = FlowTable(keys([(1, 5, 4, 1000, 0, 0), (1, 6, 6, 1001, 1, 77)]), np.array([3, 4]), np.array([300, 400]))
    assert dict(table) == {
        FlowKey(1, "10.0.0.5", "10.0.1.1", 1000, 9999, 17, "ethernet", 0, 0): (3, 300),
        FlowKey(1, "2001:db8::6", "2001:db8::1", 1001, 4791, 17, "roce", 4, 77): (4, 400),
    }
    assert table.decode([1]) == [next(iter(FlowTable(keys([(1, 6, 6, 1001, 1, 77)]), np.array([4]),
                                                     np.array([400])).decode()))]


def test_a_key_in_two_chunks_is_one_row_with_both_counts():
    table = FlowTable(keys([(1, 5, 4, 1000, 0, 0), (1, 6, 4, 1000, 0, 0), (1, 5, 4, 1000, 0, 0)]),
                      np.array([1, 2, 3]), np.array([10, 20, 30]))
    assert list(table.values()) == [(4, 40), (2, 20)] and len(table.packets) == 2


def test_a_key_repeated_in_one_pass_still_counts_once_with_both_counts():
    """The drain's table trusts one pass over a kernel table to hold each key once (one_pass); if a
    key came twice anyway, the accumulator sees one row found twice and takes the merging dict path."""
    names = Names()
    acc = Accumulator(100, 60.0, lambda key: ("other",) + key[:1])
    rows = [(1, 5, 4, 1000, 0, 0), (1, 6, 4, 1000, 0, 0)]
    acc.add_table(TableDeltas(FlowTable(keys(rows), np.array([1, 2]), np.array([10, 20]), one_pass=True),
                              names.group), now=1.0)
    twice = FlowTable(keys([*rows, rows[0]]), np.array([1, 2, 3]), np.array([10, 20, 30]), one_pass=True)
    acc.add_table(TableDeltas(twice, names.group), now=2.0)
    series, packets, bytes_, _ = acc.columns()
    assert sorted(zip(packets.tolist(), bytes_.tolist(), strict=True)) == [(4, 40), (5, 50)]  # 2+2, 1+1+3


def test_columns_and_dicts_give_the_same_series_through_renames_recreations_and_pressure():
    rng = random.Random(23)
    names = Names()
    source = XdpCollector(AgentConfig(interfaces=()), Health())
    by_dict = Accumulator(25, idle_timeout=4, other_of=other_of, describe=lambda key: key, memory_flows=60)
    by_table = Accumulator(25, idle_timeout=4, other_of=other_of, describe=lambda key: key, memory_flows=60)
    for t in range(80):
        if t == 20:
            names.names[2] = "eth9"  # ifindex 2 renamed: its raw keys are other flows now
        if t == 40:
            names.names[4] = "eth0"  # eth0 recreated: ifindex 4 under the old name, both this interval
        if t == 41:
            del names.names[1]
        ifindexes = [1, 2, 3] + ([4] if t >= 40 else [])
        rows = {(rng.choice(ifindexes), rng.randint(1, 30), rng.choice((4, 6)), rng.randint(1, 3),
                 rng.choice((0, 1)), rng.randint(0, 1)) for _ in range(rng.randint(0, 45))}
        if t == 40:
            rows |= {(1, 7, 4, 1, 0, 0), (4, 7, 4, 1, 0, 0)}  # one flow, seen on both ifindexes
        if 60 <= t < 70:
            rows = {(3, host, 4, 1, 0, 0) for host in (1, 2, 3)}  # a quiet spell: the others expire
        steady = {(i, host, 4, 9, 0, 0) for i in ifindexes for host in (1, 2)}  # busy: they keep their series
        if not 60 <= t < 70:
            rows |= steady
        rows = sorted(rows)
        packets = np.array([50 if row in steady else rng.randint(1, 9) for row in rows], np.int64)
        table = FlowTable(keys(rows) if rows else np.zeros(0, KEY), packets, packets * 100)
        source._group = names.group
        as_dict = source._deltas(dict(table))
        deltas = TableDeltas(table, names.group)
        assert dict(deltas) == as_dict
        by_dict.add(as_dict, now=t)
        by_table.add_table(deltas, now=t)
        by_dict.expire(now=t)
        by_table.expire(now=t)
        assert exported(by_table, t) == exported(by_dict, t), t
    assert by_dict.retired_flows and by_dict.expired_flows and by_dict.folded_flows  # every case was met
    assert len(by_table._index)  # and the rows were found by kernel key, not by the dict path


def test_group_counts_are_kernel_entries_per_group():
    names = Names()
    names.names[4] = "eth0"
    table = FlowTable(keys([(1, 5, 4, 1, 0, 0), (4, 6, 4, 1, 0, 0), (2, 5, 4, 1, 0, 0)]), np.ones(3, np.int64),
                      np.ones(3, np.int64))
    assert TableDeltas(table, names.group).group_counts() == {("eth0", "ingress"): 2, ("eth1", "ingress"): 1}


def test_grouping_few_ifindex_words_is_np_unique():
    from xtrace_agent.xdp.flowtable import grouped

    rng = np.random.default_rng(3)
    egress = np.uint32(1 << 31)  # the direction bit of an ifindex word
    for distinct in (0, 1, 2, 5, 31, 32, 33, 200):
        choices = (rng.choice(1000, size=max(distinct, 1), replace=False).astype(np.uint32) | egress * (
            rng.random(max(distinct, 1)) < 0.5))[:distinct]
        values = rng.choice(choices, size=5000) if distinct else np.zeros(0, np.uint32)
        uniq, inverse = grouped(values)
        expected_uniq, expected_inverse = np.unique(values, return_inverse=True)
        assert uniq.tolist() == expected_uniq.tolist() and inverse.tolist() == expected_inverse.tolist(), distinct
        assert uniq.dtype == values.dtype


def test_a_steady_interval_hands_out_the_same_lists_and_a_new_one_when_other_flows_moved():
    """columns() gives the sinks the list objects of the last interval while they would hold the
    same (the encoder recognises them at once), never when the flows that moved are others."""
    acc = Accumulator(10, 100.0, lambda key: ("other",) + key[:1], describe=lambda key: key)
    a, b = ("g", "a"), ("g", "b")
    acc.add({a: (1, 10), b: (1, 10)}, now=1.0)
    series1, _, _, moved1 = acc.columns(1.0)
    acc.add({a: (1, 10), b: (2, 20)}, now=2.0)
    series2, _, _, moved2 = acc.columns(2.0)
    assert series2 is series1 and moved2[0] is moved1[0] and moved2[0] == [a, b]
    assert moved2[1].tolist() == [1, 2]
    acc.add({b: (3, 30)}, now=3.0)  # a moved nothing: the same flows, other movers
    series3, packets, _, moved3 = acc.columns(3.0)
    assert series3 is series1 and moved3[0] == [b] and moved3[1].tolist() == [3]
    assert packets.tolist()[:2] == [2, 6]


def test_flows_of_the_dict_path_that_expire_before_any_table_leave_the_columns_path_working():
    """After a fallback to add() (or a rename that cleared the key index) flows retire with no key
    indexed yet; the next table must still be accounted, as the dict path does."""
    names = Names()
    row = [(1, 5, 4, 1000, 0, 0)]
    by_table = Accumulator(10, 4.0, other_of, describe=lambda key: key)
    by_dict = Accumulator(10, 4.0, other_of, describe=lambda key: key)
    first = TableDeltas(FlowTable(keys(row), np.array([2]), np.array([20]), one_pass=True), names.group)
    for acc in (by_table, by_dict):
        acc.add(dict(first), now=0.0)
        acc.expire(now=10.0)  # idle past the timeout: retired, its row dropped
    later = TableDeltas(FlowTable(keys([(1, 6, 4, 1000, 0, 0)]), np.array([3]), np.array([30]), one_pass=True),
                        names.group)
    by_table.add_table(later, now=11.0)
    by_dict.add(dict(later), now=11.0)
    assert exported(by_table, 11.0) == exported(by_dict, 11.0)


@pytest.mark.parametrize("seed", range(8))
def test_random_renames_recreations_quiet_spells_and_pressure_give_the_dict_paths_series(seed):
    """The same comparison as above with the events at random: links renamed (the key index
    cleared), an ifindex named like another (one flow on two keys: the dict path), intervals with
    no traffic or only new flows (the rows expire, the index drops them), a budget that folds."""
    rng = random.Random(seed)
    names = Names()
    source = XdpCollector(AgentConfig(interfaces=()), Health())
    by_dict = Accumulator(12, idle_timeout=3, other_of=other_of, describe=lambda key: key, memory_flows=30)
    by_table = Accumulator(12, idle_timeout=3, other_of=other_of, describe=lambda key: key, memory_flows=30)
    for t in range(60):
        event = rng.random()
        if event < 0.08:
            names.names[rng.choice((1, 2, 3))] = f"eth{rng.randint(0, 5)}"  # renamed, maybe onto another's name
        elif event < 0.12:
            names.names = {1: "eth0", 2: "eth1", 3: "eth2"}
        quiet = rng.random() < 0.15
        rows = set() if quiet else {(rng.choice((1, 2, 3)), rng.randint(1, 20), rng.choice((4, 6)), rng.randint(1, 2),
                                     rng.choice((0, 1)), 0) for _ in range(rng.randint(0, 25))}
        rows = sorted(rows)
        packets = np.array([rng.randint(1, 9) for _ in rows], np.int64)
        table = FlowTable(keys(rows) if rows else np.zeros(0, KEY), packets, packets * 100, one_pass=True)
        source._group = names.group
        as_dict = source._deltas(dict(table))
        by_dict.add(as_dict, now=t)
        by_table.add_table(TableDeltas(table, names.group), now=t)
        by_dict.expire(now=t)
        by_table.expire(now=t)
        assert exported(by_table, t) == exported(by_dict, t), (seed, t)
