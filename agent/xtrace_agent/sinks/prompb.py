"""Prometheus remote write 1.0 bodies: a small hand-written protobuf encoder (and decoder).

Why hand-written rather than the `protobuf` library with code generated from remote.proto
(measured by bench/bench_remote_write.py, one core, snappy included):

    hand-written, labels cached per series    0.73 M samples/s (100k batch), 1.26 M (10k)
    protobuf 7 (upb), generated code           0.11 M samples/s (100k batch), 0.12 M (10k)

The library must build a Python message object per series, label and sample on every send and
then serialize them; almost all of that work repeats each interval, because a flow's labels
never change. Here a series' labels are encoded once (`SeriesEncoder.labels`, a cached `bytes`
that is also the series' identity), and each send only appends 16-18 bytes per sample. The wire
format is tiny (three messages, two field types), so the code stays short, and the tests decode
every body with the protobuf library and remote.proto as an independent check.

Bodies are compressed with snappy (Prometheus remote write) or zstd (VictoriaMetrics remote write,
negotiated by transport.py). Snappy must be the *block* format (`cramjam.snappy.compress_raw`); `cramjam.snappy.compress`
writes the framed format, which remote-write receivers reject.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from itertools import chain, repeat
from operator import attrgetter, is_

from xtrace_agent.columns import Column, FlowSeries, python_values

_DOUBLE = struct.Struct("<d")
_SAMPLE_PARTS: dict[int, struct.Struct] = {}  # timestamp length -> Sample's opening, its value, its timestamp
_WIRE_KEY, _HEAD, _TAIL, _SIZE = map(attrgetter, ("wire_key", "head", "tail", "size"))
_WIRE_KEYS: dict[tuple, tuple] = {}  # one object per distinct extra-label set (FlowSeries compare by identity)
_VARINT1 = [bytes([i]) for i in range(128)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take ten bytes, as the spec says."""
    if 0 <= n < 128:
        return _VARINT1[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_bytes(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + varint(len(data)) + data


def encode_labels(pairs: Iterable[tuple[str, str]]) -> bytes:
    """The repeated `labels` fields of a TimeSeries, for (name, value) pairs already sorted."""
    out = []
    for name, value in pairs:
        label = _field_bytes(0x0A, name.encode()) + _field_bytes(0x12, value.encode())
        out.append(_field_bytes(0x0A, label))
    return b"".join(out)


def series_pairs(name: str, labels: Mapping[str, str], extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """Sorted label pairs of one series: `extra` (added by the sink) unless the sample has the
    label itself, plus `__name__`; empty values are dropped (an empty label is an absent one)."""
    merged = {**extra, **labels, "__name__": name}
    return sorted((k, v) for k, v in merged.items() if v != "")


class SeriesEncoder:
    """Turns samples into `(labels_bytes, value, timestamp_ms)` entries and entries into bodies.

    `labels_bytes` is the encoded, sorted label set: cached per (name, labels) so a series is
    encoded once, and used as the series' identity (equal label sets give equal bytes).
    """

    def __init__(self, extra: Mapping[str, str] | None = None, cache_limit: int = 1_000_000):
        self.extra = dict(extra or {})
        self.cache_limit = cache_limit
        self._cache: dict[tuple, bytes] = {}
        key = tuple(sorted(self.extra.items()))
        self.wire_key = _WIRE_KEYS.setdefault(key, key)
        self._names: dict[str, bytes] = {}  # metric name -> its encoded __name__ label
        self._lists: list[_Flows] = []  # the flow lists last encoded (an interval's flows, those that moved)

    def labels(self, name: str, labels: Mapping[str, str]) -> bytes:
        key = (name, *labels.items())
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= self.cache_limit:
                self._cache.clear()  # flows churn: forget them all rather than track ages
            cached = self._cache[key] = encode_labels(series_pairs(name, labels, self.extra))
        return cached

    def encode_samples(self, samples: Iterable) -> bytes:
        """An uncompressed WriteRequest with one TimeSeries per sample, in the given order.

        The hot path (one interval, each series once): no grouping, and per sample only a cache
        lookup, one float pack and five byte strings joined at the end. A series that appears
        more than once becomes several TimeSeries, which receivers merge; the caller keeps
        each series' samples in time order.
        """
        if isinstance(samples, Column):
            return self.encode_column(samples)
        cache, labels_of, pack = self._cache, self.labels, _DOUBLE.pack
        tails: dict[float, tuple[bytes, bytes]] = {}
        heads: dict[int, bytes] = {}
        out: list[bytes] = []
        extend = out.extend
        for name, labels, value, seconds in samples:
            lb = cache.get((name, *labels.items()))
            if lb is None:
                lb = labels_of(name, labels)
            tail = tails.get(seconds)
            if tail is None:
                ts = varint(round(seconds * 1000))
                # TimeSeries field 2 (len) + Sample field 1 (double) ... Sample field 2 (varint).
                tail = tails[seconds] = (b"\x12" + _VARINT1[10 + len(ts)] + b"\x09", b"\x10" + ts)
            size = len(lb) + 11 + len(tail[1])
            head = heads.get(size)
            if head is None:
                head = heads[size] = b"\x0a" + varint(size)
            extend((head, lb, tail[0], pack(value), tail[1]))
        return b"".join(out)

    def entries(self, samples: Iterable) -> list[tuple[bytes, float, int]]:
        """Samples (name, labels, value, seconds) -> entries with millisecond timestamps."""
        if isinstance(samples, Column):
            self._prime_all(samples.series)
            name, ts = self._name_label(samples.name), round(samples.timestamp * 1000)
            return [(s.head + name + s.tail, v, ts) for s, v in zip(samples.series, python_values(samples.values), strict=True)]
        lab = self.labels
        return [(lab(s[0], s[1]), s[2], round(s[3] * 1000)) for s in samples]

    # --- flow columns: each flow's label bytes made once for its lifetime --------------------------
    def prime(self, series: FlowSeries) -> None:
        """Cache a flow's label bytes for this encoder's extra labels: the sorted label set split
        around `__name__` (the only label its series differ in), so head + __name__ + tail is
        exactly labels(name, series.labels) for every metric name."""
        pairs = series_pairs("-", series.labels, self.extra)
        i = next(i for i, (k, _) in enumerate(pairs) if k == "__name__")
        series.head, series.tail = encode_labels(pairs[:i]), encode_labels(pairs[i + 1:])
        series.size = len(series.head) + len(series.tail)
        series.wire_key = self.wire_key

    def _prime_all(self, series: list[FlowSeries]) -> None:
        key = self.wire_key
        if not all(map(is_, map(_WIRE_KEY, series), repeat(key))):  # new flows, or another extra set
            for s in series:
                if s.wire_key is not key:
                    self.prime(s)

    def _name_label(self, name: str) -> bytes:
        label = self._names.get(name)
        if label is None:
            label = self._names[name] = encode_labels([("__name__", name)])
        return label

    def _flows(self, column: Column) -> _Flows:
        """What the encoder needs of a column's flows, made once per flow list for all of its
        columns and slices, and kept while the next interval brings the same flows (a steady
        node: an element-by-element identity check of the list, no step per flow in Python)."""
        full, start = column.origin
        for i, known in enumerate(self._lists):
            if known.source is full or (len(known.series) == len(full) and known.series == full):
                if known.part(start, len(column.series)) == column.series:  # not changed since
                    known.source = full
                    self._lists.insert(0, self._lists.pop(i))
                    return known
        if full[start:start + len(column.series)] != column.series:  # the slice's list changed since: alone
            full, start = column.series, 0
        made = _Flows(self, full)
        self._lists = [made, *self._lists[:1]]
        return made

    def encode_column(self, column: Column) -> bytes:
        """An uncompressed WriteRequest for one flow column: as encode_samples() would make it, with
        no Python step per series.

        TimeSeries = 0x0a <size> [head] __name__ tail | Sample: 0x12 <len> 0x09 <double> 0x10 <ts>.
        The usual case (no extra label sorts before __name__, every size a varint of one length)
        joins two pieces per series: the flow's cached tail, and one numpy-made piece holding its
        Sample and the opening of the next TimeSeries (the `glue`, see _glued()). Else three pieces
        per series from dicts and struct packs (_pieces())."""
        series = column.series
        if not series:
            return b""
        flows = self._flows(column)
        at = column.origin[1] if flows.source is column.origin[0] else 0
        ts = b"\x10" + varint(round(column.timestamp * 1000))
        name = self._name_label(column.name)
        fixed = len(name) + 11 + len(ts)
        sizes = flows.sizes[at:at + len(series)] + fixed
        lo, hi = flows.smallest + fixed, flows.largest + fixed
        if len(varint(lo)) != len(varint(hi)):  # the list spans two varint lengths: does this part?
            lo, hi = int(sizes.min()), int(sizes.max())
        width = len(varint(hi))
        if width == len(varint(lo)) and not flows.heads:
            return self._glued(flows.pieces(at, len(series)), column.values, name, ts, sizes, width)
        self._prime_all(series)  # the flows' own bytes, made for this encoder's extra labels
        return self._pieces(series, python_values(column.values), name, ts, sizes.tolist())

    @staticmethod
    def _glued(pieces: list[bytes], values, name: bytes, ts: bytes, sizes, width: int) -> bytes:
        """opening(0) tail(0) glue(0) tail(1) glue(1) ... tail(n-1) sample(n-1), where
        glue(i) = sample(i) + opening(i + 1) and opening(i) = 0x0a <size(i)> __name__: all the glues
        are rows of one uint8 array (a template row, the values' doubles and the next sizes' varints
        written into it), read out as bytes objects by one tolist() of an S-typed view. That view
        drops trailing NUL bytes, which a glue never has: it ends in the metric name's last byte.
        `pieces` holds the tails at odd places (_Flows.pieces); the rest is written here."""
        import numpy as np

        n, lt = len(sizes), len(ts)
        sample = b"\x12" + _VARINT1[9 + lt] + b"\x09" + bytes(8) + ts
        template = np.frombuffer(sample + b"\x0a" + bytes(width) + name, np.uint8)
        glue = np.empty((n, len(template)), np.uint8)
        glue[:] = template
        glue[:, 3:11] = np.asarray(values, "<f8").reshape(n, 1).view(np.uint8)
        nxt, at = sizes[1:], len(sample) + 1
        for j in range(width - 1):  # base-128, low group first, the continuation bit on all but the last
            glue[:-1, at + j] = (nxt >> (7 * j) & 0x7F) | 0x80
        glue[:-1, at + width - 1] = nxt >> (7 * (width - 1))
        pieces[0] = b"\x0a" + varint(int(sizes[0])) + name
        glues = glue[:-1].view(f"S{len(template)}").ravel().tolist()
        glues.append(glue[-1, :len(sample)].tobytes())
        pieces[2::2] = glues
        try:
            return b"".join(pieces)
        finally:
            pieces[2::2] = repeat(b"", n)  # the glues go now, not when the part comes again

    @staticmethod
    def _pieces(series: list[FlowSeries], values, name: bytes, ts: bytes, sizes: list[int]) -> bytes:
        mid = b"\x12" + _VARINT1[9 + len(ts)] + b"\x09"
        sample = _SAMPLE_PARTS.get(len(ts))
        if sample is None:
            sample = _SAMPLE_PARTS[len(ts)] = struct.Struct(f"<3sd{len(ts)}s")
        packed = map(sample.pack, repeat(mid), values, repeat(ts))  # the whole Sample in one piece
        if any(map(_HEAD, series)):  # an extra label sorts before __name__: its bytes come first
            opening = {size: b"\x0a" + varint(size) for size in set(sizes)}
            parts = zip(map(opening.__getitem__, sizes), map(_HEAD, series), repeat(name), map(_TAIL, series),
                        packed)
        else:  # the opening and __name__ in one piece, a few distinct sizes
            opening = {size: b"\x0a" + varint(size) + name for size in set(sizes)}
            parts = zip(map(opening.__getitem__, sizes), map(_TAIL, series), packed, strict=True)
        return b"".join(chain.from_iterable(parts))


class _Flows:
    """One flow list as an encoder needs it: each flow's tail bytes, label sizes (head + tail)
    and whether any has a head; the flows primed for the encoder's extra labels."""

    __slots__ = ("source", "series", "tails", "sizes", "smallest", "largest", "heads", "_parts", "_pieces")

    def __init__(self, encoder: SeriesEncoder, series: list[FlowSeries]):
        import numpy as np

        encoder._prime_all(series)
        self.source = series  # the list object last seen (the interval's), and a copy to check against
        self.series = list(series)
        self.tails = list(map(_TAIL, series))
        self.sizes = np.fromiter(map(_SIZE, series), np.int64, len(series))
        self.smallest, self.largest = (int(self.sizes.min()), int(self.sizes.max())) if len(series) else (0, 0)
        self.heads = any(map(_HEAD, series))
        self._parts: dict[tuple[int, int], list[FlowSeries]] = {}
        self._pieces: dict[tuple[int, int], list[bytes]] = {}

    def pieces(self, start: int, n: int) -> list[bytes]:
        """The list _glued() fills for series[start:start + n]: the tails at odd places, made once."""
        pieces = self._pieces.get((start, n))
        if pieces is None:
            pieces = self._pieces[start, n] = [b""] * (2 * n + 1)
            pieces[1::2] = self.tails[start:start + n]
        return pieces

    def part(self, start: int, n: int) -> list[FlowSeries]:
        """series[start:start + n], made once (the sender slices every interval's columns alike)."""
        part = self._parts.get((start, n))
        if part is None:
            part = self._parts[start, n] = self.series[start:start + n]
        return part


def group(entries: Iterable[tuple[bytes, float, int]]) -> dict[bytes, list[tuple[float, int]]]:
    """Entries by series, each series' points in time order (input order breaks ties)."""
    series: dict[bytes, list[tuple[float, int]]] = {}
    for labels, value, ts in entries:
        points = series.get(labels)
        if points is None:
            series[labels] = [(value, ts)]
        else:
            points.append((value, ts))
    for points in series.values():
        if len(points) > 1:
            points.sort(key=lambda p: p[1])
    return series


def encode_write_request(series: Mapping[bytes, list[tuple[float, int]]]) -> bytes:
    """An uncompressed WriteRequest for grouped series (`group()` output)."""
    pack = _DOUBLE.pack
    ts_cache: dict[int, bytes] = {}
    out = []
    append = out.append
    for labels, points in series.items():
        parts = [labels]
        for value, ts in points:
            tail = ts_cache.get(ts)
            if tail is None:
                tail = ts_cache[ts] = varint(ts)
            # Sample = 0x09 <double> 0x10 <varint ts>, wrapped as TimeSeries field 2.
            parts.append(b"\x12" + _VARINT1[10 + len(tail)] + b"\x09" + pack(value) + b"\x10" + tail)
        body = b"".join(parts)
        append(b"\x0a" + varint(len(body)) + body)
    return b"".join(out)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Level 1: measured by bench/bench_remote_write.py, higher levels cost several times the CPU for a
# few percent fewer bytes on these bodies (labels repeat, values are counters).
ZSTD_LEVEL = 1


def compress(body: bytes, codec: str = "snappy") -> bytes:
    """Snappy block format (Prometheus remote write), or a zstd frame (VictoriaMetrics remote write)."""
    # cramjam is imported where a body is (de)compressed: the operator imports this module (through
    # transport's URL rules) and its image has no codec
    import cramjam

    if codec == "zstd":
        return bytes(cramjam.zstd.compress(body, level=ZSTD_LEVEL))
    return bytes(cramjam.snappy.compress_raw(body))


def codec_of(data: bytes) -> str:
    """Which codec compressed a body: the zstd frame magic, as VictoriaMetrics tells them apart."""
    return "zstd" if data[:4] == ZSTD_MAGIC else "snappy"


def decompress(data: bytes) -> bytes:
    import cramjam

    if codec_of(data) == "zstd":
        return bytes(cramjam.zstd.decompress(data))
    return bytes(cramjam.snappy.decompress_raw(data))


def recompress(data: bytes, codec: str) -> bytes:
    return data if codec_of(data) == codec else compress(decompress(data), codec)


def chunks(series: Mapping[bytes, list[tuple[float, int]]], max_samples: int) -> list[dict]:
    """Split grouped series into groups of at most `max_samples` points, never splitting a series
    (one series with more points than that gets a group of its own)."""
    out: list[dict] = []
    current: dict = {}
    size = 0
    for labels, points in series.items():
        if current and size + len(points) > max_samples:
            out.append(current)
            current, size = {}, 0
        current[labels] = points
        size += len(points)
    if current:
        out.append(current)
    return out


# --- decoding: for the spool (rescuing the newest values of dropped blocks), for repacking a body
# --- for a receiver that speaks another codec, and for the legacy import endpoint's text ----------

def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value) for every field; value is an int or a bytes slice."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_write_request(body: bytes) -> dict[bytes, list[tuple[float, int]]]:
    """Uncompressed WriteRequest -> {labels_bytes: [(value, timestamp_ms)]} (inverse of encode)."""
    out: dict[bytes, list[tuple[float, int]]] = {}
    for field, wire, ts_bytes in _fields(body):
        if field != 1 or wire != 2:
            continue
        labels = []
        points = []
        for f, w, v in _fields(ts_bytes):
            if f == 1 and w == 2:
                labels.append(_field_bytes(0x0A, bytes(v)))
            elif f == 2 and w == 2:
                value, ts = 0.0, 0
                for sf, _sw, sv in _fields(v):
                    if sf == 1:
                        value = _DOUBLE.unpack(sv)[0]
                    elif sf == 2:
                        ts = sv - (1 << 64) if sv >= 1 << 63 else sv
                points.append((value, ts))
        out.setdefault(b"".join(labels), []).extend(points)
    return out


def decode_labels(labels: bytes) -> list[tuple[str, str]]:
    """labels_bytes -> [(name, value)]."""
    pairs = []
    for _f, _w, label in _fields(labels):
        name = value = ""
        for f, _w2, v in _fields(label):
            if f == 1:
                name = bytes(v).decode()
            elif f == 2:
                value = bytes(v).decode()
        pairs.append((name, value))
    return pairs
