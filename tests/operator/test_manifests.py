"""The install manifests: valid Kubernetes objects, and the kustomization lists every one of them."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.operator.conftest import ROOT

MANIFESTS = ROOT / "deploy" / "manifests"


def test_kustomization_installs_everything_valid():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert "../crds" in kustomization["resources"]
    files = [MANIFESTS / r for r in kustomization["resources"] if r.endswith(".yaml")]
    assert sorted(p.name for p in files) == sorted(p.name for p in MANIFESTS.glob("*.yaml")
                                                   if p.name != "kustomization.yaml")
    kinds = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.33", strict=True)
            kinds.append(doc["kind"])
    # the second binding: the agents' reviews for metrics.auth (docs/security.md)
    assert sorted(kinds) == ["ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Namespace",
                             "ServiceAccount"]


def test_operator_rbac_is_least_privilege():
    docs = list(yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()))
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]  # agents mount them; the operator never reads them
    pods = next(r for r in rules if "pods" in r["resources"])
    assert sorted(pods["verbs"]) == ["list", "watch"]


def test_operator_deployment_runs_one_standalone_replica_with_liveness():
    deploy = yaml.safe_load((MANIFESTS / "operator.yaml").read_text())
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert any(a.startswith("--liveness=") for a in c["args"]) and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"]["memory"]
