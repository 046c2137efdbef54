"""Pod attribution on the real control plane: a monitor with `rdma.podAttribution` gets the kubelet's
pod-resources directory mounted read-only in its agent pods, and nothing else changes; without it,
no such mount. The API server stores what the operator applied (schema pruning would drop an
unknown field silently), and the DaemonSet controller's pods carry it."""

from __future__ import annotations

import pytest
import yaml

from tests.k8s.conftest import Cluster, Operator, wait_for

pytestmark = pytest.mark.k8s

SOCKET_DIR = "/var/lib/kubelet/pod-resources"


def nccl(ns: str, **rdma) -> dict:
    spec = {"mode": "nccl", "port": 20000 + int(ns[3:], 16) % 40000}
    if rdma:
        spec["rdma"] = rdma
    return spec


def _pod_spec(cluster: Cluster, ns: str, name: str) -> dict:
    ds = wait_for(lambda: cluster.get("ds", f"xtrace-{name}", "-n", ns), 60, "the DaemonSet")
    return ds["spec"]["template"]["spec"]


def _socket_volumes(spec: dict) -> list[dict]:
    return [v for v in spec["volumes"] if v.get("hostPath", {}).get("path", "").startswith("/var/lib/kubelet")]


def test_attribution_mounts_the_socket_directory_and_nothing_more(installed: Cluster, operator: Operator):
    ns = installed.namespace()
    installed.monitor(ns, "plain", nccl(ns))
    installed.monitor(ns, "owned", {**nccl(ns, podAttribution=True), "port": nccl(ns)["port"] + 1})
    plain, owned = _pod_spec(installed, ns, "plain"), _pod_spec(installed, ns, "owned")
    assert _socket_volumes(plain) == []
    assert _socket_volumes(owned) == [{"name": "pod-resources",
                                       "hostPath": {"path": SOCKET_DIR, "type": "Directory"}}]
    mounts = owned["containers"][0]["volumeMounts"]
    assert {"name": "pod-resources", "mountPath": SOCKET_DIR, "readOnly": True} in mounts

    def strip(spec: dict) -> dict:  # everything but the mount, the config hash and the names
        spec = yaml.safe_load(yaml.safe_dump(spec))
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "pod-resources"]
        c = spec["containers"][0]
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "pod-resources"]
        c["ports"] = []
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            c[probe]["httpGet"]["port"] = 0
        spec["volumes"] = [{**v, "configMap": {}} if "configMap" in v else v for v in spec["volumes"]]
        spec.pop("serviceAccountName")
        spec.pop("serviceAccount", None)
        return spec

    assert strip(owned) == strip(plain)  # same capabilities, same other mounts: the socket alone
    # the agent is told to use it
    config = installed.get("configmap", "xtrace-owned", "-n", ns)["data"]["agent.yaml"]
    assert yaml.safe_load(config)["rdma"] == {"podAttribution": True}
    assert "rdma" not in yaml.safe_load(installed.get("configmap", "xtrace-plain", "-n", ns)["data"]["agent.yaml"])
    # and the pods the DaemonSet controller made carry the mount
    pods = wait_for(lambda: installed.pods(ns, "owned") or None, 60, "agent pods")
    assert all(any(v["name"] == "pod-resources" for v in p["spec"]["volumes"]) for p in pods)


def test_attribution_off_again_removes_the_mount(installed: Cluster, operator: Operator):
    ns = installed.namespace()
    installed.monitor(ns, "web", nccl(ns, podAttribution=True))
    wait_for(lambda: _socket_volumes(_pod_spec(installed, ns, "web")) or None, 60, "the mount")
    installed.monitor(ns, "web", nccl(ns, podAttribution=False))
    wait_for(lambda: not _socket_volumes(_pod_spec(installed, ns, "web")), 60, "the mount gone")


def test_attribution_needs_an_rdma_mode(installed: Cluster):
    ns = installed.namespace()
    out = installed.monitor(ns, "x", {"mode": "xdp", "interfaces": ["eth9"], "rdma": {"podAttribution": True}},
                            check=False)
    assert out.returncode != 0 and "rdma" in out.stderr
