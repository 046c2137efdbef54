"""Who may read /metrics: the caller's bearer token checked with the Kubernetes API server.

The convention of controller-runtime's secure metrics and kube-rbac-proxy: a `TokenReview` says who
the token belongs to (401 when nobody), a `SubjectAccessReview` whether that user may `get` the
non-resource URL `/metrics` (403 when not). The agent's own ServiceAccount makes both calls, which is
what the ClusterRole `system:auth-delegator` allows (the operator binds it).

Verdicts are cached per token (by its SHA-256): an allowed one for ALLOW_SECONDS (60 s), a refused one
(401, 403) for DENY_SECONDS (10 s). A Prometheus scraping every 15-30 s then costs each agent one review
pair per token per minute, not per scrape (the kubelet caches its own for 2 and 5 minutes); a revoked
binding or token stops working within a minute, a newly granted one within 10 s. A cached entry never
outlives those times, whatever the token's own expiry says (the API server has the last word at the
next review). At most MAX_REVIEWS reviews run at once: a flood of new (garbage) tokens gets 503 beyond
that rather than turning one agent into a TokenReview amplifier against the API server. When the API
server cannot answer (down, timing out, answering 5xx, or refusing the agent itself), the request gets
503 and nothing is cached: the next request asks again. Never data without a verdict.

Standard library only, like podstatus.py: the agent image carries no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import pathlib
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from xtrace_agent import environ

log = logging.getLogger("xtrace.kubeauth")

SA_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
ALLOW_SECONDS = 60.0
DENY_SECONDS = 10.0
MAX_REVIEWS = 4
CACHE_ENTRIES = 1024  # distinct tokens remembered; a flood of garbage tokens evicts the oldest first
REQUEST_TIMEOUT = 5.0  # a scraper's own timeout is usually 10 s: answer 503 before it gives up
PATH, VERB = "/metrics", "get"


class Verdict(NamedTuple):
    """The HTTP status to answer (200, 401, 403 or 503), who asked (if known) and why, for the log."""

    status: int
    user: str
    why: str


class ReviewUnavailable(Exception):
    """The API server gave no verdict: 503 for this request, nothing cached."""


class Reviewer:
    """TokenReview + SubjectAccessReview for bearer tokens, cached; thread-safe (one per HTTP server)."""

    def __init__(self, base_url: str, token_file: str | os.PathLike, ca_file: str | os.PathLike | None,
                 ttl: tuple[float, float] = (ALLOW_SECONDS, DENY_SECONDS), timeout: float = REQUEST_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self.token_file = pathlib.Path(token_file)
        self.ca_file = str(ca_file) if ca_file else None
        self.ttl, self.timeout, self.clock = ttl, timeout, clock
        self._cache: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_REVIEWS)
        self._ctx: ssl.SSLContext | None = None
        self._logged: set[str] = set()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, sa_dir: pathlib.Path = SA_DIR,
                         **kw: Any) -> Reviewer | None:
        """The in-cluster reviewer (KUBERNETES_SERVICE_HOST, the pod's token and CA), None outside a pod."""
        host, port = environ.SERVICE_HOST.get(env), environ.SERVICE_PORT.get(env)
        if not host or not (sa_dir / "token").is_file():
            return None
        host = f"[{host}]" if ":" in host else host
        ca = sa_dir / "ca.crt"
        return cls(f"https://{host}:{port}", sa_dir / "token", ca if ca.is_file() else None, **kw)

    def check(self, authorization: str | None) -> Verdict:
        """The verdict for one request's Authorization header."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict(401, "", "no bearer token")
        key = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                return hit[1]
        if not self._slots.acquire(blocking=False):
            return Verdict(503, "", f"{MAX_REVIEWS} reviews already under way")
        try:
            verdict = self._review(token)
        except ReviewUnavailable as e:
            self._log_once(str(e))
            return Verdict(503, "", str(e))
        finally:
            self._slots.release()
        with self._lock:
            self._cache[key] = (now + self.ttl[0 if verdict.status == 200 else 1], verdict)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return verdict

    def _review(self, token: str) -> Verdict:
        review = self._post("/apis/authentication.k8s.io/v1/tokenreviews",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return Verdict(401, "", status.get("error") or "token not authenticated")
        user = status.get("user") or {}
        name = user.get("username", "")
        spec: dict[str, Any] = {"user": name, "groups": user.get("groups") or [],
                                "nonResourceAttributes": {"path": PATH, "verb": VERB}}
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        access = self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})
        allowed = (access.get("status") or {}).get("allowed") is True
        if not allowed:
            return Verdict(403, name, f"{name} may not {VERB} {PATH}")
        return Verdict(200, name, "allowed")

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = ssl.create_default_context(cafile=self.ca_file)
        return self._ctx

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            # Re-read on every review: the projected service-account token is rotated by the kubelet.
            own = self.token_file.read_text().strip()
        except OSError as e:
            raise ReviewUnavailable(f"the agent's service-account token is unreadable: {e.strerror or e}") from None
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context())
        try:
            conn.request("POST", path, body=json.dumps(body).encode(),
                         headers={"Authorization": f"Bearer {own}", "Content-Type": "application/json",
                                  "Accept": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ReviewUnavailable(f"API server {self.host}:{self.port} unreachable: {e}") from None
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise ReviewUnavailable(f"the API server refused the agent's own {path.rsplit('/', 1)[1]} "
                                    f"({resp.status}): bind its ServiceAccount to system:auth-delegator")
        if resp.status != 201 and resp.status != 200:
            raise ReviewUnavailable(f"API server answered {resp.status} to {path.rsplit('/', 1)[1]}")
        try:
            return json.loads(data)
        except ValueError:
            raise ReviewUnavailable(f"API server sent no JSON for {path.rsplit('/', 1)[1]}") from None

    def _log_once(self, why: str) -> None:
        key = why.split(":", 1)[0]
        if key not in self._logged and len(self._logged) < 32:
            self._logged.add(key)
            log.warning("metrics: answering 503, no verdict from the API server: %s", why)
