"""The chart on its own: `helm lint`, the same objects as the kustomize manifests, each value where it lands.

No cluster: `helm template` and `kubectl kustomize` render offline. The comparison is what keeps the
two installs from drifting: with its default values the chart renders exactly the objects of
`kubectl kustomize deploy/manifests`, except the Namespace (Helm's `--create-namespace` makes it) and
the labels only Helm adds (HELM_LABELS).
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CHART, ROOT, Helm, kustomize

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
HELM_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart"}


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _without_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels") or {}
        assert HELM_LABELS <= labels.keys() or meta is not obj["metadata"], f"{_key(obj)} lacks Helm's labels"
        for k in HELM_LABELS:
            labels.pop(k, None)
    return obj


def _by_key(objs: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out = {_key(o): o for o in objs}
    assert len(out) == len(objs), "two objects with one kind, namespace and name"
    return out


def test_lint(helm: Helm):
    proc = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_chart_renders_what_kustomize_renders(helm: Helm, kubectl_bin: str):
    kust = _by_key(kustomize(kubectl_bin, ROOT / "deploy" / "manifests"))
    chart = _by_key(helm.template("--include-crds"))
    namespace = kust.pop(("Namespace", "", "xtrace-system"))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert sorted(chart) == sorted(kust)
    for key, obj in chart.items():
        want = kust[key]
        got = obj if key[0] == "CustomResourceDefinition" else _without_helm_labels(obj)
        assert got == want, f"{key}: the chart and deploy/manifests differ"


def test_the_charts_crd_is_the_one_in_deploy_crds():
    """Byte for byte: `make helm-crd` copies it; never edit the chart's copy."""
    name = "xtrace.io_xtracemonitors.yaml"
    assert (CHART / "crds" / name).read_bytes() == (ROOT / "deploy" / "crds" / name).read_bytes(), \
        "deploy/helm/xtrace/crds is stale: run `make helm-crd`"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in (ROOT / "deploy" / "crds").glob("*.yaml") if p.name != "kustomization.yaml")


def test_chart_version_is_the_project_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == VERSION


def _operator(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    return dep


def test_values_land_where_they_belong(helm: Helm, tmp_path):
    values = {
        "image": {"registry": "registry.example:5000/team/", "tag": "1.2.3", "pullPolicy": "Always",
                  "pullSecrets": ["regcred"]},
        "operator": {"logLevel": "debug", "resources": {"requests": {"cpu": "10m"}, "limits": None},
                     "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                     "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                      "effect": "NoSchedule"}]},
        "secureMetrics": True,
        "monitors": {
            "uplinks": {"spec": {"mode": "xdp", "interfaces": ["eth0"]}},
            "fabric": {"namespace": "gpu", "spec": {"mode": "rdma", "image": "mirror.example/agent:9",
                                                    "metrics": {"auth": "none"}}},
        },
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    objs = helm.template("-f", str(path))
    pod = _operator(objs)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example:5000/team/xtrace-operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz", "--verbose"]
    # Helm merges values into the defaults: a changed key is replaced, a key set to null removed
    assert container["resources"] == {"requests": {"cpu": "10m", "memory": "128Mi"}}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == values["operator"]["nodeSelector"]
    assert pod["tolerations"] == values["operator"]["tolerations"]
    monitors = {(o["metadata"]["namespace"], o["metadata"]["name"]): o["spec"]
                for o in objs if o["kind"] == "XTraceMonitor"}
    assert monitors == {
        ("xtrace-system", "uplinks"): {"mode": "xdp", "interfaces": ["eth0"],
                                       "image": "registry.example:5000/team/xtrace-agent:1.2.3",
                                       "metrics": {"auth": "kubernetes"}},  # secureMetrics
        ("gpu", "fabric"): {"mode": "rdma", "image": "mirror.example/agent:9", "metrics": {"auth": "none"}},
    }
    # secureMetrics: the reader role of deploy/manifests/access, the same object
    [reader] = [o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "xtrace-metrics-reader"]
    sample = next(d for d in yaml.safe_load_all((ROOT / "deploy/manifests/access/metrics-reader.yaml").read_text())
                  if d["kind"] == "ClusterRole")
    assert _without_helm_labels(reader) == sample


def test_default_image_is_the_app_version(helm: Helm):
    objs = helm.template()
    assert not [o for o in objs if o["metadata"]["name"] == "xtrace-metrics-reader"]  # secureMetrics: false
    [container] = _operator(objs)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/xtrace-io/xtrace-operator:{VERSION}"
    assert "--verbose" not in container["args"]


@pytest.mark.parametrize("bad, message", [
    (["--set", "operator.logLevel=trace"], "operator.logLevel: must be info or debug, got trace"),
])
def test_bad_values_fail_with_one_clear_line(helm: Helm, bad: list[str], message: str):
    proc = helm("template", "xtrace", str(CHART), *bad, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
