"""Flow columns are the per-sample path in another shape: the same bodies byte for byte, the same
entries (rescue, spool), the same samples in the same order, slices that stay whole."""

import pytest

from tests.remote_write import remote_pb2
from xtrace_agent.columns import Column, FlowBlock, FlowSeries
from xtrace_agent.flows import directed_flow_labels, flow_labels
from xtrace_agent.samples import Report, Sample
from xtrace_agent.sinks import prompb

TS = 1_767_000_000.123


def flows(n: int, labels_of=flow_labels) -> list[FlowSeries]:
    """FlowIds of every shape: IPv4 and IPv6, TCP and UDP, RoCE with its BTH fields."""
    out = []
    for i in range(n):
        roce = i % 5 == 0
        key = (("eth0", "ingress"), f"198.51.100.{i % 250}", "2001:db8::1" if i % 3 else "192.0.2.1", 1000 + i,
               443, 6 if i % 2 else 17, "roce" if roce else "ethernet", 10 if roce else None, i if roce else None)
        out.append(FlowSeries(key, labels_of))
    return out


EXTRAS = [
    {"node": "n1", "monitor": "m", "namespace": "ns"},
    {"Zone": "a", "node": "n1"},  # sorts before __name__
    {"interface": "not-this-one", "node": "n1"},  # a flow's own label wins
    {"node": ""},  # an empty label is an absent one
    {},
]


@pytest.mark.parametrize("extra", EXTRAS)
def test_a_column_encodes_exactly_as_its_samples(extra):
    series = flows(300)
    column = Column("xtrace_network_packets_total", series, [i * 7 for i in range(300)], TS)
    fast, slow = prompb.SeriesEncoder(extra), prompb.SeriesEncoder(extra)
    body = fast.encode_samples(column)
    assert body == slow.encode_samples(list(column))
    assert fast.entries(column[10:20]) == slow.entries(list(column)[10:20])
    decoded = remote_pb2.WriteRequest.FromString(body)  # the protobuf library reads it
    assert len(decoded.timeseries) == 300 and decoded.timeseries[5].samples[0].value == 35


def test_two_encoders_with_different_labels_each_get_their_own_bytes():
    series = flows(20)
    column = Column("xtrace_network_bytes_total", series, list(range(20)), TS)
    a, b = prompb.SeriesEncoder({"node": "a"}), prompb.SeriesEncoder({"node": "b"})
    for _ in range(2):  # the cache of one must never serve the other
        assert a.encode_samples(column) == prompb.SeriesEncoder({"node": "a"}).encode_samples(list(column))
        assert b.encode_samples(column) == prompb.SeriesEncoder({"node": "b"}).encode_samples(list(column))


def test_a_block_gives_the_samples_in_the_per_sample_order_and_columns_with_the_same_values():
    series = flows(6, directed_flow_labels)
    block = FlowBlock(("p", "b"), ("gp", "gb"), TS)
    for i, s in enumerate(series):
        block.series.append(s)
        block.packets.append(10 + i)
        block.bytes.append(100 + i)
        if i % 2:
            block.moved.append(s)
            block.moved_packets.append(i)
            block.moved_bytes.append(i * 10)
    expected = []
    for i, s in enumerate(series):
        expected += [Sample("p", s.labels, 10 + i, TS), Sample("b", s.labels, 100 + i, TS)]
        if i % 2:
            expected += [Sample("gp", s.labels, i, TS), Sample("gb", s.labels, i * 10, TS)]
    report = Report(TS, [Sample("x", {}, 1, TS)], flows=block)
    assert report.samples == expected + [Sample("x", {}, 1, TS)]
    assert len(block) == len(expected)
    from_columns = sorted((s.name, tuple(s.labels.items()), s.value) for c in block.columns() for s in c)
    assert from_columns == sorted((s.name, tuple(s.labels.items()), s.value) for s in expected)
    assert sum(map(len, report.batches())) == len(expected) + 1


def sent(encoder: prompb.SeriesEncoder, column: Column, step: int) -> list[bytes]:
    """The bodies the sender makes of a queued column: slices of `step` series, each encoded."""
    return [encoder.encode_samples(column[i:i + step]) for i in range(0, len(column), step)]


def reference(extra: dict, column: Column, step: int) -> list[bytes]:
    """The same bodies through the per-sample path (one Sample object per value, a fresh encoder)."""
    samples = list(column)
    return [prompb.SeriesEncoder(extra).encode_samples(samples[i:i + step]) for i in range(0, len(samples), step)]


@pytest.mark.parametrize("extra", EXTRAS)
def test_interval_after_interval_the_cached_flow_lists_give_the_per_sample_bytes(extra):
    """The encoder keeps what it made of a flow list (tails, sizes) while the next intervals bring
    the same flows: reused through new list objects and slices, remade when flows come and go or
    when a list is changed in place, never served to another list."""
    import numpy as np

    series = flows(120)
    encoder = prompb.SeriesEncoder(extra)
    values = np.arange(120, dtype=np.int64) * 1_000_003 + (1 << 60)  # past 2**53: the double rounds alike
    for interval, flows_now in enumerate([series, list(series), list(series), series[7:] + flows(3),
                                          [*series[:50], *series[60:]]]):
        vals = values[:len(flows_now)] + interval
        for name in ("xtrace_network_packets_total", "xtrace_network_bytes_total"):  # one list, two columns
            column = Column(name, flows_now, vals, TS + 5 * interval)
            for step in (1000, 32, 7):
                assert sent(encoder, column, step) == reference(extra, column, step), (interval, step)
    # a list changed in place after the encoder saw it: the old tails must not be used for it
    changing = list(series)
    column = Column("xtrace_network_packets_total", changing, list(range(120)), TS)
    assert sent(encoder, column, 50) == reference(extra, column, 50)
    changing.reverse()
    column = Column("xtrace_network_packets_total", changing, list(range(120)), TS)
    assert sent(encoder, column, 50) == reference(extra, column, 50)
    parts = [column[i:i + 40] for i in range(0, 120, 40)]  # sliced (queued), then its list changes
    expected = [prompb.SeriesEncoder(extra).encode_samples(list(p)) for p in parts]
    changing.reverse()
    assert [prompb.SeriesEncoder(extra).encode_samples(p) for p in parts] == expected
    assert [encoder.encode_samples(p) for p in parts] == expected
    column = Column("xtrace_network_packets_total", changing, list(range(120)), TS)
    decoded = remote_pb2.WriteRequest.FromString(sent(encoder, column, 500)[0])
    assert [ts.samples[0].value for ts in decoded.timeseries] == list(range(120))


def test_sizes_across_a_varint_length_and_values_of_every_kind_encode_as_their_samples():
    """Label sets whose TimeSeries sizes straddle 127/128 (one- and two-byte varints in one body: the
    three-piece path) and values as floats, NaN, huge and negative numbers."""
    import numpy as np

    short = [FlowSeries((i,), lambda key: {"f": "x" * key[0]}) for i in range(60, 140, 3)]
    encoder = prompb.SeriesEncoder({})
    for values in ([float(i) / 3 for i in range(len(short))], np.full(len(short), float("nan")),
                   [(1 << 63) - i for i in range(len(short))], [-i for i in range(len(short))]):
        column = Column("m", short, values, TS)
        for step in (100, 5):  # a slice of only short or only long sets takes the two-piece path
            assert sent(encoder, column, step) == reference({}, column, step)
