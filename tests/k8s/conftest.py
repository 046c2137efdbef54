"""A real Kubernetes control plane for the tests in this folder, started once per test session.

tools/cluster/cluster.py runs etcd, kube-apiserver (Node,RBAC), kube-controller-manager, kube-scheduler
and kwok (three fake nodes that play the kubelet) on 127.0.0.1 with ports of their own, so a developer's
`make cluster` is left alone. Binaries come from tools/cluster/build.sh (`make test` builds them first).
Without them the tests skip, except under XTRACE_REQUIRE_CLUSTER=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.helpers import netns

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER_TOOL = ROOT / "tools" / "cluster" / "cluster.py"
REQUIRE = os.environ.get("XTRACE_REQUIRE_CLUSTER") == "1"
BIN = pathlib.Path(sys.executable).parent
OPERATOR_NS = "xtrace-system"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.2) -> Any:
    """tests.helpers.netns.wait_for, polling less often: each check here runs kubectl."""
    return netns.wait_for(check, timeout, what, every)


class Cluster:
    """kubectl and a few reads against the test control plane."""

    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.server: str = info["server"]
        self.kubeconfig: str = info["kubeconfig"]
        self.kubectl_bin: str = info["kubectl"]
        self.nodes: list[str] = [n["name"] for n in info["nodes"]]
        self.ca = pathlib.Path(self.kubeconfig).parent / "pki" / "ca.crt"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, kubeconfig: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.kubectl_bin, "--kubeconfig", kubeconfig or self.kubeconfig, *args],
                              input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def get(self, *args: str) -> dict[str, Any] | None:
        """`kubectl get ... -o json`; None when the object does not exist."""
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr.strip())
        return json.loads(proc.stdout)

    def apply(self, obj: dict[str, Any] | str, namespace: str | None = None, check: bool = True,
              kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text, check=check, kubeconfig=kubeconfig)

    def namespace(self) -> str:
        name = f"xt-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name

    def token(self, namespace: str, sa: str, *extra: str) -> str:
        """A token for a ServiceAccount from the TokenRequest API (what a pod's projected volume holds)."""
        return self.kubectl("create", "token", sa, "-n", namespace, "--duration=2h", *extra).stdout.strip()

    def kubeconfig_for(self, token: str, path: pathlib.Path) -> str:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
        }
        path.write_text(json.dumps(config))
        return str(path)

    def monitor(self, namespace: str, name: str, spec: dict[str, Any], check: bool = True,
                kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        return self.apply({"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec},
                          check=check, kubeconfig=kubeconfig)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        mon = self.get("xtm", name, "-n", namespace) or {}
        return mon.get("status") or {}

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        for c in self.status(namespace, name).get("conditions") or []:
            if c["type"] == type_:
                return c
        return {}

    def pods(self, namespace: str, monitor: str) -> list[dict[str, Any]]:
        got = self.get("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={monitor}") or {"items": []}
        return got["items"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if shutil.which("go") is None and not REQUIRE:
        pytest.skip("no Go toolchain to build the control plane (make cluster)")
    state = pathlib.Path(tempfile.mkdtemp(prefix="xtrace-cluster-"))
    for _attempt in range(2):  # another process may take one of the free ports between check and bind
        proc = subprocess.run([sys.executable, str(CLUSTER_TOOL), "up", "--state", str(state),
                               "--port-base", "auto", "--json"],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if REQUIRE:
            pytest.fail(f"XTRACE_REQUIRE_CLUSTER=1 but the control plane did not start: {why}", pytrace=False)
        pytest.skip(f"no control plane: {why}")
    try:
        yield Cluster(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run([sys.executable, str(CLUSTER_TOOL), "down", "--state", str(state)], capture_output=True)


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Cluster:
    """`kubectl apply -k deploy/manifests`, as a user's first step; the CRD Established."""
    cluster.kubectl("apply", "-k", str(ROOT / "deploy" / "manifests"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/xtracemonitors.xtrace.io", "--timeout=60s")
    return cluster


@pytest.fixture(scope="session")
def operator_kubeconfig(installed: Cluster, tmp_path_factory) -> str:
    """Credentials of the ServiceAccount deploy/manifests ships, not the admin's: proves its RBAC."""
    token = installed.token(OPERATOR_NS, "xtrace-operator")
    return installed.kubeconfig_for(token, tmp_path_factory.mktemp("operator") / "kubeconfig")


class Operator:
    """`xtrace-operator run` as a subprocess, as the Deployment runs it."""

    def __init__(self, kubeconfig: str, log: pathlib.Path):
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "XTRACE_STATUS_FLUSH_SECONDS": "0.5"}
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([str(BIN / "xtrace-operator"), "run", "--verbose"], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: str, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(operator_kubeconfig, tmp_path_factory.mktemp("oplog") / "operator.log").start()
    try:
        yield op
    finally:
        code = op.stop()
        assert code == 0, f"operator exited {code} on SIGTERM:\n{op.text()[-3000:]}"
        assert "Traceback" not in op.text(), op.text()[-5000:]


def load_yaml_docs(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
