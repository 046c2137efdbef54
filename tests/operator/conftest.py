"""Fixtures for the operator tests: the samples, the CRD, and an API server (kmock or a real cluster).

Without KUBECONFIG the integration tests run against kmock's Kubernetes emulator; with
KUBECONFIG set they run against that cluster (the CRD must be installed there, and each test
uses its own namespace, deleted afterwards).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

import kopf
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "crds" / "xtrace.io_xtracemonitors.yaml"
SAMPLES = sorted((ROOT / "deploy" / "manifests" / "samples").glob("*.yaml"))
REAL_CLUSTER = bool(os.environ.get("KUBECONFIG"))
MONITORS_PATH = "/apis/xtrace.io/v1alpha1/namespaces/{ns}/xtracemonitors"

os.environ.setdefault("XTRACE_STATUS_FLUSH_SECONDS", "0.5")  # before xtrace_operator.handlers is imported

_server: dict[str, str] = {}


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo | None:
    """Never let kopf fall back to a real cluster while a test points it at kmock."""
    if REAL_CLUSTER:
        return kopf.login_with_kubeconfig()
    return kopf.ConnectionInfo(server=_server["url"], insecure=True)


def load_sample(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request) -> dict[str, Any]:
    return load_sample(request.param)


class Api:
    """Blocking calls through the operator's own client, run off the event loop (kmock serves on it)."""

    def __init__(self, namespace: str, kmock: Any = None):
        self.namespace, self.kmock = namespace, kmock

    async def version(self, resource: str, name: str) -> str:
        """What changes on every write to an object: resourceVersion (kmock: its history length)."""
        if self.kmock is None:
            group_version, plural = resource.rsplit("/", 1)
            prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            obj = await self.get(f"{prefix}/namespaces/{{ns}}/{plural}/{name}")
            # Not resourceVersion: the DaemonSet controller's status writes change it too.
            return str(sorted((m.get("manager"), m.get("operation"), m.get("time"))
                              for m in obj["metadata"].get("managedFields") or []
                              if m.get("subresource") != "status"))
        return str(len(self.kmock.objects[resource, self.namespace, name, :]))

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        from xtrace_operator import kube
        kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
        return await asyncio.to_thread(kube.request, method, path.format(ns=self.namespace), body, None, kind)

    def monitor_body(self, name: str, spec: dict[str, Any], created: str = "2025-01-01T00:00:00Z") -> dict:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if not REAL_CLUSTER:
            # kmock stores objects exactly as sent: give it what the API server would add.
            meta.update(uid=str(uuid.uuid4()), resourceVersion="1", generation=1, creationTimestamp=created)
        return {"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor", "metadata": meta, "spec": spec}

    async def create_monitor(self, name: str, spec: dict[str, Any], **kw: Any) -> dict:
        return await self.call("POST", MONITORS_PATH, self.monitor_body(name, spec, **kw))

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    # --- standing in for the DaemonSet controller and the kubelet (kmock has neither) ------------
    async def set_daemonset_status(self, monitor: str, desired: int, ready: int) -> None:
        await self.call("PATCH", f"/apis/apps/v1/namespaces/{{ns}}/daemonsets/xtrace-{monitor}/status", {"status": {
            "desiredNumberScheduled": desired, "numberReady": ready, "updatedNumberScheduled": desired,
            "currentNumberScheduled": desired, "numberMisscheduled": 0, "observedGeneration": 1}})

    async def create_agent_pod(self, monitor: str, name: str, node: str, status: dict[str, Any]) -> None:
        """An agent pod of `monitor` on `node`, labelled as the DaemonSet's pods are."""
        from xtrace_operator import render
        await self.call("POST", "/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": f"pod-{name}", "resourceVersion": "1",
                         "labels": {render.INSTANCE_LABEL: monitor, **render.OWNED}},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "x"}]},
            "status": status})

    async def eventually(self, check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        """Wait until `check()` (an async callable) returns something truthy."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = None
        while asyncio.get_running_loop().time() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or check.__name__}; last: {last!r}")


@pytest.fixture
async def api(kmock) -> Any:
    """The API the tests and the operator talk to (kmock starts either way; unused on a real cluster)."""
    from xtrace_operator import kube
    if REAL_CLUSTER:
        kube.configure()
        ns = f"xtrace-test-{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(kube.request, "POST", "/api/v1/namespaces",
                                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        try:
            yield Api(ns)
        finally:
            await asyncio.to_thread(kube.request, "DELETE", f"/api/v1/namespaces/{ns}")
        return
    kmock.resources.load_bundled()
    kmock.resources["xtrace.io/v1alpha1/xtracemonitors"] = kmock.ResourceInfo(
        kind="XTraceMonitor", singular="xtracemonitor", namespaced=True, shortnames={"xtm"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"})
    _server["url"] = str(kmock.url).rstrip("/")
    kube.configure(_server["url"], verify_ssl=False)
    yield Api("xtrace-test", kmock)


@pytest.fixture
async def operator(api: Api):
    """The operator, running in-process as `xtrace-operator run` would run it."""
    from kopf.testing import KopfRunner
    scope = ["--namespace", api.namespace] if REAL_CLUSTER else ["--all-namespaces"]
    runner = KopfRunner(["run", "--standalone", "-m", "xtrace_operator.handlers", *scope], timeout=60)
    await asyncio.to_thread(runner.__enter__)
    try:
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
