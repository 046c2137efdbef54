"""One interval's flow series held per metric (columns), not as one Sample object per value.

At 100k exported flows an interval has up to 400k flow values. As Sample tuples they cost about
100 bytes each while queued and a Python-level step each to make and to encode; in columns they
are per metric the flows' `FlowSeries` (a list) and their values (the accumulator's int64 array),
and the remote-write encoder writes them with no Python step per series, each flow's label bytes
encoded once for its lifetime (prompb.SeriesEncoder.encode_column). Sinks that want samples (stdout, /metrics, the legacy text
endpoint) iterate a column, or read Report.samples, and get exactly the samples the per-sample
path made, in the same order.

    FlowSeries   a flow's identity (its FlowId) and its wire bytes, cached by the first encoder
    Column       (name, [FlowSeries], [value], timestamp): one metric of one interval; sliceable
    FlowBlock    an interval's flows: counters and, with flow gauges, what moved in the interval
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from xtrace_agent.samples import Sample

_new = tuple.__new__


class FlowSeries:
    """A flow's series identity: its key, how to make its labels, and (for the one encoder that
    asked first) its label bytes split around `__name__` (prompb.SeriesEncoder.prime)."""

    __slots__ = ("key", "labels_of", "wire_key", "head", "tail", "size")

    def __init__(self, key: tuple, labels_of: Callable[[tuple], dict[str, str]]):
        self.key = key
        self.labels_of = labels_of
        self.wire_key = None  # the encoder extra-label set the cached bytes were made for
        self.head = self.tail = b""  # encoded labels sorting before / after __name__
        self.size = 0  # len(head) + len(tail)

    @property
    def labels(self) -> dict[str, str]:
        """The series' labels (a new dict each time: flows keep no dict for their lifetime)."""
        return self.labels_of(self.key)


class Column:
    """One metric's values of one interval: a sequence of samples for the sinks that want them.

    `values` is a list or a numpy array (the accumulator's columns); iterating yields Python
    numbers either way. A slice remembers where it came from (`origin`: the whole column's series
    list and the slice's first index), so the encoder reuses what it made for the whole list."""

    __slots__ = ("name", "series", "values", "timestamp", "origin")

    def __init__(self, name: str, series: list[FlowSeries], values, timestamp: float,
                 origin: tuple[list[FlowSeries], int] | None = None):
        self.name, self.series, self.values, self.timestamp = name, series, values, timestamp
        self.origin = (series, 0) if origin is None else origin

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, part: slice) -> Column:
        start, _stop, step = part.indices(len(self.values))
        if step != 1:
            raise ValueError("a column is sliced in order")
        full, at = self.origin
        return Column(self.name, self.series[part], self.values[part], self.timestamp, (full, at + start))

    def __iter__(self) -> Iterator[Sample]:
        name, ts = self.name, self.timestamp
        for s, v in zip(self.series, python_values(self.values), strict=True):
            yield _new(Sample, (name, s.labels, v, ts))


def python_values(values) -> list:
    """A column's values as Python numbers (a numpy array's tolist(); a list as it is)."""
    tolist = getattr(values, "tolist", None)
    return values if tolist is None else tolist()


class FlowBlock:
    """An interval's exported flows (and `other` entries): cumulative counters for every one and,
    where `gauge_names` is given, the interval's movement of those that moved (`moved`, in the
    order of `series`)."""

    __slots__ = ("names", "gauge_names", "timestamp", "series", "packets", "bytes", "moved", "moved_packets",
                 "moved_bytes")

    def __init__(self, names: tuple[str, str], gauge_names: tuple[str, str] | None, timestamp: float):
        self.names, self.gauge_names, self.timestamp = names, gauge_names, timestamp
        self.series: list[FlowSeries] = []
        self.packets: list[int] = []  # or numpy arrays (the accumulator's)
        self.bytes: list[int] = []
        self.moved: list[FlowSeries] = []
        self.moved_packets: list[int] = []
        self.moved_bytes: list[int] = []

    def __len__(self) -> int:
        return 2 * len(self.series) + (2 * len(self.moved) if self.gauge_names else 0)

    def columns(self) -> list[Column]:
        """Metric by metric: what the remote-write queue holds and the encoder walks."""
        ts, (p_name, b_name) = self.timestamp, self.names
        out = [Column(p_name, self.series, self.packets, ts), Column(b_name, self.series, self.bytes, ts)]
        if self.gauge_names and self.moved:
            out.append(Column(self.gauge_names[0], self.moved, self.moved_packets, ts))
            out.append(Column(self.gauge_names[1], self.moved, self.moved_bytes, ts))
        return out

    def samples(self) -> list[Sample]:
        """The same samples, flow by flow, in the order the per-sample path made them."""
        out: list[Sample] = []
        append = out.append
        (p_name, b_name), ts = self.names, self.timestamp
        gp_name, gb_name = self.gauge_names or (None, None)
        moved = iter(zip(self.moved, python_values(self.moved_packets), python_values(self.moved_bytes),
                         strict=True)) if gp_name else iter(())
        nxt = next(moved, None)
        for s, p, b in zip(self.series, python_values(self.packets), python_values(self.bytes), strict=True):
            labels = s.labels
            append(_new(Sample, (p_name, labels, p, ts)))
            append(_new(Sample, (b_name, labels, b, ts)))
            if nxt is not None and nxt[0] is s:
                append(_new(Sample, (gp_name, labels, nxt[1], ts)))
                append(_new(Sample, (gb_name, labels, nxt[2], ts)))
                nxt = next(moved, None)
        return out
