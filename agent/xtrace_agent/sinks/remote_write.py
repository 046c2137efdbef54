"""Pushes samples to one Prometheus remote-write receiver (VictoriaMetrics single or cluster, ...).

This module is the sender thread: its schedule (send, back off, spill), readiness and shutdown.
The pure parts are their own modules: the queue and the rescue map of newest values with the spill
policy (backlog.py), what a send's answer means (outcome.py); where blocks wait is spool.py, the
HTTP side (connection, credentials, TLS, zstd/snappy negotiation, the legacy text endpoint)
transport.py. `start()` starts the thread (the pipeline calls it once the sink is wired).

    write(report) ──► bounded queue ──► sender thread ──► HTTP POST
                                             │  ▲ receiver down: blocks wait in the spool
                                             ▼  │ (a directory, or memory), oldest sent first
                                           spool

Guarantees (README "Reliability"):
- `write()` never blocks and never does I/O. Past `cfg.queue_samples` queued samples the oldest
  are dropped and counted (`reason="queue_full"`).
- 5xx, 429 (honouring Retry-After) and network errors: retried with exponential backoff and
  jitter up to `max_backoff`. 401/403/404 and an unverifiable TLS certificate: kept and retried
  every `auth_retry` seconds with an error line each time (credentials, the URL or caFile are
  fixable without losing data).
  400/409/415: the block is dropped with one error line and counted (`reason="rejected"`).
- While the receiver is down, queued samples move to the spool every `spill_interval`
  seconds, grouped by series (one label set per series per block keeps the spool small). On
  `close()` whatever was not delivered in time is spooled, and a restarted agent replays it.
  `cfg.spool.max_bytes` bounds everything the spool holds at every instant, the rescued values
  written on close included: room is made before anything is written, by evicting the oldest
  blocks (`reason="spool_full"`, their newest values rescued). When the newest values alone
  do not fit, the series left out are counted in samples (`reason="spool_full"`) and logged.
- Newest values survive every drop: the values are cumulative counters, so the last value of a
  series is what matters. Whatever is dropped for space first goes through a "rescued" map that
  keeps the newest point per series; it is sent before anything else (its points are older than
  all that is still queued, so time order holds) and spooled on close.

Labels: the sink adds `node`, `monitor`, `namespace` (when set) and `cfg.labels`; a label the
sample already has wins, so a collector can never be silently relabelled. Empty values are
dropped, labels are sorted, timestamps are milliseconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.parse

from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.samples import Report
from xtrace_agent.sinks import exposition, outcome, prompb
from xtrace_agent.sinks.backlog import Backlog
from xtrace_agent.sinks.outcome import DROPPED, OK, RETRY, Outcome
from xtrace_agent.sinks.spool import Block, MemorySpool, open_spool
from xtrace_agent.sinks.transport import Transport, deadline_timeout, redact

log = logging.getLogger("xtrace.remote_write")
DROP_REASONS = ("queue_full", "spool_full", "rejected", "shutdown")


def _host_port(target: RemoteWriteTarget) -> str:
    parts = urllib.parse.urlsplit(target.url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "remote_write"


def target_name(target: RemoteWriteTarget) -> str:
    """A lone target's name in metrics and logs: its `name`, else host:port (never credentials)."""
    return target.name or _host_port(target)


def target_names(targets: tuple[RemoteWriteTarget, ...]) -> list[str]:
    """Every target's identity (the `target` label, the readiness component, the spool directory).

    An unnamed target is host:port; when several unnamed targets share one host:port (two tenants
    on one vminsert) each gets host:port plus its URL path (`vminsert:8480/insert/1/prometheus`),
    never the query, which may carry a secret. Two targets that still share an identity (the same
    `name`, or URLs differing only in credentials or query) would add up their counters and
    overwrite each other's gauges: refused, naming both.
    """
    shared: dict[str, int] = {}
    for t in targets:
        if not t.name:
            shared[_host_port(t)] = shared.get(_host_port(t), 0) + 1
    names = []
    for t in targets:
        name = target_name(t)
        if not t.name and shared[name] > 1:
            name += urllib.parse.urlsplit(t.url).path.rstrip("/")
        names.append(name)
    seen: dict[str, RemoteWriteTarget] = {}
    for t, name in zip(targets, names, strict=True):
        if name in seen:
            raise UsageError(f"config: remote write targets {redact(seen[name].url)} and {redact(t.url)} are both "
                             f"named {name!r} in metrics and logs: give one of them a different `name`")
        seen[name] = t
    return names


