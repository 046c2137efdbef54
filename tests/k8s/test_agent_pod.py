"""The agent's own readiness on its pod, through the real API server and the agent's real ServiceAccount.

kwok's pods run nothing, so the real `xtrace-agent` runs here as a local process standing in for one
of the DaemonSet's pods: the pod's name and namespace in its environment, the API server as
`KUBERNETES_SERVICE_HOST/PORT`, and at the in-pod path /var/run/secrets/kubernetes.io/serviceaccount
(bind-mounted in a private mount namespace) a token of the agent's ServiceAccount bound to that pod,
from the TokenRequest API. What it may do is what the operator's Role grants, nothing more.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from tests.conftest import need
from tests.k8s.conftest import Cluster, Operator, wait_for
from tests.k8s.test_operator import xdp

pytestmark = [pytest.mark.k8s, pytest.mark.kernel]

AGENT = str(pathlib.Path(sys.executable).parent / "xtrace-agent")
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
CONDITION = "xtrace.io/AgentReady"


def _condition(cluster: Cluster, ns: str, pod: str) -> dict:
    got = cluster.get("pod", pod, "-n", ns) or {}
    return next((c for c in (got.get("status") or {}).get("conditions") or [] if c["type"] == CONDITION), {})


def _not_ready_nodes(cluster: Cluster, ns: str, name: str) -> list[dict]:
    return cluster.status(ns, name).get("notReadyNodes") or []


@pytest.fixture
def agent_in_pod(installed: Cluster, operator: Operator, tmp_path: pathlib.Path):
    """(cluster, namespace, monitor, pod, node, interface, start) for an agent standing in for one DaemonSet pod."""
    need(os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare(1) are needed")
    ns = installed.namespace()
    spec = xdp(ns)
    iface = spec["interfaces"][0]
    installed.monitor(ns, "ready", spec)
    pods = wait_for(lambda: len(installed.pods(ns, "ready")) == 3 and installed.pods(ns, "ready"), 60, "3 pods")
    pod, node = pods[0]["metadata"]["name"], pods[0]["spec"]["nodeName"]
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(installed.token(ns, "xtrace-ready", "--bound-object-kind=Pod",
                                              f"--bound-object-name={pod}"))
    shutil.copy(installed.ca, sa / "ca.crt")
    (sa / "namespace").write_text(ns)
    config = yaml.safe_load(installed.get("cm", "xtrace-ready", "-n", ns)["data"]["agent.yaml"])
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        # The mount namespace is private: /run/secrets here holds only this test's token.
        os.makedirs("/run/secrets", exist_ok=True)
        script = (f"mount -t tmpfs tmpfs /run/secrets && mkdir -p {SA_PATH} && mount --bind {sa} {SA_PATH} && "
                  f'exec "$@"')
        port = installed.info["ports"]["apiserver"]
        env = {**os.environ, "POD_NAME": pod, "POD_NAMESPACE": ns, "NODE_NAME": node,
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "agent",
             AGENT, "--config", str(tmp_path / "agent.yaml"), "--sysfs", "/sys", "--http-listen", "",
             "--output", "none", "--interval", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    try:
        yield installed, ns, "ready", pod, node, iface, start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        subprocess.run(["ip", "link", "del", iface], capture_output=True)


def test_a_missing_interface_reaches_the_pod_and_the_monitor_then_clears(agent_in_pod):
    cluster, ns, name, pod, node, iface, start = agent_in_pod
    agent = start()
    cond = wait_for(lambda: _condition(cluster, ns, pod).get("status") == "False" and _condition(cluster, ns, pod),
                    40, "the agent's condition on its pod", every=0.5)
    assert cond["reason"] == "InterfaceNotFound" and iface in cond["message"], cond
    listed = wait_for(lambda: [n for n in _not_ready_nodes(cluster, ns, name) if n["node"] == node], 30,
                      "the node in the monitor's status", every=0.5)
    assert listed[0]["reason"].startswith("InterfaceNotFound") and iface in listed[0]["reason"]
    degraded = cluster.condition(ns, name, "Degraded")
    assert degraded["status"] == "True" and node in degraded["message"]

    # the interface appears: the agent attaches, says so on its pod, and the monitor follows
    subprocess.run(["ip", "link", "add", iface, "type", "veth", "peer", "name", iface + "p"], check=True)
    subprocess.run(["ip", "link", "set", iface, "up"], check=True)
    subprocess.run(["ip", "link", "set", iface + "p", "up"], check=True)
    wait_for(lambda: _condition(cluster, ns, pod).get("status") == "True", 40, "AgentReady True", every=0.5)
    wait_for(lambda: not _not_ready_nodes(cluster, ns, name), 30, "the node no longer listed", every=0.5)
    assert cluster.condition(ns, name, "Ready")["status"] == "True"
    # kwok's own conditions were merged with, not replaced by, the agent's
    conditions = {c["type"] for c in cluster.get("pod", pod, "-n", ns)["status"]["conditions"]}
    assert {"Ready", "PodScheduled", CONDITION} <= conditions
    assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""


def test_the_agents_token_can_do_nothing_else(agent_in_pod, tmp_path):
    """403 for a Secret in its namespace and for a pod's status in another namespace."""
    cluster, ns, name, pod, node, iface, start = agent_in_pod
    token = cluster.token(ns, "xtrace-ready", "--bound-object-kind=Pod", f"--bound-object-name={pod}")
    kc = cluster.kubeconfig_for(token, tmp_path / "agent-kubeconfig")
    cluster.kubectl("create", "secret", "generic", "vm-password", "-n", ns, "--from-literal=password=x")
    other = cluster.namespace()
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "victim", "namespace": other},
                   "spec": {"containers": [{"name": "c", "image": "example.invalid/x"}]}})
    denied = cluster.kubectl("get", "secret", "vm-password", "-n", ns, kubeconfig=kc, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    body = {"status": {"conditions": [{"type": CONDITION, "status": "False", "reason": "Test"}]}}
    # the agent's own request: a strategic merge patch of pods/status, no GET before it (it may not read)
    assert _patch_status(cluster, token, other, "victim", body) == 403
    assert _patch_status(cluster, token, ns, pod, body) == 200


def _patch_status(cluster: Cluster, token: str, ns: str, pod: str, body: dict) -> int:
    ctx = ssl.create_default_context(cafile=str(cluster.ca))
    req = urllib.request.Request(f"{cluster.server}/api/v1/namespaces/{ns}/pods/{pod}/status", method="PATCH",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/strategic-merge-patch+json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
