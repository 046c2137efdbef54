"""Pushes samples to one Prometheus remote-write receiver (VictoriaMetrics single or cluster, ...).

The queue, spool, rescue map and readiness live here; the HTTP side (connection, credentials,
TLS, zstd/snappy negotiation, the legacy text endpoint) is transport.py.

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

import email.utils
import hashlib
import http.client
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections import deque

from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import MEMORY_SPOOL_BYTES, AgentConfig, RemoteWriteTarget
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.samples import Report
from xtrace_agent.sinks import exposition, prompb
from xtrace_agent.sinks.spool import Block, DiskSpool, MemorySpool
from xtrace_agent.sinks.transport import AuthFileError, Transport, auth_problem, deadline_timeout, redact

log = logging.getLogger("xtrace.remote_write")

DROP_CODES = (400, 409, 415)
AUTH_CODES = (401, 403, 404)


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
    """A Sink delivering every sample to one remote-write target, through outages and restarts."""

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
        self.queue_limit = cfg.queue_samples
        self.component = f"remote_write:{self.name}"
        self._labels = {"target": self.name}

        self.transport = Transport(target, self.name, timeout)
        if self.transport.legacy:
            base = redact(target.url).split("/api/v1/import/prometheus")[0]
            log.warning("remote write %s: %s is the legacy text import endpoint; it works, but Prometheus "
                        "remote write (%s/api/v1/write) is about 10x less traffic and checked by the server",
                        self.name, redact(target.url), base)

        extra = {"node": cfg.node_name(), "monitor": cfg.monitor, "namespace": cfg.namespace, **cfg.labels}
        self.encoder = prompb.SeriesEncoder({k: v for k, v in extra.items() if v})

        if cfg.spool.path:
            digest = hashlib.sha256(redact(target.url).encode()).hexdigest()[:12]
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
            self.spool: MemorySpool = DiskSpool(os.path.join(cfg.spool.path, f"{safe}-{digest}"), cfg.spool.max_bytes)
        else:
            self.spool = MemorySpool(min(cfg.spool.max_bytes, MEMORY_SPOOL_BYTES))

        self._cond = threading.Condition()
        self._queue: deque = deque()  # Report.batches() (sample lists, flow columns), oldest first
        self._queued = 0
        self._rescued: dict[bytes, tuple[float, int]] = {}
        self._closing = False
        self._deadline = 0.0
        self._failures = 0
        self._failing = False
        self._retry_at = 0.0
        self._last_error = ""
        self._last_spill = time.monotonic()
        self._last_success = 0.0
        self._caught_up = time.time()  # nothing pending since then (readiness grace at start)

        rescued = self.spool.load_rescued()
        if rescued:
            for labels, points in prompb.decode_write_request(prompb.decompress(rescued)).items():
                for value, ts in points:
                    self._rescue(labels, value, ts)
        if len(self.spool) or self._rescued:
            log.info("remote write %s: replaying %d spooled samples", self.name, self.spool.samples + len(self._rescued))
        for reason in ("queue_full", "spool_full", "rejected", "shutdown"):
            health.inc(sm.RW_DROPPED, 0, {**self._labels, "reason": reason})
        health.inc(sm.RW_SENT, 0, self._labels)
        health.inc(sm.RW_RETRIES, 0, self._labels)
        self._gauges()
        self._thread = threading.Thread(target=self._run, name=f"remote-write-{self.name}", daemon=True)
        self._thread.start()

    # --- the collector's side ---------------------------------------------------------------
    def write(self, report: Report) -> None:
        # flow columns as they are (columns.Column: two lists, no object per sample), then the rest
        batches = [b for b in report.batches() if len(b)]
        if not batches:
            return
        with self._cond:
            if self._closing:
                return
            self._queue.extend(batches)
            self._queued += sum(map(len, batches))
            if self._queued > self.queue_limit:
                self._drop_queued(self._queued - self.queue_limit)
            self._cond.notify()

    def _drop_queued(self, excess: int) -> None:
        """Drop the `excess` oldest queued samples, keeping each series' newest value."""
        dropped = 0
        while excess > 0 and self._queue:
            head = self._queue[0]
            if len(head) <= excess:
                gone = self._queue.popleft()
            else:
                gone, self._queue[0] = head[:excess], head[excess:]
            excess -= len(gone)
            self._queued -= len(gone)
            for labels, value, ts in self.encoder.entries(gone):
                dropped += self._rescue(labels, value, ts)
        self.health.inc(sm.RW_DROPPED, dropped, {**self._labels, "reason": "queue_full"})

    def _rescue(self, labels: bytes, value: float, ts: int) -> int:
        """Keep the newest point of a series being dropped; returns how many points are lost (0/1)."""
        old = self._rescued.get(labels)
        if old is None:
            self._rescued[labels] = (value, ts)
            return 0
        if ts >= old[1]:
            self._rescued[labels] = (value, ts)
        return 1

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
                    if self._queued and (closing or now - self._last_spill >= self.spill_interval
                                         or self._queued >= self.queue_limit // 2):
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
        return bool(self._queued or len(self.spool) or self._rescued)

    def _pending(self) -> bool:
        with self._cond:
            return self._pending_locked()

    def _take_queue(self) -> list[list]:
        with self._cond:
            taken = list(self._queue)
            self._queue.clear()
            self._queued = 0
            return taken

    def _deliver(self) -> None:
        """One round: rescued values first, then the spool (oldest first), then the queue."""
        if self._rescued:
            with self._cond:
                snapshot = dict(self._rescued)
            body = self.transport.compress(prompb.encode_write_request({k: [v] for k, v in snapshot.items()}))
            outcome = self._send(body, len(snapshot))
            if outcome != "retry":
                with self._cond:
                    for k, v in snapshot.items():
                        if self._rescued.get(k) == v:
                            del self._rescued[k]
                    if not self._rescued:
                        self.spool.clear_rescued()
            return
        block = self.spool.oldest()
        if block is not None:
            outcome = self._send(block.body, block.samples)
            if outcome != "retry":
                self.spool.remove(block.key)
            return
        parts = [samples[i:i + self.max_samples_per_send]
                 for samples in self._take_queue()  # reports in time order: each series stays in order
                 for i in range(0, len(samples), self.max_samples_per_send)]
        for i, part in enumerate(parts):
            if self.transport.legacy:  # text straight from the samples, no protobuf on the way
                outcome = self._send(exposition.samples_text(part, self.encoder.extra), len(part), text=True)
            else:
                outcome = self._send(self.transport.compress(self.encoder.encode_samples(part)), len(part))
            if outcome == "retry":  # back to the front of the queue: the next spill groups it by series
                with self._cond:
                    self._queue.extendleft(reversed(parts[i:]))
                    self._queued += sum(len(p) for p in parts[i:])
                return

    def _spill(self) -> None:
        """Receiver down: move the queue to the spool, one label set per series per block."""
        self._last_spill = time.monotonic()
        chunks = self._take_queue()
        entries = [e for samples in chunks for e in self.encoder.entries(samples)]
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
        dropped = 0
        with self._cond:
            for block in blocks:
                if not block.body:
                    continue
                for labels, points in prompb.decode_write_request(prompb.decompress(block.body)).items():
                    for value, ts in points:
                        dropped += self._rescue(labels, value, ts)
        if dropped:
            self.health.inc(sm.RW_DROPPED, dropped, {**self._labels, "reason": reason})
            log.warning("remote write %s: spool full (%d bytes): dropped %d older samples, kept the newest "
                        "value of every series", self.name, self.spool.max_bytes, dropped)

    def _shutdown(self) -> None:
        """Persist what is left: the queue to the spool, rescued values beside it, all within maxBytes."""
        if self._queued:
            self._spill()
        if isinstance(self.spool, DiskSpool):
            self._save_rescued()
        with self._cond:
            left = self.spool.samples + len(self._rescued)
        if left and isinstance(self.spool, DiskSpool):
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
                rescued = dict(self._rescued)
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
            for k in keys[keep:]:
                self._rescued.pop(k, None)
        self.health.inc(sm.RW_DROPPED, lost, {**self._labels, "reason": "spool_full"})
        log.error("remote write %s: spool.maxBytes (%d) cannot hold the newest value of every series: %d of %d "
                  "series not kept; raise spool.maxBytes", self.name, self.spool.max_bytes, lost, len(keys))
        return body

    # --- delivery outcome ----------------------------------------------------------------------
    def _send(self, body: bytes, samples: int, text: bool = False) -> str:
        """Send one body: "ok", "dropped" (rejected for good) or "retry" (keep it)."""
        timeout = deadline_timeout(self.timeout, self._deadline if self._closing else None)
        try:
            post = self.transport.post_text if text else self.transport.post
            answer = post(body, timeout)
        except AuthFileError as e:
            return self._retry(self.auth_retry, f"{e}: data stays queued", loud=True)
        except ssl.SSLCertVerificationError as e:  # before OSError: a setting to fix, like a 401
            return self._retry(self.auth_retry, f"cannot verify the TLS certificate of {redact(self.target.url)}: "
                               f"{e.verify_message or e}: check caFile / insecureSkipVerify; data stays queued "
                               f"and is retried every {self.auth_retry:g}s", loud=True)
        except (OSError, http.client.HTTPException) as e:
            return self._retry(self._backoff(), f"cannot reach {redact(self.target.url)}: {e or type(e).__name__}")
        status = 401 if auth_problem(answer) else answer.status
        if 200 <= status < 300:
            now = time.time()
            self._failures, self._failing, self._retry_at, self._last_error = 0, False, 0.0, ""
            self._last_success = now
            self.health.inc(sm.RW_SENT, samples, self._labels)
            self.health.inc(sm.RW_SENT_BYTES, len(body), self._labels)
            self.health.set(sm.RW_LAST_SUCCESS, now, self._labels)
            return "ok"
        if status in DROP_CODES:
            log.error("remote write %s: HTTP %d, the receiver rejected %d samples, dropped: %s",
                      self.name, status, samples, answer.text)
            self.health.inc(sm.RW_DROPPED, samples, {**self._labels, "reason": "rejected"})
            return "dropped"
        if status in AUTH_CODES:
            what = "the URL path" if status == 404 else "the credentials (basicAuth / bearerTokenFile)"
            return self._retry(self.auth_retry, f"HTTP {status} from {redact(self.target.url)}: check {what}; "
                               f"data stays queued and is retried every {self.auth_retry:g}s: {answer.text}", loud=True)
        delay = self._backoff()
        if status == 429 and answer.retry_after:
            delay = _retry_after(answer.retry_after, delay)
        return self._retry(delay, f"HTTP {status}: {answer.text}")

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
        return "retry"

    # --- visibility ------------------------------------------------------------------------------
    def _gauges(self) -> None:
        with self._cond:
            waiting = self._queued + self.spool.samples + len(self._rescued)
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
        self._thread.join(timeout + 2)
        if self._thread.is_alive():
            log.warning("remote write %s: sender still busy after %.0fs; %d queued samples may be lost",
                        self.name, timeout, self._queued)


def _retry_after(value: str, default: float) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped at 10 minutes."""
    value = value.strip()
    if value.isdigit():
        return min(float(value), 600.0)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return min(max(0.0, when - time.time()), 600.0)
