"""/metrics, /healthz and /readyz of the agent's HTTP server."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.remote_write.conftest import report
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig
from xtrace_agent.errors import AgentFailure
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.sinks.http import MetricsServer
from xtrace_agent.sinks.remote_write import RemoteWriteSink  # noqa: F401 (registers its help texts)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


@pytest.fixture
def server():
    health = Health()
    srv = MetricsServer(AgentConfig(http_listen="127.0.0.1:0", labels={"cluster": "c1"}), health)
    srv.start()
    yield srv, f"http://127.0.0.1:{srv.port}"
    srv.close(2)


def test_metrics_parse_with_prometheus_client(server):
    srv, url = server
    srv.health.inc(sm.RW_SENT, 42, {"target": "vm"})
    srv.write(report(0, 3))
    srv.write(report(1, 3))  # only the latest report is served
    status, text, ctype = _get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    packets = families["xtrace_network_packets"]  # the parser strips _total from counters
    assert packets.type == "counter"
    values = {s.labels["src_port"]: s.value for s in packets.samples}
    assert values == {"10000": 20.0, "10001": 40.0, "10002": 60.0}
    assert all(s.labels["cluster"] == "c1" and "node" not in s.labels for s in packets.samples)
    sent = families["xtrace_remote_write_samples_sent"]
    assert sent.documentation == "Samples accepted by the receiver."
    assert sent.samples[0].value == 42


def test_healthz_and_readyz(server):
    srv, url = server
    assert _get(url + "/healthz")[:2] == (200, "ok\n")
    assert _get(url + "/readyz")[:2] == (200, "ok\n")
    srv.health.not_ready(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 130s")
    srv.health.not_ready(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface eth1 not found")
    status, text, _ = _get(url + "/readyz")
    assert status == 503
    assert text.splitlines() == ["remote_write:vm: no successful push to vm for 130s",
                                 "xdp:eth1: interface eth1 not found"]
    srv.health.ready("remote_write:vm")
    srv.health.ready("xdp:eth1")
    assert _get(url + "/readyz")[0] == 200
    assert _get(url + "/nope")[0] == 404


def test_port_in_use_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = MetricsServer(AgentConfig(http_listen=f"127.0.0.1:{port}"), Health())
        with pytest.raises(AgentFailure, match=f"port {port} is already in use.*httpListen"):
            srv.start()


def test_localhost_only_binding():
    srv = MetricsServer(AgentConfig(http_listen="127.0.0.1:0"), Health())
    srv.start()
    try:
        assert srv._server.server_address[0] == "127.0.0.1"
    finally:
        srv.close(1)
    assert MetricsServer(AgentConfig(), Health()).host == "0.0.0.0"
    assert MetricsServer(AgentConfig(), Health()).port == 9435
