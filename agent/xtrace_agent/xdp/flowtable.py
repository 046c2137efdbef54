"""One drain's flows in columns, from the kernel's keys to the accounting, with no object per flow.

At 100k flows a Python object per flow and per stage (a FlowKey, then a FlowId, each hashed into a
dict) cost about 300 ms an interval. In a steady interval almost every flow is one the accounting
already holds, so what it needs per flow is only "which row is this": the raw kernel key answers
that. `FlowTable` holds each key's words and a hash of them (keyindex.py), and
accumulator.Accumulator.add_table() looks them all up in its key index in one array operation; only
the keys it has not seen yet are decoded into FlowKeys and FlowIds, in C loops.

Both classes are also Mappings (FlowKey -> (packets, bytes), FlowId -> (packets, bytes)), built on
first use, for the readers that want one (tests, a table of a few flows): the same content as the
dicts the per-flow path made, in the same order.

    FlowTable    the real program's drain: key words and hashes, packets, bytes; decode(rows) -> FlowKeys
    TableDeltas  the source's view of it: the same rows with each ifindex named (ids(rows) -> FlowIds)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial

import numpy as np

from xtrace_agent.stages import BTH, ENDPOINTS, NO_BTH, TRAFFIC_TYPE, FlowKey
from xtrace_agent.xdp import layout
from xtrace_agent.xdp.addresses import v4_texts, v6_texts
from xtrace_agent.xdp.keyindex import hash_words, words_of

_new_flow_key = partial(tuple.__new__, FlowKey)


def grouped(values: np.ndarray, limit: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_inverse=True) for an array of few distinct values (a drain's ifindex
    words: one per attached interface and direction): one comparison pass per distinct value
    instead of a sort of the whole array; past `limit` distinct values, np.unique itself."""
    n = len(values)
    inverse = np.empty(n, np.int64)
    found: list = []
    left = np.arange(n)
    rest = values
    while len(rest):
        if len(found) == limit:
            return np.unique(values, return_inverse=True)
        same = rest == rest[0]
        inverse[left[same]] = len(found)
        found.append(rest[0])
        left, rest = left[~same], rest[~same]
    uniq = np.array(found, values.dtype)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse]


def flow_ids(flow_keys: Iterable[FlowKey], groups: Mapping[int, tuple]) -> list[tuple]:
    """FlowKey -> FlowId: the ifindex's group ((group,), as `groups` names each ifindex) in its place,
    the BTH fields only for RoCE."""
    return [groups[fk[0]] + fk[ENDPOINTS] + (fk[BTH] if fk[TRAFFIC_TYPE] == "roce" else NO_BTH)
            for fk in flow_keys]


def merged(pairs) -> dict:
    """(key, (packets, bytes)) pairs as a dict, adding up a key that comes twice."""
    out: dict = {}
    for key, (p, b) in pairs:
        old = out.get(key)
        out[key] = (p, b) if old is None else (old[0] + p, old[1] + b)
    return out


class _Lazy(Mapping):
    """A Mapping made from columns on first use."""

    _dict: dict | None = None

    def _made(self) -> dict:
        raise NotImplementedError

    def _as_dict(self) -> dict:
        if self._dict is None:
            self._dict = self._made()
        return self._dict

    def __getitem__(self, key):
        return self._as_dict()[key]

    def __iter__(self) -> Iterator:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(self._as_dict())

    def items(self):
        return self._as_dict().items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._as_dict()!r})"


