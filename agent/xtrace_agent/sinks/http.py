"""The agent's HTTP endpoints: /metrics (pull), /healthz (alive), /readyz (doing its job).

/metrics serves the latest report's samples and the agent's own health metrics in the
Prometheus text format (0.0.4), without timestamps: the scraper stamps its scrape time. Each
metric's TYPE and HELP come from its definition (datametrics.py, selfmetrics.py).
It adds no `node`/`monitor` label: in the pull model the scraper knows the target (pod, node)
from service discovery and adds those itself; a `node` label here would clash with it and
come back as `exported_node`. The monitor's extra labels (`cfg.labels`) are added, as the
remote-write sink adds them, because only the agent knows them.

/readyz answers 200 "ok", or 503 with one "component: reason" line per problem
(health.reasons(): XDP not attached, last push too old, ...); then, as `# topic: text` lines,
what an operator asking "why" wants to know either way (health.notes(): the kernel headers the
XDP program was compiled against).

With httpAuth (sinks/guard.py) the port speaks TLS only, /metrics answers the API server's verdict
(401, 403, 503 without data), and /readyz says only "ok" or "not ready": the reasons and the
headers line name interfaces, targets and the kernel release (docs/security.md).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from xtrace_agent.config import AgentConfig, parse_listen
from xtrace_agent.errors import AgentFailure
from xtrace_agent.health import Health
from xtrace_agent.samples import Report
from xtrace_agent.sinks.exposition import metrics_text
from xtrace_agent.sinks.guard import Guard

log = logging.getLogger("xtrace.http")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """A Sink that keeps the latest report and serves it with the health endpoints."""

    def __init__(self, cfg: AgentConfig, health: Health):
        self.cfg = cfg
        self.health = health
        self.host, self.port = parse_listen(cfg.http_listen)
        self._latest: Report | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.guard = Guard.from_config(cfg)

    def write(self, report: Report) -> None:
        self._latest = report  # one reference swap; its samples are made when scraped, not each interval

    def metrics_text(self) -> str:
        latest = self._latest
        samples = (latest.samples if latest else []) + self.health.samples(time.time())
        return metrics_text(samples, self.cfg.labels)

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "xtrace-agent"

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    verdict = owner.guard.verdict(self.headers.get("Authorization")) if owner.guard else None
                    if verdict is not None and verdict.status != 200:
                        self._refuse(verdict.status)
                        return
                    try:
                        text = owner.metrics_text()
                    except ValueError as e:  # a metric with no definition: a bug, named, never served untyped
                        log.error("/metrics: %s", e)
                        self._answer(500, f"{e}\n")
                    else:
                        self._answer(200, text, CONTENT_TYPE)
                elif path == "/healthz":
                    self._answer(200, "ok\n")
                elif path == "/readyz" and owner.guard:
                    ready = not owner.health.reasons()
                    self._answer(200 if ready else 503, "ok\n" if ready else "not ready\n")
                elif path == "/readyz":
                    reasons = owner.health.reasons()
                    notes = "".join(f"# {t}: {n}\n" for t, n in sorted(owner.health.notes().items()))
                    if reasons:
                        self._answer(503, "".join(f"{c}: {r}\n" for c, r in sorted(reasons.items())) + notes)
                    else:
                        self._answer(200, "ok\n" + notes)
                else:
                    self._answer(404, "not found: try /metrics, /healthz or /readyz\n")

            def _refuse(self, status: int) -> None:
                # the reason stays in the agent: a caller learns only which of the three it was
                text = {401: "unauthorized: a bearer token the API server accepts is needed\n",
                        403: "forbidden: get on /metrics is not granted to this token's user\n",
                        503: "unavailable: no verdict from the Kubernetes API server, try again\n"}[status]
                self._answer(status, text, extra={"WWW-Authenticate": 'Bearer realm="xtrace"'} if status == 401 else {})

            def _answer(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8",
                        extra: dict[str, str] | None = None) -> None:
                body = text.encode()
                self.send_response(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: keep quiet
                pass

        server_class = ThreadingHTTPServer
        if ":" in self.host:
            class server_class(ThreadingHTTPServer):  # noqa: N801
                address_family = socket.AF_INET6
        if self.guard:
            server_class = self.guard.server_class(server_class)
        try:
            self._server = server_class((self.host, self.port), Handler)
        except OSError as e:
            where = f"{self.host}:{self.port}"
            if e.errno == errno.EADDRINUSE:
                raise AgentFailure(f"http: port {self.port} is already in use ({where}): "
                                   "set httpListen to a free address") from None
            raise AgentFailure(f"http: cannot listen on {where}: {e.strerror}: set httpListen") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # the real one when 0 was asked
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s:%d%s", self.host, self.port,
                 " (TLS, token review on /metrics)" if self.guard else "")

    def close(self, timeout: float) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread:
            self._thread.join(timeout)
