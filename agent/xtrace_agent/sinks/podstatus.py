"""Pod status as a sink: the agent's readiness written on its own Pod, as the condition
`xtrace.io/AgentReady` (readiness.CONDITION_TYPE).

The operator reads pod status anyway (a label-filtered watch); this puts the agent's own
reason there ("InterfaceNotFound: xdp:eth1: interface not found") instead of a bare failing
probe. The reason is the problems' own `readiness.Kind`, chosen where each problem arose.
`PodStatusSink.write()` only takes the current problems, so it never waits on the API server.
Built for 1000 nodes:

- a write happens only when the readiness *changed*, never per interval. Numbers inside the
  reasons ("no successful push for 121s") do not count as a change, or a failing push would
  rewrite the pod every interval; the message keeps the numbers as of the write and the
  condition's lastTransitionTime says since when;
- at most one write per `min_interval` (10 s), the latest value winning; a fleet-wide event
  (the database is down everywhere) is spread by a random delay of up to `jitter` seconds;
- a failed write is retried only on the next change or after an exponential back-off
  (10 s .. 5 min), logged once per distinct error and counted in xtrace_pod_status_errors_total.

The PATCH is a strategic merge patch on the status subresource: pod status conditions merge by
`type`, so the kubelet's own conditions (Ready, ContainersReady, ...) are left alone, and the
kubelet in turn keeps conditions it does not own. It runs in a background thread; collection
never waits for the API server. Outside a pod (no POD_NAME/POD_NAMESPACE, no service-account
token) nothing is started. Standard library only: the agent image carries no Kubernetes client.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import os
import pathlib
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from xtrace_agent import __version__
from xtrace_agent import selfmetrics as sm
from xtrace_agent.health import Health
from xtrace_agent.readiness import CONDITION_TYPE, MIXED_REASON, READY_REASON, Problem
from xtrace_agent.samples import Report

log = logging.getLogger("xtrace.podstatus")

SA_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
MIN_INTERVAL = 10.0  # seconds between two writes of one agent
MAX_BACKOFF = 300.0
JITTER = 5.0
MAX_MESSAGE = 512  # a condition message is for people; the full text is on /readyz
REQUEST_TIMEOUT = 10.0
_MAX_LOGGED_ERRORS = 32



class Summary(NamedTuple):
    """What the condition says: ready or not, a CamelCase reason, and the reasons as one line."""

    ready: bool
    reason: str
    message: str
    key: tuple  # what counts as a change (the reasons with their numbers masked)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def summarize(problems: Iterable[Problem]) -> Summary:
    """The condition for health.problems(): their kind when every problem is of one kind, else Degraded."""
    items = sorted(problems, key=lambda p: p.component)
    if not items:
        return Summary(True, READY_REASON, "", ())
    kinds = {p.kind for p in items}
    message = "; ".join(p.line() for p in items).replace("\n", " ")
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    key = tuple((p.component, p.kind, _NUMBER.sub("N", p.message)) for p in items)
    return Summary(False, str(kinds.pop()) if len(kinds) == 1 else MIXED_REASON, message, key)


def condition(summary: Summary, transition_time: str) -> dict[str, Any]:
    return {"type": CONDITION_TYPE, "status": "True" if summary.ready else "False",
            "reason": summary.reason, "message": summary.message, "lastTransitionTime": transition_time}


def patch_body(cond: dict[str, Any]) -> dict[str, Any]:
    # Strategic merge: status.conditions has patchMergeKey "type", so this one entry is merged
    # into the list by type (a JSON merge patch would replace the whole list).
    return {"status": {"conditions": [cond]}}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodStatusReporter:
    """Writes the agent's readiness to its Pod's status when it changes, from a background thread."""

    def __init__(self, health: Health, namespace: str, name: str, base_url: str, token_file: str | os.PathLike,
                 ca_file: str | os.PathLike | None = None, *, min_interval: float = MIN_INTERVAL,
                 max_backoff: float = MAX_BACKOFF, jitter: float = JITTER, timeout: float = REQUEST_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"API server URL must be http(s)://HOST[:PORT], got {base_url!r}")
        self.health = health
        self.namespace, self.name = namespace, name
        self.path = (f"{url.path.rstrip('/')}/api/v1/namespaces/{urllib.parse.quote(namespace)}"
                     f"/pods/{urllib.parse.quote(name)}/status")
        self._url = url
        self.token_file = pathlib.Path(token_file)
        self.ca_file = pathlib.Path(ca_file) if ca_file else None
        self.min_interval, self.max_backoff, self.jitter = min_interval, max_backoff, jitter
        self.timeout = timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._latest: Summary | None = None
        self._sent_key: tuple | None = None  # None: nothing written yet (the first observation is a change)
        self._sent_ready: bool | None = None
        self._since = ""
        self._next_allowed = 0.0
        self._failures = 0
        self._logged: set[str] = set()
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, health: Health, env: Mapping[str, str] | None = None,
                         sa_dir: str | os.PathLike = SA_DIR, **kw: Any) -> PodStatusReporter | None:
        """A reporter for the pod this process runs in, or None outside a pod (or without a token)."""
        env = os.environ if env is None else env
        name, namespace = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
        sa = pathlib.Path(sa_dir)
        if not (name and namespace and host) or not (sa / "token").is_file():
            return None
        host = f"[{host}]" if ":" in host else host  # an IPv6 service address
        ca = sa / "ca.crt"
        return cls(health, namespace, name, f"https://{host}:{port}", sa / "token",
                   ca if ca.is_file() else None, **kw)

    # --- the collection loop's side: cheap, never blocks on the network ----------------------
    def start(self) -> PodStatusReporter:
        self._thread = threading.Thread(target=self._run, name="xtrace-pod-status", daemon=True)
        self._thread.start()
        log.info("reporting readiness on pod %s/%s as condition %s", self.namespace, self.name, CONDITION_TYPE)
        return self

    def observe(self) -> None:
        """Take the current readiness (call once per interval); wakes the writer only on a change."""
        summary = summarize(self.health.problems())
        with self._cond:
            changed = self._latest is None or summary.key != self._latest.key
            self._latest = summary
            if changed:
                self._cond.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the writer; a write in flight is abandoned (the pod is going away)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the writer thread -------------------------------------------------------------------
    def _pending(self) -> bool:
        # The key alone tells ready from not ready: () is ready, anything else names problems.
        return self._latest is not None and self._latest.key != self._sent_key

    def _run(self) -> None:
        due: float | None = None
        while True:
            with self._cond:
                if self._closed:
                    return
                if not self._pending():
                    due = None  # changed back to what the pod already shows: nothing to write
                    self._cond.wait()
                    continue
                if due is None:
                    due = max(self._next_allowed, self._clock() + random.uniform(0, self.jitter))
                left = due - self._clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                summary = self._latest
                due = None
            assert summary is not None
            self._write(summary)

    def _write(self, summary: Summary) -> None:
        since = self._since if summary.ready == self._sent_ready and self._since else _now()
        error = self._patch(patch_body(condition(summary, since)))
        with self._cond:
            if error is None:
                self._sent_key, self._sent_ready, self._since = summary.key, summary.ready, since
                self._failures = 0
                self._next_allowed = self._clock() + self.min_interval
            else:
                self._failures += 1
                self._next_allowed = self._clock() + min(self.max_backoff,
                                                         self.min_interval * 2 ** self._failures)
        if error is None:
            self.health.inc(sm.POD_STATUS_WRITES)
            if self._logged:
                log.info("pod status reporting works again")
                self._logged.clear()
            return
        self.health.inc(sm.POD_STATUS_ERRORS)
        if error not in self._logged and len(self._logged) < _MAX_LOGGED_ERRORS:
            self._logged.add(error)
            log.warning("cannot write condition %s on pod %s/%s: %s (retrying with back-off)",
                        CONDITION_TYPE, self.namespace, self.name, error)

    def _patch(self, body: dict[str, Any]) -> str | None:
        """One PATCH of the pod's status; None on success, else a one-line error (never raises)."""
        try:
            # Re-read on every call: the projected service-account token is rotated by the kubelet.
            token = self.token_file.read_text().strip()
        except OSError as e:
            return f"service-account token unreadable: {e.strerror or e}"
        url = self._url
        try:
            if url.scheme == "https":
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    url.hostname, url.port or 443, timeout=self.timeout, context=ctx)
            else:  # tests only: from_environment() always builds an https URL
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=self.timeout)
            try:
                conn.request("PATCH", self.path, json.dumps(body).encode(), headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/strategic-merge-patch+json",
                    "Accept": "application/json",
                    "User-Agent": f"xtrace-agent/{__version__}",
                })
                resp = conn.getresponse()
                raw = resp.read(4096)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            return f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug here must not end the thread or the agent
            return f"internal error: {type(e).__name__}: {e}"
        if 200 <= resp.status < 300:
            return None
        try:
            message = json.loads(raw).get("message") or ""
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace")
        return f"HTTP {resp.status}: {message.strip()[:200]}" if message.strip() else f"HTTP {resp.status}"


class PodStatusSink:
    """The sink the pipeline sees: each report hands the current readiness to the reporter."""

    def __init__(self, reporter: PodStatusReporter):
        self.reporter = reporter

    @classmethod
    def from_environment(cls, health: Health, env: Mapping[str, str] | None = None) -> PodStatusSink | None:
        """The running sink for this pod, or None when the agent does not run in a pod."""
        reporter = PodStatusReporter.from_environment(health, env)
        return cls(reporter.start()) if reporter else None

    def write(self, report: Report) -> None:
        self.reporter.observe()

    def close(self, timeout: float) -> None:
        self.reporter.close(min(timeout, 1.0))  # a write in flight is abandoned: the pod is going away
