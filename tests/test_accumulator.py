"""Cumulative counters from deltas: budget folding, idle expiry, never going backwards."""

from xtrace_agent.accumulator import Accumulator


def other(key):
    return (key[0], "other")


def test_deltas_accumulate():
    acc = Accumulator(10, 60, other)
    acc.add({("eth0", "a"): (1, 100)}, now=0)
    acc.add({("eth0", "a"): (2, 200), ("eth0", "b"): (1, 50)}, now=1)
    assert {k: (p, b) for k, p, b, _ in acc.items()} == {("eth0", "a"): (3, 300), ("eth0", "b"): (1, 50)}


def test_budget_folds_new_flows_into_other_per_interface():
    acc = Accumulator(2, 60, other)
    acc.add({("eth0", "a"): (1, 10), ("eth0", "b"): (1, 10)}, now=0)
    acc.add({("eth0", "c"): (5, 500), ("eth1", "d"): (1, 1), ("eth0", "a"): (1, 10)}, now=1)
    got = {k: (p, b, o) for k, p, b, o in acc.items()}
    assert got[("eth0", "other")] == (5, 500, True)
    assert got[("eth1", "other")] == (1, 1, True)
    assert got[("eth0", "a")] == (2, 20, False)
    assert acc.folded_flows == 2
    # the idle flow b gave way (its value kept for its return); nothing is lost
    assert ("eth0", "b") not in got and acc._tombstones[("eth0", "b")] == (1, 10)
    assert sum(p for _, p, _, _ in acc.items()) + 1 == 1 + 1 + 5 + 1 + 1


def test_expired_flow_resumes_from_its_last_value():
    acc = Accumulator(10, idle_timeout=5, other_of=other)
    acc.add({("eth0", "a"): (3, 300)}, now=0)
    assert acc.expire(now=10) == 1 and len(acc) == 0
    acc.add({("eth0", "a"): (1, 100)}, now=11)
    assert [(p, b) for _, p, b, _ in acc.items()] == [(4, 400)]  # never backwards


def test_tombstones_are_bounded():
    acc = Accumulator(2, idle_timeout=1, other_of=other)
    for i in range(5):
        acc.add({("eth0", str(i)): (1, 1)}, now=i * 10)
        acc.expire(now=i * 10 + 5)
    assert len(acc._tombstones) <= 2


def test_under_pressure_the_quietest_flows_give_way_to_busier_ones():
    acc = Accumulator(2, 60, other)
    acc.add({("eth0", "busy"): (100, 100_000), ("eth0", "quiet"): (1, 60)}, now=0)
    acc.add({("eth0", "busy"): (100, 100_000), ("eth0", "quiet"): (1, 60), ("eth0", "new"): (90, 90_000)}, now=1)
    # this interval the newcomer was folded, and the quietest flow retired to make room
    got = {k[1]: (p, b) for k, p, b, _ in acc.items()}
    assert got == {"busy": (200, 200_000), "other": (90, 90_000)}
    acc.add({("eth0", "busy"): (1, 100), ("eth0", "new"): (90, 90_000), ("eth0", "quiet"): (1, 60)}, now=2)
    got = {k[1]: (p, b) for k, p, b, _ in acc.items()}
    assert got["new"] == (90, 90_000) and got["busy"] == (201, 200_100)
    # the quiet flow was folded this time (no room); its earlier value waits as a tombstone
    assert got["other"] == (91, 90_060)
    # nothing lost: all series together hold every packet
    assert sum(p for p, _ in got.values()) + acc._tombstones[("eth0", "quiet")][0] == 100 + 1 + 100 + 1 + 90 + 1 + 90 + 1