class RemoteWriteSink:
    """A Sink delivering every sample to one remote-write target, through outages and restarts.

    Constructed idle (the spool is opened and replayed into the rescue map); `start()` starts the
    sender thread and returns the sink.
    """

    def __init__(self, target: RemoteWriteTarget, cfg: AgentConfig, health: Health, *,
                 min_backoff: float = 1.0, max_backoff: float = 60.0, auth_retry: float = 30.0,
                 spill_interval: float = 30.0, max_samples_per_send: int = 10_000,
                 timeout: float = 30.0, tick: float = 1.0):
        self.target = target
        targets = cfg.remote_write if target in cfg.remote_write else (target,)
        self.name = target_names(targets)[targets.index(target)]
        self.health = health
        self.min_backoff, self.max_backoff, self.auth_retry = min_backoff, max_backoff, auth_retry
        self.spill_interval, self.max_samples_per_send = spill_interval, max_samples_per_send
        self.timeout, self.tick = timeout, tick
        self.max_push_age = cfg.max_push_age
        self.component = f"remote_write:{self.name}"
        self._labels = {"target": self.name}
        self._url = redact(target.url)

        self.transport = Transport(target, self.name, timeout)
        if self.transport.legacy:
            base = self._url.split("/api/v1/import/prometheus")[0]
            log.warning("remote write %s: %s is the legacy text import endpoint; it works, but Prometheus "
                        "remote write (%s/api/v1/write) is about 10x less traffic and checked by the server",
                        self.name, self._url, base)
        extra = {"node": cfg.node_name(), "monitor": cfg.monitor, "namespace": cfg.namespace, **cfg.labels}
        self.encoder = prompb.SeriesEncoder({k: v for k, v in extra.items() if v})
        self.spool: MemorySpool = open_spool(cfg.spool, self.name, self._url)
        self.backlog = Backlog(cfg.queue_samples, self.encoder.entries)
        self._cond = threading.Condition()  # guards the backlog; the sender waits on it for work
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = 0.0
        self._failures = 0
        self._failing = False
        self._retry_at = 0.0
        self._last_error = ""
        self._last_spill = time.monotonic()
        self._last_success = 0.0
        self._caught_up = time.time()  # nothing pending since then (readiness grace at start)
        self._replay()
        self._zero_metrics()

    def _replay(self) -> None:
        """What a previous run left: spooled blocks are sent as they are, rescued values first."""
        rescued = self.spool.load_rescued()
        if rescued:
            self.backlog.rescue_body(rescued)
        if len(self.spool) or self.backlog.rescued:
            log.info("remote write %s: replaying %d spooled samples", self.name,
                     self.spool.samples + len(self.backlog.rescued))

    def _zero_metrics(self) -> None:
        """Every series an alert may use exists from the start, at 0."""
        for reason in DROP_REASONS:
            self.health.inc(sm.RW_DROPPED, 0, {**self._labels, "reason": reason})
        for metric in (sm.RW_SENT, sm.RW_SENT_BYTES, sm.RW_RETRIES):
            self.health.inc(metric, 0, self._labels)
        self._gauges()

    def start(self) -> RemoteWriteSink:
        """Start the sender thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"remote-write-{self.name}", daemon=True)
            self._thread.start()
        return self

    # --- the collector's side ---------------------------------------------------------------
    def write(self, report: Report) -> None:
        # flow columns as they are (columns.Column: two lists, no object per sample), then the rest
        batches = [b for b in report.batches() if len(b)]
        if not batches:
            return
        with self._cond:
            if self._closing:
                return
            lost = self.backlog.add_parts(batches)
            if lost:
                self.health.inc(sm.RW_DROPPED, lost, {**self._labels, "reason": "queue_full"})
            self._cond.notify()

    # --- the sender thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and not self._pending_locked():
                    self._cond.wait(self.tick)
                closing = self._closing
            try:
                now = time.monotonic()
                if closing and (not self._pending() or now >= self._deadline
                                or (self._failing and now < self._retry_at)):
                    self._shutdown()
                    return
                if now < self._retry_at:
                    with self._cond:
                        spill = self.backlog.spill_due(now - self._last_spill, self.spill_interval, closing)
                    if spill:
                        self._spill()
                    self._sleep_until(self._retry_at)
                elif self._pending():
                    self._deliver()
                self._gauges()
                self._readiness()
            except Exception:  # the sender must outlive any bug in one round
                log.exception("remote write %s: unexpected error in the sender", self.name)
                time.sleep(self.tick)

    def _sleep_until(self, when: float) -> None:
        with self._cond:
            if not self._closing:
                self._cond.wait(max(0.0, min(self.tick, when - time.monotonic())))

    def _pending_locked(self) -> bool:
        return self.backlog.pending() or bool(len(self.spool))

    def _pending(self) -> bool:
        with self._cond:
            return self._pending_locked()

    def _deliver(self) -> None:
        """One round: rescued values first, then the spool (oldest first), then the queue."""
        if self.backlog.rescued:
            self._deliver_rescued()
            return
        block = self.spool.oldest()
        if block is not None:
            if self._send(block.body, block.samples) != RETRY:
                self.spool.remove(block.key)
            return
        self._deliver_queue()

    def _deliver_rescued(self) -> None:
        with self._cond:
            snapshot = self.backlog.rescued_snapshot()
        body = self.transport.compress(prompb.encode_write_request({k: [v] for k, v in snapshot.items()}))
        if self._send(body, len(snapshot)) != RETRY:
            with self._cond:
                if self.backlog.delivered(snapshot):
                    self.spool.clear_rescued()

    def _deliver_queue(self) -> None:
        with self._cond:
            reports = self.backlog.take()
        parts = [samples[i:i + self.max_samples_per_send]
                 for samples in reports  # reports in time order: each series stays in order
                 for i in range(0, len(samples), self.max_samples_per_send)]
        for i, part in enumerate(parts):
            if self.transport.legacy:  # text straight from the samples, no protobuf on the way
                result = self._send(exposition.samples_text(part, self.encoder.extra), len(part), text=True)
            else:
                result = self._send(self.transport.compress(self.encoder.encode_samples(part)), len(part))
            if result == RETRY:  # back to the front of the queue: the next spill groups it by series
                with self._cond:
                    self.backlog.put_back(parts[i:])
                return

    def _spill(self) -> None:
        """Receiver down: move the queue to the spool, one label set per series per block."""
        self._last_spill = time.monotonic()
        with self._cond:
            entries = self.backlog.take_entries()
        for part in prompb.chunks(prompb.group(entries), self.max_samples_per_send * 10):
            self._spool_series(part)

    def _spool_series(self, series: dict[bytes, list[tuple[float, int]]]) -> None:
        """Spool grouped series as blocks of at most spool.block_limit bytes (halving until they fit)."""
        body = self.transport.compress(prompb.encode_write_request(series))
        fits = self.spool.max_bytes - self.spool.rescued_bytes >= 64  # else no split can ever fit: skip halving
        if fits and len(body) > self.spool.block_limit and len(series) > 1:
            keys = list(series)
            half = len(keys) // 2
            self._spool_series({k: series[k] for k in keys[:half]})
            self._spool_series({k: series[k] for k in keys[half:]})
            return
        samples = sum(len(p) for p in series.values())
        try:
            evicted = self.spool.append(body, samples)
        except OSError as e:
            log.error("remote write %s: cannot write the spool (%s): keeping the newest value of %d series",
                      self.name, e.strerror, len(series))
            evicted = [Block(0, body, samples)]
        self._evict(evicted, "spool_full")

    def _evict(self, blocks: list[Block], reason: str) -> None:
        lost = 0
        with self._cond:
            for block in blocks:
                if block.body:
                    lost += self.backlog.rescue_body(block.body)
        if lost:
            self.health.inc(sm.RW_DROPPED, lost, {**self._labels, "reason": reason})
            log.warning("remote write %s: spool full (%d bytes): dropped %d older samples, kept the newest "
                        "value of every series", self.name, self.spool.max_bytes, lost)

    # --- shutdown -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Persist what is left: the queue to the spool, rescued values beside it, all within maxBytes."""
        if self.backlog.queued:
            self._spill()
        if self.spool.persistent:
            self._save_rescued()
        with self._cond:
            left = self.spool.samples + len(self.backlog.rescued)
        if left and self.spool.persistent:
            log.warning("remote write %s: %d samples not delivered, kept in the spool for the next start", self.name, left)
        elif left:
            log.warning("remote write %s: %d samples not delivered and lost (no spool.path)", self.name, left)
            self.health.inc(sm.RW_DROPPED, left, {**self._labels, "reason": "shutdown"})
        self._gauges()
        self.transport.close()

    def _save_rescued(self) -> None:
        """Write the rescued values, evicting the oldest blocks for room; what can never fit is counted."""
        while True:
            with self._cond:
                rescued = self.backlog.rescued_snapshot()
            body = self.transport.compress(prompb.encode_write_request({k: [v] for k, v in rescued.items()}))
            room = self.spool.max_bytes - (self.spool.bytes - self.spool.rescued_bytes)
            if not rescued or len(body) <= room:
                break
            block = self.spool.evict_oldest()
            if block is None:
                body = self._trim_rescued(rescued, room)
                break
            self._evict([block], "spool_full")
        self.spool.save_rescued(body if rescued else b"")

    def _trim_rescued(self, rescued: dict, room: int) -> bytes:
        """The newest values alone exceed the spool: keep as many series as fit, count the others."""
        keys = list(rescued)
        keep = len(keys)
        body = b""
        while keep:
            keep = max(0, min(keep - 1, int(keep * room / max(1, len(body) or room * 2) * 0.95)))
            body = self.transport.compress(prompb.encode_write_request({k: [rescued[k]] for k in keys[:keep]}))
            if len(body) <= room:
                break
        if not keep:
            body = b""
        lost = len(keys) - keep
        with self._cond:
            self.backlog.forget(keys[keep:])
        self.health.inc(sm.RW_DROPPED, lost, {**self._labels, "reason": "spool_full"})
        log.error("remote write %s: spool.maxBytes (%d) cannot hold the newest value of every series: %d of %d "
                  "series not kept; raise spool.maxBytes", self.name, self.spool.max_bytes, lost, len(keys))
        return body

    # --- one send -------------------------------------------------------------------------------
    def _send(self, body: bytes, samples: int, text: bool = False) -> str:
        """Send one body: OK, DROPPED (refused for good) or RETRY (keep it)."""
        timeout = deadline_timeout(self.timeout, self._deadline if self._closing else None)
        post = self.transport.post_text if text else self.transport.post
        try:
            answer = post(body, timeout)
        except outcome.SEND_ERRORS as e:
            return self._apply(outcome.of_error(e, self._url, self.auth_retry), body, samples)
        return self._apply(outcome.of_answer(answer, self._url, self.auth_retry), body, samples)

    def _apply(self, result: Outcome, body: bytes, samples: int) -> str:
        """Count, log and schedule what a send came to."""
        if result.kind == OK:
            now = time.time()
            self._failures, self._failing, self._retry_at, self._last_error = 0, False, 0.0, ""
            self._last_success = now
            self.health.inc(sm.RW_SENT, samples, self._labels)
            self.health.inc(sm.RW_SENT_BYTES, len(body), self._labels)
            self.health.set(sm.RW_LAST_SUCCESS, now, self._labels)
            return OK
        if result.kind == DROPPED:
            log.error("remote write %s: HTTP %d, the receiver rejected %d samples, dropped: %s",
                      self.name, result.status, samples, result.message)
            self.health.inc(sm.RW_DROPPED, samples, {**self._labels, "reason": "rejected"})
            return DROPPED
        return self._retry(self._backoff() if result.delay is None else result.delay, result.message, result.loud)

    def _backoff(self) -> float:
        cap = min(self.max_backoff, self.min_backoff * 2 ** min(self._failures, 30))
        return cap / 2 + random.uniform(0, cap / 2)  # jitter: agents restarted together spread out

    def _retry(self, delay: float, message: str, loud: bool = False) -> str:
        self._failures += 1
        self._failing = True
        self._retry_at = time.monotonic() + delay
        self.health.inc(sm.RW_RETRIES, 1, self._labels)
        if loud:
            log.error("remote write %s: %s", self.name, message)
        elif message != self._last_error or self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning("remote write %s: %s (retry %d in %.1fs)", self.name, message, self._failures, delay)
        self._last_error = message
        return RETRY

    # --- visibility ------------------------------------------------------------------------------
    def _gauges(self) -> None:
        with self._cond:
            waiting = self.backlog.queued + self.spool.samples + len(self.backlog.rescued)
        self.health.set(sm.RW_QUEUE, waiting, self._labels)
        self.health.set(sm.RW_SPOOL_BYTES, self.spool.bytes, self._labels)

    def _readiness(self) -> None:
        now = time.time()
        if not self._pending():
            self._caught_up = now
        age = now - max(self._last_success, self._caught_up)
        if age > self.max_push_age:
            self.health.not_ready(Kind.PUSH_FAILING, self.component, f"no successful push to {self.name} for {age:.0f}s "
                                  f"(maxPushAge {self.max_push_age:g}s): {self._last_error or 'sending'}")
        else:
            self.health.ready(self.component)

    # --- Sink protocol -----------------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within `timeout` seconds, spool the rest."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is None:  # never started: nothing was sent, persist what was queued
            self._shutdown()
            return
        self._thread.join(timeout + 2)
        if self._thread.is_alive():
            log.warning("remote write %s: sender still busy after %.0fs; %d queued samples may be lost",
                        self.name, timeout, self.backlog.queued)
