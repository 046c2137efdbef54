"""The backlog on its own (sinks/backlog.py): bounded queue, oldest dropped, newest value per series rescued."""

from __future__ import annotations

from xtrace_agent.samples import Sample
from xtrace_agent.sinks import prompb
from xtrace_agent.sinks.backlog import Backlog

ENCODER = prompb.SeriesEncoder({"node": "n"})


def samples(step: int, series: range) -> list[Sample]:
    return [Sample("xtrace_network_packets_total", {"src_port": str(i)}, float(step * 100 + i), step) for i in series]


def key(i: int) -> bytes:
    return next(iter(ENCODER.entries(samples(0, range(i, i + 1)))))[0]


def test_under_the_limit_nothing_is_dropped_and_take_returns_reports_in_order():
    b = Backlog(100, ENCODER.entries)
    first, second = samples(0, range(10)), samples(1, range(10))
    assert b.add(first) == 0 and b.add(second) == 0
    assert b.queued == 20 and b.pending() and not b.rescued
    assert b.take() == [first, second]
    assert b.queued == 0 and not b.pending()


def test_past_the_limit_the_oldest_go_and_each_series_keeps_its_newest_value():
    b = Backlog(15, ENCODER.entries)
    b.add(samples(0, range(10)))  # series 0..9 at step 0
    lost = b.add(samples(1, range(5, 15)))  # 20 queued: the 5 oldest (series 0..4, step 0) go
    assert lost == 0  # each was the only point of its series so far: rescued, not lost
    assert b.queued == 15
    assert set(b.rescued) == {key(i) for i in range(5)}
    assert b.rescued[key(3)] == (3.0, 0)
    queued = [s for part in b.take() for s in part]
    assert [s.labels["src_port"] for s in queued[:5]] == ["5", "6", "7", "8", "9"]  # a report cut in two


def test_a_second_drop_of_one_series_counts_the_older_point_as_lost():
    b = Backlog(5, ENCODER.entries)
    b.add(samples(0, range(5)))
    b.add(samples(1, range(5)))  # step 0 dropped into the rescue map
    assert b.add(samples(2, range(5))) == 5  # step 1 dropped: step 0's points are lost, step 1's kept
    assert b.rescued[key(2)] == (102.0, 1000)  # ms: the newest dropped point wins
    assert b.rescue(key(2), 1.0, 0) == 1 and b.rescued[key(2)] == (102.0, 1000)  # older never replaces


def test_put_back_returns_parts_to_the_front_in_their_order():
    b = Backlog(100, ENCODER.entries)
    b.add(samples(2, range(3)))
    parts = [samples(0, range(2)), samples(1, range(2))]
    b.put_back(parts)
    assert b.queued == 7
    assert b.take() == [*parts, samples(2, range(3))]


def test_delivered_keeps_a_value_rescued_after_the_snapshot():
    b = Backlog(100, ENCODER.entries)
    b.rescue(key(0), 1.0, 10)
    b.rescue(key(1), 2.0, 10)
    snapshot = b.rescued_snapshot()
    b.rescue(key(1), 3.0, 20)  # newer, arrived while the snapshot was on the wire
    assert not b.delivered(snapshot)
    assert b.rescued == {key(1): (3.0, 20)}
    assert b.delivered(b.rescued_snapshot())


def test_rescue_body_takes_a_spooled_block_apart():
    b = Backlog(100, ENCODER.entries)
    series = prompb.group(list(ENCODER.entries(samples(0, range(3)) + samples(1, range(3)))))
    body = prompb.compress(prompb.encode_write_request(series), "zstd")
    assert b.rescue_body(body) == 3  # two points per series, one kept
    assert b.rescued[key(1)] == (101.0, 1000)


def test_spill_policy():
    b = Backlog(100, ENCODER.entries)
    assert not b.spill_due(1e9, 30, closing=True)  # nothing queued: nothing to spill
    b.add(samples(0, range(10)))
    assert not b.spill_due(1.0, 30, closing=False)
    assert b.spill_due(30.0, 30, closing=False)  # the interval passed
    assert b.spill_due(0.0, 30, closing=True)  # shutting down
    b.add(samples(1, range(40)))
    assert b.spill_due(0.0, 30, closing=False)  # half full: spill before the queue starts dropping
    entries = b.take_entries()
    assert len(entries) == 50 and b.queued == 0
