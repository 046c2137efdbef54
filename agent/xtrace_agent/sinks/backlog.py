"""What waits in memory for one remote-write target: the queued reports, and the newest value of
every series dropped for space (the rescue map).

    add(samples) -> lost       queue one report; past `limit` samples the oldest go, newest kept
    take() / put_back(parts)   the sender takes the whole queue, and puts back what it could not send
    rescue*(...) -> lost       keep the newest point of each series of what is being dropped
    spill_due(...)             the receiver is down: is it time to move the queue to the spool?

The values are cumulative counters, so the last value of a series is what matters: whatever is
dropped for space (the queue's oldest samples, the spool's oldest blocks) first goes through the
rescue map, which keeps the newest point per series. Its points are older than all that is still
queued, so sending it first keeps each series in time order. "Lost" counts the points that did not
survive (an older point of a series whose newer one was kept).

No I/O, no clock, no lock: RemoteWriteSink holds its lock around every call, and the tests drive a
Backlog directly (tests/remote_write/test_backlog.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from xtrace_agent.sinks import prompb

Point = tuple[float, int]  # (value, timestamp in ms)
Entries = Callable[[list], Iterable[tuple[bytes, float, int]]]  # samples -> (labels, value, ts_ms)


class Backlog:
    """Queued sample sequences (oldest first, a bound on their total) and the rescue map.

    A queued part is a list of samples or a flow column (columns.Column: a metric's flows and
    values, no object per sample); both are sized, sliceable and read by the encoder alike."""

    def __init__(self, limit: int, entries: Entries):
        self.limit = limit
        self._entries = entries  # the sink's encoder: the label bytes a series is keyed by
        self._reports: deque[list] = deque()
        self.queued = 0
        self.rescued: dict[bytes, Point] = {}

    def pending(self) -> bool:
        return bool(self.queued or self.rescued)

    # --- the queue ----------------------------------------------------------------------------
    def add(self, samples: list) -> int:
        """Queue one report's samples; past `limit`, drop the oldest (rescued). Returns points lost."""
        return self.add_parts([samples])

    def add_parts(self, parts: list) -> int:
        """Queue one report as its parts (Report.batches(): flow columns, then a list of the other
        samples; each a sized, sliceable sequence of samples), oldest first; past `limit`, drop the
        oldest (rescued). Returns points lost."""
        self._reports.extend(parts)
        self.queued += sum(map(len, parts))
        return self._drop_oldest(self.queued - self.limit) if self.queued > self.limit else 0

    def _drop_oldest(self, excess: int) -> int:
        lost = 0
        reports = self._reports
        while excess > 0 and reports:
            head = reports[0]
            if len(head) <= excess:
                gone = reports.popleft()
            else:
                gone, reports[0] = head[:excess], head[excess:]
            excess -= len(gone)
            self.queued -= len(gone)
            for labels, value, ts in self._entries(gone):
                lost += self.rescue(labels, value, ts)
        return lost

    def take(self) -> list[list]:
        """Every queued report (oldest first); the queue is empty after."""
        taken = list(self._reports)
        self._reports.clear()
        self.queued = 0
        return taken

    def take_entries(self) -> list[tuple[bytes, float, int]]:
        """The whole queue as (labels, value, ts_ms) entries, for the spool."""
        return [e for samples in self.take() for e in self._entries(samples)]

    def put_back(self, parts: list[list]) -> None:
        """Parts the sender took but could not send go back to the front, in their order."""
        self._reports.extendleft(reversed(parts))
        self.queued += sum(len(p) for p in parts)

    def spill_due(self, since_spill: float, interval: float, closing: bool) -> bool:
        """While the receiver is down: move the queue to the spool now? On close, after `interval`
        seconds, or when the queue is half full (before it starts dropping)."""
        return bool(self.queued) and (closing or since_spill >= interval or self.queued >= self.limit // 2)

    # --- the rescue map ------------------------------------------------------------------------
    def rescue(self, labels: bytes, value: float, ts: int) -> int:
        """Keep the newest point of a series being dropped; returns how many points are lost (0/1)."""
        old = self.rescued.get(labels)
        if old is None:
            self.rescued[labels] = (value, ts)
            return 0
        if ts >= old[1]:
            self.rescued[labels] = (value, ts)
        return 1

    def rescue_body(self, body: bytes) -> int:
        """Rescue every point of a compressed WriteRequest (an evicted spool block, rescued.sz)."""
        lost = 0
        for labels, points in prompb.decode_write_request(prompb.decompress(body)).items():
            for value, ts in points:
                lost += self.rescue(labels, value, ts)
        return lost

    def rescued_snapshot(self) -> dict[bytes, Point]:
        return dict(self.rescued)

    def delivered(self, snapshot: dict[bytes, Point]) -> bool:
        """A snapshot was sent (or refused for good): forget the points still as sent. True when
        nothing is left rescued (a newer point rescued meanwhile stays)."""
        rescued = self.rescued
        for k, v in snapshot.items():
            if rescued.get(k) == v:
                del rescued[k]
        return not rescued

    def forget(self, keys: Iterable[bytes]) -> None:
        """Series whose newest value cannot be kept (the spool cannot hold it)."""
        for k in keys:
            self.rescued.pop(k, None)
