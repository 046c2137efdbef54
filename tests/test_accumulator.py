"""Cumulative counters from deltas: budget folding, idle expiry, conservation, never going backwards.

Everything is checked through what the accumulator exports (items()): the series and their values.
"""

import random

from xtrace_agent.accumulator import Accumulator


def other(key):
    return (key[0], "other")


def exported(acc) -> dict:
    return {k: (p, b) for k, p, b, _ in acc.items()}


def total(acc) -> tuple[int, int]:
    values = exported(acc).values()
    return sum(p for p, _ in values), sum(b for _, b in values)


def test_deltas_accumulate():
    acc = Accumulator(10, 60, other)
    acc.add({("eth0", "a"): (1, 100)}, now=0)
    acc.add({("eth0", "a"): (2, 200), ("eth0", "b"): (1, 50)}, now=1)
    assert exported(acc) == {("eth0", "a"): (3, 300), ("eth0", "b"): (1, 50)}


def test_budget_folds_new_flows_into_other_per_interface():
    acc = Accumulator(2, 60, other)
    acc.add({("eth0", "a"): (1, 10), ("eth0", "b"): (1, 10)}, now=0)
    acc.add({("eth0", "c"): (5, 500), ("eth1", "d"): (1, 1), ("eth0", "a"): (1, 10)}, now=1)
    got = exported(acc)
    # the idle flow b gave way to the busier newcomer: its series stops, its counts are in `other`
    assert got == {("eth0", "a"): (2, 20), ("eth0", "other"): (1 + 5, 10 + 500), ("eth1", "other"): (1, 1)}
    assert acc.folded_flows == 2 and acc.retired_flows == 1
    assert total(acc) == (1 + 1 + 5 + 1 + 1, 10 + 10 + 500 + 1 + 10)


def test_an_expired_flow_hands_its_counts_to_other_and_its_return_stays_there():
    acc = Accumulator(10, idle_timeout=5, other_of=other)
    acc.add({("eth0", "a"): (3, 300)}, now=0)
    assert acc.expire(now=10) == 1 and len(acc) == 0
    assert exported(acc) == {("eth0", "other"): (3, 300)}
    acc.add({("eth0", "a"): (1, 100)}, now=11)
    # resuming a's series would count its 3 packets twice; restarting it at 1 would go backwards
    assert exported(acc) == {("eth0", "other"): (4, 400)}


def test_tombstones_are_bounded():
    """Past `memory_flows` remembered flows, the oldest is forgotten: it returns as a fresh series,
    while a recently expired flow is still folded into `other`."""
    acc = Accumulator(2, idle_timeout=1, other_of=other, memory_flows=3)
    for i in range(5):
        acc.add({("eth0", str(i)): (1, 1)}, now=i * 10)
        acc.expire(now=i * 10 + 5)
    acc.add({("eth0", "0"): (7, 7), ("eth0", "4"): (9, 9)}, now=100)
    got = exported(acc)
    assert got[("eth0", "0")] == (7, 7)  # forgotten: a new series
    assert ("eth0", "4") not in got and got[("eth0", "other")] == (5 + 9, 5 + 9)


def test_tombstones_are_forgotten_after_memory_seconds():
    acc = Accumulator(2, idle_timeout=1, other_of=other, memory_seconds=100)
    acc.add({("eth0", "a"): (1, 1)}, now=0)
    acc.expire(now=5)
    acc.add({("eth0", "a"): (1, 1)}, now=50)
    acc.expire(now=200)
    acc.add({("eth0", "a"): (2, 2)}, now=201)
    assert exported(acc)[("eth0", "a")] == (2, 2)


def test_under_pressure_the_quietest_flows_give_way_to_busier_ones():
    acc = Accumulator(2, 60, other)
    acc.add({("eth0", "busy"): (100, 100_000), ("eth0", "quiet"): (1, 60)}, now=0)
    acc.add({("eth0", "busy"): (100, 100_000), ("eth0", "quiet"): (1, 60), ("eth0", "new"): (90, 90_000)}, now=1)
    # the newcomer was folded this interval, and the quietest flow retired to make room
    assert {k[1]: v for k, v in exported(acc).items()} == {"busy": (200, 200_000), "other": (92, 90_120)}
    acc.add({("eth0", "busy"): (1, 100), ("eth0", "new"): (90, 90_000), ("eth0", "quiet"): (1, 60)}, now=2)
    got = {k[1]: v for k, v in exported(acc).items()}
    assert got == {"busy": (201, 200_100), "new": (90, 90_000), "other": (93, 90_180)}
    assert total(acc) == (100 + 1 + 100 + 1 + 90 + 1 + 90 + 1, 100_000 + 60 + 100_000 + 60 + 90_000 + 100 + 90_000 + 60)


def test_random_traffic_is_conserved_and_never_goes_backwards():
    rng = random.Random(9)
    acc = Accumulator(20, idle_timeout=3, other_of=other)  # 180 keys: within the tombstone memory
    sent = [0, 0]
    last: dict = {}
    for t in range(60):
        deltas = {}
        for _ in range(rng.randint(0, 40)):
            key = (rng.choice(["eth0", "eth1"]), rng.randint(0, 89))
            p = rng.randint(1, 5)
            old = deltas.get(key, (0, 0))
            deltas[key] = (old[0] + p, old[1] + 100 * p)
            sent[0] += p
            sent[1] += 100 * p
        acc.add(deltas, now=t)
        acc.expire(now=t)
        assert len(acc) <= 20
        assert total(acc) == tuple(sent)
        for key, value in exported(acc).items():
            assert value >= last.get(key, (0, 0)), key
            last[key] = value
