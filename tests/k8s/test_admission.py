"""What a user's first `kubectl apply` meets: the real API server's admission of the CRD and the monitors.

No emulator: structural schema, pruning, defaulting, CEL rules (and their cost budget, checked when the
CRD is created), strict field validation and printer columns, all from a real kube-apiserver.
"""

from __future__ import annotations

import json

import pytest

from tests.k8s.conftest import ROOT, Cluster
from tests.operator.test_crd import INVALID
from xtrace_operator import model

pytestmark = pytest.mark.k8s

SAMPLES = sorted((ROOT / "deploy" / "manifests" / "samples").glob("*.yaml"))


def _monitor(spec: dict, name: str = "m", namespace: str = "default") -> dict:
    return {"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _dry_run(cluster: Cluster, obj: dict) -> tuple[dict | None, str]:
    """(the object as the server would store it, or None; the server's refusal)."""
    proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", "-o", "json", input=json.dumps(obj), check=False)
    return (json.loads(proc.stdout) if proc.returncode == 0 else None), proc.stderr.strip()


def test_install_establishes_the_crd_with_its_columns(installed: Cluster):
    crd = installed.get("crd", "xtracemonitors.xtrace.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    # a CEL rule over its cost budget, or a non-structural schema, would show here (or fail the apply)
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert "xtm" in crd["status"]["acceptedNames"]["shortNames"]
    ns = installed.namespace()
    installed.monitor(ns, "cols", {"interfaces": ["cols0"], "port": 19999})
    try:
        header = installed.kubectl("get", "xtm", "-n", ns).stdout.splitlines()[0].split()
        assert header == ["NAME", "MODE", "READY", "DESIRED", "REASON", "AGE"]
    finally:  # an operator started later would give it agents on every node
        installed.kubectl("delete", "xtm", "cols", "-n", ns)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_applies(installed: Cluster, path):
    installed.kubectl("apply", "-f", str(path))
    try:
        name = installed.kubectl("get", "-f", str(path), "-o", "name").stdout.strip()
        stored = installed.get(name, "-n", "xtrace-system")
        # what the server stored (defaults included) is a monitor the operator accepts as it is
        model.from_body(stored)
    finally:
        installed.kubectl("delete", "-f", str(path), "--wait=false")


@pytest.mark.parametrize("spec,server_says,operator_says", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_specs_are_refused_with_the_crds_message(installed: Cluster, spec, server_says, operator_says):
    stored, refusal = _dry_run(installed, _monitor(spec))
    assert stored is None, f"the API server admitted {spec}"
    assert server_says in refusal


def test_long_names_are_refused(installed: Cluster):
    stored, refusal = _dry_run(installed, _monitor({"interfaces": ["eth0"]}, name="a" * 57))
    assert stored is None and "at most 56 characters" in refusal


def test_defaults_appear_on_a_minimal_monitor_and_agree_with_the_model(installed: Cluster):
    specs = [
        {"interfaces": ["eth0"]},
        {"interfaces": ["eth0"], "xdp": {}},
        {"mode": "rdma", "victoriaMetrics": {"url": "http://vm:8428", "spool": {},
                                             "auth": {"basic": {"secretName": "s"}},
                                             "tls": {"caSecret": {"name": "ca"}}}},
        {"mode": "nccl", "victoriaMetrics": {"url": "http://vm:8428", "auth": {"bearer": {"secretName": "t"}}}},
        {"interfaces": ["eth0"], "tolerations": [{"key": "k", "value": "v"}]},
    ]
    for spec in specs:
        stored, refusal = _dry_run(installed, _monitor(spec))
        assert stored is not None, refusal
        assert stored["spec"]["interval"] == 5 and stored["spec"]["image"]
        if "xdp" in spec:
            assert stored["spec"]["xdp"]["attachMode"] == "auto"
        # the server's defaults and the operator's give the same monitor
        stored["metadata"] = _monitor(spec)["metadata"]  # uid and creation time aside
        assert model.from_body(stored) == model.from_body(_monitor(spec)), spec


def test_unknown_fields_inside_free_form_parts_are_pruned_not_stored(installed: Cluster):
    """Structural schema: a field the schema does not know is pruned when validation is not strict."""
    obj = _monitor({"interfaces": ["eth0"], "xdp": {"sampling": 1, "nonsense": 3}})
    proc = installed.kubectl("create", "--dry-run=server", "--validate=false", "-f", "-", "-o", "json",
                             input=json.dumps(obj))
    assert "nonsense" not in json.loads(proc.stdout)["spec"]["xdp"]


def test_status_is_a_subresource(installed: Cluster):
    """A user's write to the main resource cannot set status; only the status subresource can."""
    ns = installed.namespace()
    obj = _monitor({"interfaces": ["st0"], "port": 19998}, name="st", namespace=ns)
    obj["status"] = {"readyNodes": 99}
    installed.apply(obj)
    try:
        assert "readyNodes" not in installed.status(ns, "st")
    finally:
        installed.kubectl("delete", "xtm", "st", "-n", ns)
