"""A monitor with metrics.auth: kubernetes, end to end on the real control plane: what the operator renders
(the agents' ServiceAccount in the auth-delegator binding, HTTPS probes, a ServiceMonitor a scraper can
use to get in), and the real `xtrace-agent` serving it.

kwok's pods run nothing, so the agent runs as a local process standing in for one DaemonSet pod, as in
test_agent_pod.py: the operator's ConfigMap as its config (the sysfs root, the listen address and
interval changed for this host), a token of the ServiceAccount the operator created, bound to that pod,
at the in-pod path (a private mount namespace), the API server as KUBERNETES_SERVICE_HOST/PORT. It runs
in rdma mode on a copy of the committed sysfs fixture and pushes to a real VictoriaMetrics, so that
"collecting and pushing" can be watched while the API server is stopped.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.conftest import need
from tests.k8s.conftest import Cluster, Operator, wait_for
from tests.k8s.test_metrics_auth import READER_ROLE, _bind, _claims_of, _signed
from tests.k8s.test_operator import _stand_in_crd, xdp
from tests.rdma.util import FIXTURE, write_counter

pytestmark = pytest.mark.k8s

AGENT = str(pathlib.Path(sys.executable).parent / "xtrace-agent")
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
BINDING = "xtrace-agents-metrics-auth"


def _subjects(cluster: Cluster) -> list[tuple[str, str]]:
    crb = cluster.get("clusterrolebinding", BINDING) or {}
    return [(s["namespace"], s["name"]) for s in crb.get("subjects") or []]


def get(port: int, path: str, token: str | None = None, timeout: float = 10) -> tuple[int, str, dict]:
    """GET over TLS without verification (the agent's own certificate), as the scrape object says."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)
    except (urllib.error.URLError, OSError) as e:  # not listening (yet), or not speaking TLS
        return 0, str(e), {}


class SecuredAgent:
    def __init__(self, cluster: Cluster, ns: str, port: int, proc: subprocess.Popen, sysfs: pathlib.Path):
        self.cluster, self.ns, self.port, self.proc, self.sysfs = cluster, ns, port, proc, sysfs

    def token(self, sa: str) -> str:
        return self.cluster.token(self.ns, sa)


@pytest.fixture
def secured(installed: Cluster, operator: Operator, victoria_metrics, tmp_path):
    need(os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare(1) are needed")
    # ServiceMonitor, not VMServiceScrape: test_operator.py needs the VictoriaMetrics API absent (the same
    # endpoint fields: tests/operator/test_metrics_render.py checks both kinds)
    installed.apply(_stand_in_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "v1"))
    installed.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    ns = installed.namespace()
    port = xdp(ns)["port"]
    installed.monitor(ns, "sec", {"mode": "rdma", "port": port, "metrics": {"auth": "kubernetes"},
                                  "scrape": {"kind": "ServiceMonitor", "interval": "15s"},
                                  "victoriaMetrics": {"url": victoria_metrics.write_url}})
    wait_for(lambda: (ns, "xtrace-sec") in _subjects(installed), 60, "the agents' SA in the binding")
    pods = wait_for(lambda: [p for p in installed.pods(ns, "sec") if p["spec"].get("nodeName")], 60,
                    "the agent pods scheduled")
    pod, node = pods[0]["metadata"]["name"], pods[0]["spec"]["nodeName"]
    for sa in ("reader", "stranger"):
        installed.kubectl("create", "serviceaccount", sa, "-n", ns)
    installed.apply(next(d for d in READER_ROLE.read_text().split("---") if "kind: ClusterRole\n" in d))
    _bind(installed, f"{ns}-reader", "xtrace-metrics-reader", ns, "reader")

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(installed.token(ns, "xtrace-sec", "--bound-object-kind=Pod",
                                              f"--bound-object-name={pod}"))
    shutil.copy(installed.ca, sa / "ca.crt")
    (sa / "namespace").write_text(ns)
    sysfs = tmp_path / "sysfs"
    shutil.copytree(FIXTURE, sysfs, symlinks=True)
    config = yaml.safe_load(installed.get("cm", "xtrace-sec", "-n", ns)["data"]["agent.yaml"])
    assert config["httpAuth"] == {"mode": "kubernetes"}
    config.update(sysfs=str(sysfs), httpListen=f"127.0.0.1:{port}", interval=0.5, output="none")
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    os.makedirs("/run/secrets", exist_ok=True)
    script = f"mount -t tmpfs tmpfs /run/secrets && mkdir -p {SA_PATH} && mount --bind {sa} {SA_PATH} && exec \"$@\""
    env = {**os.environ, "POD_NAME": pod, "POD_NAMESPACE": ns, "NODE_NAME": node,
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(installed.info["ports"]["apiserver"])}
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "agent",
                             AGENT, "--config", str(tmp_path / "agent.yaml")], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    agent = SecuredAgent(installed, ns, port, proc, sysfs)
    try:
        wait_for(lambda: proc.poll() is not None or get(port, "/readyz")[0] == 200, 30, "the agent ready")
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        yield agent
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        text = (tmp_path / "agent.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


def test_what_the_operator_renders_for_a_scraper_to_get_in(secured: SecuredAgent):
    cluster, ns = secured.cluster, secured.ns
    scrape = cluster.get("servicemonitors.monitoring.coreos.com", "xtrace-sec", "-n", ns)
    [endpoint] = scrape["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}  # the agent's own certificate
    pod = cluster.get("ds", "xtrace-sec", "-n", ns)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    # what that endpoint does against the real agent: the reader's token in, over TLS
    status, body, headers = get(secured.port, "/metrics", secured.token("reader"))
    assert status == 200 and "xtrace_rdma_port_transmit_bytes_total{" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_who_gets_what(secured: SecuredAgent):
    port = secured.port
    assert get(port, "/metrics", secured.token("reader"))[0] == 200
    status, body, _ = get(port, "/metrics", secured.token("stranger"))
    assert status == 403 and "xtrace_" not in body
    for token in (None, "", "garbage", secured.token("reader")[:-4] + "AAAA"):
        status, body, headers = get(port, "/metrics", token)
        assert status == 401 and "xtrace_" not in body, token
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    claims = _claims_of(secured.token("reader"))
    claims = {k: v for k, v in claims.items() if k in ("iss", "aud", "sub", "kubernetes.io")}
    claims["kubernetes.io"] = {k: v for k, v in claims["kubernetes.io"].items() if k in ("namespace", "serviceaccount")}
    now = int(time.time())
    expired = _signed(secured.cluster, {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 60})
    assert get(port, "/metrics", expired)[0] == 401
    # the kubelet's probes: no token, an answer, nothing else (no reasons, no kernel headers line)
    assert get(port, "/healthz")[:2] == (200, "ok\n")
    assert get(port, "/readyz")[:2] == (200, "ok\n")
    # plain HTTP on the TLS port gets no data
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"xtrace_" not in answer


def _pushed(vm, sysfs_value: int) -> dict:
    """The pushed transmit bytes of mlx5_0/1 when they are the counter's value (4-octet words) x 4."""
    got = vm.latest('{__name__="xtrace_rdma_port_transmit_bytes_total",device="mlx5_0",port="1"}')
    return got if any(v == sysfs_value * 4 for v in got.values()) else {}


def test_api_server_stopped_503_while_collecting_and_pushing_go_on(secured: SecuredAgent, victoria_metrics):
    cluster, port = secured.cluster, secured.port
    stranger = secured.token("stranger")  # not yet reviewed: nothing cached for it
    pid = cluster.info["pids"]["kube-apiserver"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, body, _ = get(port, "/metrics", stranger, timeout=20)
        assert status == 503 and "xtrace_" not in body, (status, body)
        assert time.monotonic() - t0 < 10
        # the counters move on the node; the agent collects them and pushes them all the same
        moved = 250_000_000_000 + 1_000_000  # up from the fixture's value: not a counter reset
        write_counter(str(secured.sysfs), "mlx5_0", 1, "counters", "port_xmit_data", f"{moved}\n")
        wait_for(lambda: _pushed(victoria_metrics, moved), 20, "the new counter pushed", every=0.5)
        assert get(port, "/healthz")[0] == 200  # the probes do not ask the API server
        assert secured.proc.poll() is None
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 60,
             "the API server back", every=0.5)
    assert get(port, "/metrics", stranger)[0] == 403  # asked again: the 503 was not cached
    assert get(port, "/metrics", secured.token("reader"))[0] == 200


def test_deleting_the_monitor_takes_its_agents_out_of_the_binding(secured: SecuredAgent):
    cluster, ns = secured.cluster, secured.ns
    assert (ns, "xtrace-sec") in _subjects(cluster)
    cluster.kubectl("delete", "xtm", "sec", "-n", ns, "--timeout=60s")
    wait_for(lambda: (ns, "xtrace-sec") not in _subjects(cluster), 30, "the subject removed")
