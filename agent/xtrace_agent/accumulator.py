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

DEFAULT_MEMORY_SECONDS = 3600.0
MEMORY_PER_BUDGET = 10  # tombstones kept per flow of budget


class Entry:
    """One exported series pair (a flow, or a group's `other`): cumulative counts and what it moved
    in the last interval it was seen. Slots: attribute access is as fast as a list's index."""

    __slots__ = ("packets", "bytes", "seen", "recent_packets", "recent_bytes", "description")

    def __init__(self, now: float):
        self.packets = 0
        self.bytes = 0
        self.seen = now  # when it last moved
        self.recent_packets = 0  # moved in the interval ending at `seen`
        self.recent_bytes = 0
        self.description = None  # what a sink needs (labels), made once per entry


class Accumulator:
    """Cumulative (packets, bytes) per key, for at most `max_flows` keys plus one `other` key per group."""

    def __init__(self, max_flows: int, idle_timeout: float, other_of: Callable[[Hashable], Hashable],
                 describe: Callable[[Hashable], object] = lambda key: None, *,
                 memory_seconds: float = DEFAULT_MEMORY_SECONDS, memory_flows: int | None = None):
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.memory_seconds = memory_seconds
        self.memory_flows = memory_flows if memory_flows is not None else MEMORY_PER_BUDGET * max_flows
        self._other_of = other_of
        self._describe = describe  # key -> what a sink needs (labels), made once per live entry
        self._live: dict[Hashable, Entry] = {}
        self._others: dict[Hashable, Entry] = {}
        self._tombstones: OrderedDict[Hashable, float] = OrderedDict()  # key -> when it stopped
        self.folded_flows = 0  # flows (per interval) whose counts went to `other` for lack of budget
        self.expired_flows = 0  # flows that stopped being exported after the idle timeout
        self.retired_flows = 0  # flows that stopped being exported to make room for busier ones

    def add(self, deltas: dict[Hashable, tuple[int, int]], now: float) -> None:
        live = self._live
        tombstones = self._tombstones
        folded: list[int] = []
        for key, (packets, bytes_) in deltas.items():
            entry = live.get(key)
            if entry is None:
                if key in tombstones:
                    self.add_other(self._other_of(key), packets, bytes_, now)
                    continue
                if len(live) >= self.max_flows:
                    self.add_other(self._other_of(key), packets, bytes_, now)
                    self.folded_flows += 1
                    folded.append(bytes_)
                    continue
                entry = live[key] = Entry(now)
            entry.packets += packets
            entry.bytes += bytes_
            entry.seen = now
            entry.recent_bytes = bytes_
            entry.recent_packets = packets
        if folded:
            self._make_room(folded, now)

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
        def recent(item):
            _, e = item
            return e.recent_bytes if e.seen == now else -1  # idle this interval: first to go
        quietest = sorted(self._live.items(), key=recent)[:len(folded)]
        for (key, entry), newcomer in zip(quietest, sorted(folded, reverse=True), strict=False):
            if recent((key, entry)) >= newcomer:
                break
            self._retire(key, now)
            self.retired_flows += 1

    def expire(self, now: float) -> int:
        """Stop exporting flows idle for longer than the idle timeout; returns how many went."""
        cutoff = now - self.idle_timeout
        idle = [k for k, e in self._live.items() if e.seen < cutoff]
        for key in idle:
            self._retire(key, now)
        tombstones = self._tombstones
        forget = now - self.memory_seconds
        while tombstones and (len(tombstones) > self.memory_flows or next(iter(tombstones.values())) < forget):
            tombstones.popitem(last=False)
        self.expired_flows += len(idle)
        return len(idle)

    def _retire(self, key: Hashable, now: float) -> None:
        """The flow's series stops; its counts move to `other`, and its return is folded there."""
        entry = self._live.pop(key)
        other = self._others.get(self._other_of(key))
        if other is None:
            other = self._others[self._other_of(key)] = Entry(now)
        other.packets += entry.packets
        other.bytes += entry.bytes
        self._tombstones[key] = now
        self._tombstones.move_to_end(key)

    def __len__(self) -> int:
        return len(self._live)

    def keys(self):
        return self._live.keys()

    def items(self) -> Iterator[tuple[Hashable, int, int, bool]]:
        """(key, packets, bytes, is_other) for every live flow and every `other` entry."""
        for key, e in self._live.items():
            yield key, e.packets, e.bytes, False
        for key, e in self._others.items():
            yield key, e.packets, e.bytes, True

    def _entries(self) -> Iterator[tuple[object, Entry]]:
        """(description, entry) for every live flow and `other` entry; descriptions are made once
        per entry and reused every interval."""
        describe = self._describe
        for table in (self._live, self._others):
            for key, e in table.items():
                d = e.description
                if d is None:
                    d = e.description = describe(key)
                yield d, e

    def described(self) -> Iterator[tuple[object, int, int]]:
        """(description, packets, bytes) for every live flow and `other` entry."""
        for d, e in self._entries():
            yield d, e.packets, e.bytes

    def described_with_recent(self, now: float) -> Iterator[tuple[object, int, int, int, int]]:
        """As described(), plus (packets, bytes) moved in the interval ending at `now` (0, 0 for
        entries that moved nothing then)."""
        for d, e in self._entries():
            if e.seen == now:
                yield d, e.packets, e.bytes, e.recent_packets, e.recent_bytes
            else:
                yield d, e.packets, e.bytes, 0, 0


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
