"""The metrics port behind Kubernetes authentication: TLS on every connection, a verdict for /metrics.

`Guard.server_class(base)` makes the HTTP server accept TLS only: each accepted socket is wrapped with
the certificate current at that moment (servingtls.ServingTLS, rotation without restart) and its
handshake runs in the connection's own thread with a deadline, so a slow or plain-HTTP client holds
one thread for at most HANDSHAKE_SECONDS and never the accept loop. A failed handshake is logged at
debug level only (port scanners, probes that speak HTTP), never as a traceback.

`Guard.verdict(header)` is kubeauth.Reviewer's: 200, 401, 403 or 503. The probes (/healthz, /readyz)
ask no token, as the kubelet sends none; with the guard on they say only "ok" or "not ready".
"""

from __future__ import annotations

import logging
import socket
import ssl
from http.server import ThreadingHTTPServer

from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import AgentFailure
from xtrace_agent.kubeauth import Reviewer, Verdict
from xtrace_agent.servingtls import ServingTLS

log = logging.getLogger("xtrace.http")

HANDSHAKE_SECONDS = 10.0


class Guard:
    def __init__(self, tls: ServingTLS, reviewer: Reviewer):
        self.tls, self.reviewer = tls, reviewer

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Guard | None:
        """The guard httpAuth asks for, or None (mode none); one clear line when it cannot be had."""
        auth = cfg.http_auth
        if auth.mode != "kubernetes":
            return None
        try:
            tls = ServingTLS(auth.cert_file, auth.key_file)
        except ssl.SSLError as e:  # before OSError: it is one
            raise AgentFailure(f"httpAuth: {auth.cert_file} and {auth.key_file} are not a usable certificate and "
                               f"key ({e.reason or e})") from None
        except OSError as e:
            raise AgentFailure(f"httpAuth: cannot read {e.filename or auth.cert_file}: {e.strerror}") from None
        reviewer = Reviewer.from_environment()
        if reviewer is None:
            raise AgentFailure("httpAuth: kubernetes needs the API server (KUBERNETES_SERVICE_HOST) and the pod's "
                               "service-account token: run in a pod with automountServiceAccountToken")
        log.info("metrics: TLS with Kubernetes token review on /metrics; certificate %s",
                 f"self-signed at start, sha256 {tls.fingerprint}" if tls.generated else f"from {auth.cert_file}")
        return cls(tls, reviewer)

    def verdict(self, authorization: str | None) -> Verdict:
        return self.reviewer.check(authorization)

    def server_class(self, base: type[ThreadingHTTPServer]) -> type[ThreadingHTTPServer]:
        guard = self

        class TLSServer(base):  # type: ignore[misc, valid-type]
            def get_request(self) -> tuple[socket.socket, object]:
                sock, addr = self.socket.accept()
                sock.settimeout(HANDSHAKE_SECONDS)
                try:
                    return guard.tls.context().wrap_socket(sock, server_side=True,
                                                           do_handshake_on_connect=False), addr
                except (OSError, ssl.SSLError):
                    sock.close()
                    raise

            def finish_request(self, request, client_address) -> None:
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError) as e:
                    log.debug("metrics: TLS handshake with %s failed: %s", client_address, e)
                    return
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address) -> None:  # a dropped client: no traceback
                log.debug("metrics: connection from %s ended early", client_address, exc_info=True)

        return TLSServer
