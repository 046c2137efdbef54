"""Turns per-interval deltas into cumulative counters, with idle expiry and a series budget.

Why in user space: the kernel tables are drained every interval, so each holds one interval's
flows; the cumulative values the sinks push live here.

Two rules hold at every report (docs/architecture.md, "Every packet accounted for"):
- conservation: per group (interface), the live flows plus the group's `other` entry hold every
  packet and byte ever added. Nothing goes to state that is not exported: a flow that stops
  being exported (idle expiry, or retired to make room under budget pressure) hands its counts
  to `other`, and so does every flow that does not fit in the budget;
- a pushed counter never goes backwards. So a flow that stopped being exported is remembered
  for a while (a "tombstone", the key alone): if it comes back meanwhile its traffic goes to
  `other`, because resuming its series would count its old value twice and starting it again
  at 0 would go backwards. Tombstones are forgotten after `memory_seconds` (default one hour,
  long past any query engine's staleness) or, oldest first, past `memory_flows` of them; a flow
  that returns after that starts a fresh series, which rate() reads as a counter reset.

Under budget pressure the lowest-traffic flows give way: after an interval in which new flows
were folded, each live flow that moved fewer bytes in that interval than a folded one retires,
so the busier newcomer gets a series next time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from itertools import chain, compress, repeat
from operator import attrgetter

import numpy as np

from xtrace_agent.xdp.keyindex import KeyIndex

DEFAULT_MEMORY_SECONDS = 3600.0
MEMORY_PER_BUDGET = 10  # tombstones kept per flow of budget
_FIRST_CAPACITY = 1024


class Entry:
    """A group's `other` series pair: cumulative counts and what it moved in the last interval it
    was seen. (Live flows are rows of the accumulator's arrays instead: see Accumulator.)"""

    __slots__ = ("packets", "bytes", "seen", "recent_packets", "recent_bytes", "description")

    def __init__(self, now: float):
        self.packets = 0
        self.bytes = 0
        self.seen = now  # when it last moved
        self.recent_packets = 0  # moved in the interval ending at `seen`
        self.recent_bytes = 0
        self.description = None  # what a sink needs (labels), made once per entry


class Accumulator:
    """Cumulative (packets, bytes) per key, for at most `max_flows` keys plus one `other` key per group.

    Live flows are rows of numpy arrays (counts, when last seen, what they moved then), a dict maps
    each key to its row: an interval's deltas are added, folded, expired and read out as columns
    with array operations, the Python path taken only by what changes (new, folded, retired flows).
    The order of the flows (described(), columns()) is the order they became live."""

    def __init__(self, max_flows: int, idle_timeout: float, other_of: Callable[[Hashable], Hashable],
                 describe: Callable[[Hashable], object] = lambda key: None, *,
                 memory_seconds: float = DEFAULT_MEMORY_SECONDS, memory_flows: int | None = None):
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.memory_seconds = memory_seconds
        self.memory_flows = memory_flows if memory_flows is not None else MEMORY_PER_BUDGET * max_flows
        self._other_of = other_of
        self._describe = describe  # key -> what a sink needs (labels), made once per live flow
        self._row: dict[Hashable, int] = {}  # live key -> its row, in the order they became live
        self._packets = np.zeros(0, np.int64)
        self._bytes = np.zeros(0, np.int64)
        self._seen = np.zeros(0, np.float64)
        self._recent_packets = np.zeros(0, np.int64)
        self._recent_bytes = np.zeros(0, np.int64)
        self._descriptions: list = []  # per row
        self._free: list[int] = []  # rows no live key holds
        # add_table(): kernel key -> row of a live flow, and the name (group) each raw ifindex word
        # had when its keys were indexed
        self._index = KeyIndex()
        self._index_groups: dict[int, tuple] = {}
        self.version = 0  # changes whenever a flow becomes live or stops: caches keyed by it
        self._rows_cache: tuple[int, np.ndarray] | None = None
        self._descriptions_cache: tuple[int, list] | None = None
        self._lists_cache: list[tuple[list, list] | None] = [None, None]  # columns(): series, moved
        self._others: dict[Hashable, Entry] = {}
        self._tombstones: OrderedDict[Hashable, float] = OrderedDict()  # key -> when it stopped
        self.folded_flows = 0  # flows (per interval) whose counts went to `other` for lack of budget
        self.expired_flows = 0  # flows that stopped being exported after the idle timeout
        self.retired_flows = 0  # flows that stopped being exported to make room for busier ones

    # --- rows ------------------------------------------------------------------------------------
    def _grow(self) -> None:
        old = len(self._packets)
        size = max(_FIRST_CAPACITY, 2 * old)
        for name in ("_packets", "_bytes", "_seen", "_recent_packets", "_recent_bytes"):
            a = getattr(self, name)
            b = np.zeros(size, a.dtype)
            b[:old] = a
            setattr(self, name, b)
        self._descriptions.extend(repeat(None, size - old))
        self._free.extend(range(size - 1, old - 1, -1))  # lowest row first

    def _new_row(self, key: Hashable) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._packets[row] = self._bytes[row] = 0
        self._descriptions[row] = None
        self._row[key] = row
        self.version += 1
        return row

    def _rows(self) -> np.ndarray:
        """The live rows, in the order their keys became live (the same array while none changes:
        callers only read it)."""
        cached = self._rows_cache
        if cached is None or cached[0] != self.version:
            cached = self._rows_cache = (self.version, np.fromiter(self._row.values(), np.int64, len(self._row)))
        return cached[1]

    # --- adding ---------------------------------------------------------------------------------
    def add(self, deltas: dict[Hashable, tuple[int, int]], now: float) -> None:
        n = len(deltas)
        if not n:
            return
        rows = np.fromiter(map(self._row.get, deltas, repeat(-1)), np.int64, n)
        values = np.fromiter(chain.from_iterable(deltas.values()), np.int64, 2 * n).reshape(n, 2)
        folded: list[int] = []
        new = np.flatnonzero(rows < 0)
        if len(new):  # in their order: a key's fate depends on how many came before it
            keys = list(deltas)
            for i in new.tolist():
                key = keys[i]
                if self._fold_new(key, *deltas[key], now, folded):
                    rows[i] = self._new_row(key)
            kept = rows >= 0
            rows, values = rows[kept], values[kept]
        self._accumulate(rows, values[:, 0], values[:, 1], now)
        if folded:
            self._make_room(folded, now)

    def _accumulate(self, rows: np.ndarray, packets: np.ndarray, bytes_: np.ndarray, now: float) -> None:
        """One interval's deltas of live rows (each row once)."""
        self._packets[rows] += packets
        self._bytes[rows] += bytes_
        self._seen[rows] = now
        self._recent_packets[rows] = packets
        self._recent_bytes[rows] = bytes_

    def _fold_new(self, key: Hashable, packets: int, bytes_: int, now: float, folded: list[int]) -> bool:
        """A key with no row: True when it may have one; else its counts went to `other` (a
        returning tombstone, or no room: then it counts as folded, its bytes in `folded`)."""
        tombstones = self._tombstones
        if key not in tombstones and len(self._row) < self.max_flows:
            return True
        self.add_other(self._other_of(key), packets, bytes_, now)
        if key not in tombstones:
            self.folded_flows += 1
            folded.append(bytes_)
        return False

    def add_table(self, table, now: float) -> None:
        """add() for columns (xdp.flowtable.TableDeltas): kernel keys (words, hashes), packets,
        bytes, and ids(rows) for the FlowIds of rows. Keys seen before find their rows in the key
        index in one array operation (xdp/keyindex.py); only new keys are decoded and go the way
        add() takes them, in their order. The same result as add(dict(table)), which it falls back
        to when two keys of the interval are one flow (a link recreated under its name)."""
        n = len(table.packets)
        if not n:
            return
        if any(self._index_groups.get(i, g) != g for i, g in table.groups.items()):
            self._index.clear()  # an ifindex now has another name: its keys are other flows
        self._index_groups.update(table.groups)
        rows = self._index.find(table.hashes, table.words)
        found = rows[rows >= 0]
        if len(found) and np.bincount(found).max() > 1:  # one row twice: a key repeated in the table
            self.add(dict(table.items()), now)
            return
        new = np.flatnonzero(rows < 0)
        folded: list[int] = []
        if len(new):
            idx = new.tolist()
            ids = table.ids(idx)
            known = list(map(self._row.get, ids, repeat(-1)))
            if len(set(ids)) < len(ids) or (max(known) >= 0 and self._aliased_twice(rows, known)):
                self.add(dict(table.items()), now)
                return
            packets, bytes_ = table.packets, table.bytes
            indexed: list[int] = []
            for i, key, row in zip(idx, ids, known, strict=True):
                if row < 0:
                    if not self._fold_new(key, int(packets[i]), int(bytes_[i]), now, folded):
                        continue
                    row = self._new_row(key)
                rows[i] = row
                indexed.append(i)
            at = np.asarray(indexed, np.int64)
            self._index.add(table.hashes[at], table.words[at], rows[at])
            kept = rows >= 0
            self._accumulate(rows[kept], packets[kept], bytes_[kept], now)
        else:
            self._accumulate(rows, table.packets, table.bytes, now)
        if folded:
            self._make_room(folded, now)

    @staticmethod
    def _aliased_twice(rows: np.ndarray, known: list[int]) -> bool:
        """Whether a new key's live row is also the row of another key of this interval."""
        live = [r for r in known if r >= 0]
        return len(set(live)) < len(live) or bool(np.isin(np.asarray(live, np.int64), rows).any())

    def add_other(self, other_key: Hashable, packets: int, bytes_: int, now: float) -> None:
        """Counts that belong to a group but to none of its flows (untracked in the kernel)."""
        other = self._others.get(other_key)
        if other is None:
            other = self._others[other_key] = Entry(now)
        if other.seen != now:
            other.recent_bytes = other.recent_packets = 0
        other.packets += packets
        other.bytes += bytes_
        other.seen = now
        other.recent_bytes += bytes_
        other.recent_packets += packets

    def _make_room(self, folded: list[int], now: float) -> None:
        """Retire the quietest live flows, each one only for a folded flow that moved more bytes."""
        keys = list(self._row)
        rows = self._rows()
        # idle this interval: first to go; ties in the order the flows became live
        recent = np.where(self._seen[rows] == now, self._recent_bytes[rows], -1)
        quietest = np.argsort(recent, kind="stable")[:len(folded)]
        for i, newcomer in zip(quietest.tolist(), sorted(folded, reverse=True), strict=False):
            if int(recent[i]) >= newcomer:
                break
            self._retire(keys[i], now)
            self.retired_flows += 1

    def expire(self, now: float) -> int:
        """Stop exporting flows idle for longer than the idle timeout; returns how many went."""
        cutoff = now - self.idle_timeout
        rows = self._rows()
        idle = np.flatnonzero(self._seen[rows] < cutoff)
        if len(idle):
            keys = list(self._row)
            for i in idle.tolist():
                self._retire(keys[i], now)
        tombstones = self._tombstones
        forget = now - self.memory_seconds
        while tombstones and (len(tombstones) > self.memory_flows or next(iter(tombstones.values())) < forget):
            tombstones.popitem(last=False)
        self.expired_flows += len(idle)
        return len(idle)

    def _retire(self, key: Hashable, now: float) -> None:
        """The flow's series stops; its counts move to `other`, and its return is folded there."""
        row = self._row.pop(key)
        other = self._others.get(self._other_of(key))
        if other is None:
            other = self._others[self._other_of(key)] = Entry(now)
        other.packets += int(self._packets[row])
        other.bytes += int(self._bytes[row])
        self._descriptions[row] = None
        self._index.drop_row(row)
        self._free.append(row)
        self.version += 1
        self._tombstones[key] = now
        self._tombstones.move_to_end(key)

    # --- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row)

    def keys(self):
        return self._row.keys()

    def items(self) -> Iterator[tuple[Hashable, int, int, bool]]:
        """(key, packets, bytes, is_other) for every live flow and every `other` entry."""
        rows = self._rows()
        yield from zip(self._row, self._packets[rows].tolist(), self._bytes[rows].tolist(), repeat(False))
        for key, e in self._others.items():
            yield key, e.packets, e.bytes, True

    def columns(self, now: float | None = None) -> tuple[list, np.ndarray, np.ndarray, tuple | None]:
        """Every live flow and `other` entry as columns, in the order of described(): (descriptions,
        packets, bytes, moved), where `moved` (when `now` is given) is (descriptions, packets, bytes)
        of the entries that moved in the interval ending at `now`, in the same order. The counts
        are int64 arrays (described() gives Python ints). Array operations and C loops: no Python
        step per flow but for a new flow's description."""
        rows = self._rows()
        flows = self._flow_descriptions(rows)
        others = list(self._others.values())
        for key, e in self._others.items():
            if e.description is None:
                e.description = self._describe(key)
        descriptions = [e.description for e in others]
        series = self._same_list(0, [flows, *descriptions], lambda: flows + descriptions)
        packets = _joined(self._packets[rows], others, _PACKETS)
        bytes_ = _joined(self._bytes[rows], others, _BYTES)
        if now is None:
            return series, packets, bytes_, None
        recent_p, recent_b = self._recent_packets[rows], self._recent_bytes[rows]
        mask = np.concatenate(((self._seen[rows] == now) & (recent_p != 0),
                               np.fromiter((e.seen == now and e.recent_packets != 0 for e in others), bool,
                                           len(others))))
        recent_p, recent_b = _joined(recent_p, others, _RECENT_PACKETS), _joined(recent_b, others, _RECENT_BYTES)
        moved = (self._same_list(1, [series, mask], lambda: list(compress(series, mask.tolist()))),
                 recent_p[mask], recent_b[mask])
        return series, packets, bytes_, moved

    def _same_list(self, which: int, made_of: list, make: Callable[[], list]) -> list:
        """The list columns() made last time when it is made of the same things (lists by identity,
        a mask by value): a steady interval hands the sinks the same list objects, which the
        remote-write encoder recognises at once (prompb.SeriesEncoder keeps what it made of them)."""
        last = self._lists_cache[which]
        if last is not None and len(last[0]) == len(made_of) and all(map(_same, last[0], made_of)):
            return last[1]
        made = make()
        self._lists_cache[which] = (made_of, made)
        return made

    def _flow_descriptions(self, rows: np.ndarray) -> list:
        """The live flows' descriptions in row order (one list while no flow comes or goes)."""
        cached = self._descriptions_cache
        if cached is not None and cached[0] == self.version:
            return cached[1]
        row_list = rows.tolist()
        descriptions = self._descriptions
        flows = list(map(descriptions.__getitem__, row_list))
        if None in flows:  # new flows: described once, for their lifetime
            keys = list(self._row)
            for i in [i for i, d in enumerate(flows) if d is None]:
                flows[i] = descriptions[row_list[i]] = self._describe(keys[i])
        self._descriptions_cache = (self.version, flows)
        return flows

    def described(self) -> Iterator[tuple[object, int, int]]:
        """(description, packets, bytes) for every live flow and `other` entry."""
        series, packets, bytes_, _ = self.columns()
        return zip(series, packets.tolist(), bytes_.tolist(), strict=True)

    def described_with_recent(self, now: float) -> Iterator[tuple[object, int, int, int, int]]:
        """As described(), plus (packets, bytes) moved in the interval ending at `now` (0, 0 for
        entries that moved nothing then)."""
        series, packets, bytes_, _ = self.columns()
        packets, bytes_ = packets.tolist(), bytes_.tolist()
        rows = self._rows()
        moved = (self._seen[rows] == now).tolist() + [e.seen == now for e in self._others.values()]
        recent_p = self._recent_packets[rows].tolist() + [e.recent_packets for e in self._others.values()]
        recent_b = self._recent_bytes[rows].tolist() + [e.recent_bytes for e in self._others.values()]
        for d, p, b, m, rp, rb in zip(series, packets, bytes_, moved, recent_p, recent_b, strict=True):
            yield (d, p, b, rp, rb) if m else (d, p, b, 0, 0)


_PACKETS, _BYTES, _RECENT_PACKETS, _RECENT_BYTES = map(attrgetter, ("packets", "bytes", "recent_packets",
                                                                   "recent_bytes"))


def _same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a is b


def _joined(rows: np.ndarray, others: list[Entry], value: Callable[[Entry], int]) -> np.ndarray:
    """The live rows' values, then the `other` entries'."""
    return np.concatenate((rows, np.fromiter(map(value, others), np.int64, len(others))))


class Totals:
    """Cumulative (packets, bytes) per key, never expired: interface totals, untracked counts."""

    def __init__(self) -> None:
        self.values: dict[Hashable, list[int]] = {}

    def add(self, key: Hashable, *amounts: int) -> None:
        cur = self.values.get(key)
        if cur is None:
            self.values[key] = list(amounts)
        else:
            for i, a in enumerate(amounts):
                cur[i] += a