class FlowTable(_Lazy):
    """Tracked flows of one drain (IPv4 and IPv6 keys), in the order the kernel returned them.

    kernel_keys: the structured key array (not `keys`: a Mapping's keys() is the FlowKeys); words,
    hashes: each key as keyindex.py reads it; packets, bytes: int64, summed over CPUs and scaled by
    the sampling. A key appears once (chunks of one pass over a hash map do not repeat a key; if
    they ever did, the rows are merged here)."""

    def __init__(self, keys: np.ndarray, packets: np.ndarray, bytes_: np.ndarray, *, one_pass: bool = False):
        """`one_pass`: the rows are one batch read of one table, so no key can repeat (the kernel
        returns each entry once); otherwise repeated keys are looked for and merged."""
        words = words_of(keys)
        hashes = hash_words(words)
        if not one_pass and len(hashes) > 1 and len(np.unique(hashes)) < len(hashes):  # maybe a key twice
            whole = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize)))
            _, first, inverse = np.unique(whole, return_index=True, return_inverse=True)
            if len(first) < len(keys):
                p, b = np.zeros(len(first), np.int64), np.zeros(len(first), np.int64)
                np.add.at(p, inverse, packets)
                np.add.at(b, inverse, bytes_)
                order = np.argsort(first, kind="stable")  # in the order each key first came
                kept = first[order]
                keys, words, hashes, packets, bytes_ = keys[kept], words[kept], hashes[kept], p[order], b[order]
        self.kernel_keys, self.words, self.hashes = keys, words, hashes
        self.packets, self.bytes = packets, bytes_
        self.ifindex = keys["ifindex"]

    @classmethod
    def empty(cls, dtype: np.dtype) -> FlowTable:
        return cls(np.zeros(0, dtype), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def decode(self, rows: list[int] | None = None) -> list[FlowKey]:
        """FlowKeys of the given rows (all when None), in that order."""
        k = self.kernel_keys if rows is None else self.kernel_keys[np.asarray(rows, np.int64)]
        if not len(k):
            return []
        version = k["ip_version"]
        v4 = version == 4
        if v4.all():
            src, dst = v4_texts(k["src"]), v4_texts(k["dst"])
        elif not v4.any():
            src, dst = v6_texts(k["src"]), v6_texts(k["dst"])
        else:
            src, dst = (np.where(v4, np.array(v4_texts(k[c]), object), np.array(v6_texts(k[c]), object)).tolist()
                        for c in ("src", "dst"))
        return list(map(_new_flow_key, zip(
            k["ifindex"].tolist(), src, dst, k["src_port"].tolist(), k["dst_port"].tolist(),
            k["protocol"].tolist(), map(layout.TRAFFIC_TYPES.get, k["traffic_type"].tolist()),
            k["rdma_opcode"].tolist(), k["dest_qp"].tolist(), strict=True)))

    def _made(self) -> dict:
        return dict(zip(self.decode(), zip(self.packets.tolist(), self.bytes.tolist(), strict=True), strict=True))


class TableDeltas(_Lazy):
    """stages.Observed.flows from a FlowTable: FlowId -> (packets, bytes), kept in columns.

    `groups` names each raw ifindex word present ((group,) tuples, as the source made them); two
    ifindexes under one name (a link recreated within the interval) give one FlowId, whose rows the
    Mapping adds up and the accumulator recognises (Accumulator.add_table)."""

    def __init__(self, table: FlowTable, group_of: Callable[[int], tuple]):
        self.table = table
        self.hashes, self.words = table.hashes, table.words
        self.packets, self.bytes = table.packets, table.bytes
        uniq, self._inverse = grouped(table.ifindex)
        self.groups: dict[int, tuple] = {i: (group_of(i),) for i in uniq.tolist()}
        self._counts = np.bincount(self._inverse, minlength=len(uniq)).tolist() if len(uniq) else []

    def ids(self, rows: list[int] | None = None) -> list[tuple]:
        """FlowIds of the given rows (all when None), in that order."""
        return flow_ids(self.table.decode(rows), self.groups)

    def group_counts(self) -> Counter:
        """Kernel table entries per group (the xtrace_xdp_table_flows gauge)."""
        out: Counter = Counter()
        for (group,), n in zip(self.groups.values(), self._counts, strict=True):
            out[group] += n
        return out

    def _made(self) -> dict:
        return merged(zip(self.ids(), zip(self.packets.tolist(), self.bytes.tolist(), strict=True), strict=True))
