"""Turns per-interval deltas into cumulative counters, with idle expiry and a series budget.

Why in user space: the kernel table is drained (read and reset) every interval so that it
only ever holds one interval's flows; the cumulative values the sinks push live here.

Rules (DESIGN.md §5): a pushed counter never goes backwards. So a flow that expires and later
comes back resumes from its last value (kept in a bounded "tombstone" memory), and a flow that
does not fit in the budget is folded into one `other` flow per interface, whose counter keeps
growing: the interface's traffic is never lost, only its detail.

Under budget pressure the lowest-traffic flows give way: after an interval in which flows were
folded, each live flow that moved fewer bytes in that interval than a folded one is retired
(its series stops; its value is kept as a tombstone), so the busier newcomer gets a series
next time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator


class Accumulator:
    """Cumulative (packets, bytes) per key, for at most `max_flows` keys plus one `other` key per group."""

    def __init__(self, max_flows: int, idle_timeout: float, other_of: Callable[[Hashable], Hashable],
                 describe: Callable[[Hashable], object] = lambda key: None):
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._other_of = other_of
        self._describe = describe  # key -> what a sink needs (labels), made once per live entry
        # key -> [packets, bytes, last_seen, bytes in the last interval it was seen, description]
        self._live: dict[Hashable, list] = {}
        self._others: dict[Hashable, list] = {}
        self._tombstones: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()
        self.folded_flows = 0  # flows (per interval) whose counts went to `other`: cumulative
        self.expired_flows = 0

    def add(self, deltas: dict[Hashable, tuple[int, int]], now: float) -> None:
        live = self._live
        folded: list[int] = []
        for key, (packets, bytes_) in deltas.items():
            entry = live.get(key)
            if entry is None:
                if len(live) >= self.max_flows:
                    self._fold(key, packets, bytes_, now)
                    folded.append(bytes_)
                    continue
                old = self._tombstones.pop(key, None)
                entry = live[key] = [old[0], old[1], now, 0, None] if old else [0, 0, now, 0, None]
            entry[0] += packets
            entry[1] += bytes_
            entry[2] = now
            entry[3] = bytes_
        if folded:
            self._make_room(folded, now)

    def _make_room(self, folded: list[int], now: float) -> None:
        """Retire the quietest live flows, each one only for a folded flow that moved more bytes."""
        def recent(item):
            _, e = item
            return e[3] if e[2] == now else -1  # idle this interval: first to go
        quietest = sorted(self._live.items(), key=recent)[:len(folded)]
        for (key, entry), newcomer in zip(quietest, sorted(folded, reverse=True), strict=False):
            if recent((key, entry)) >= newcomer:
                break
            self._retire(key)

    def _fold(self, key: Hashable, packets: int, bytes_: int, now: float) -> None:
        self.folded_flows += 1
        other = self._others.setdefault(self._other_of(key), [0, 0, now, 0, None])
        other[0] += packets
        other[1] += bytes_
        other[2] = now

    def expire(self, now: float) -> int:
        """Forget flows idle for longer than the idle timeout; returns how many went."""
        cutoff = now - self.idle_timeout
        idle = [k for k, e in self._live.items() if e[2] < cutoff]
        for key in idle:
            self._retire(key)
        # tombstones are bounded like the live table: past that, a very old flow that returns
        # starts a fresh series, long after any query engine considered the old one stale
        while len(self._tombstones) > self.max_flows:
            self._tombstones.popitem(last=False)
        self.expired_flows += len(idle)
        return len(idle)

    def _retire(self, key: Hashable) -> None:
        entry = self._live.pop(key)
        self._tombstones[key] = (entry[0], entry[1])

    def __len__(self) -> int:
        return len(self._live)

    def keys(self):
        return self._live.keys()

    def items(self) -> Iterator[tuple[Hashable, int, int, bool]]:
        """(key, packets, bytes, is_other) for every live flow and every `other` bucket."""
        for key, e in self._live.items():
            yield key, e[0], e[1], False
        for key, e in self._others.items():
            yield key, e[0], e[1], True

    def described(self) -> Iterator[tuple[object, int, int]]:
        """(description, packets, bytes) for every live flow and `other` bucket; descriptions are
        made once per entry and reused every interval."""
        describe = self._describe
        for table in (self._live, self._others):
            for key, e in table.items():
                d = e[4]
                if d is None:
                    d = e[4] = describe(key)
                yield d, e[0], e[1]


class Totals:
    """Cumulative (packets, bytes) per key, never expired: interface totals, drop counters."""

    def __init__(self) -> None:
        self.values: dict[Hashable, list[int]] = {}

    def add(self, key: Hashable, *amounts: int) -> None:
        cur = self.values.get(key)
        if cur is None:
            self.values[key] = list(amounts)
        else:
            for i, a in enumerate(amounts):
                cur[i] += a
