"""The chart against a real control plane: its objects pass the API server's own validation (server-side
dry run), `helm install` gives an operator that reconciles a monitor from the values, `helm upgrade`
rolls a changed value out, `helm uninstall` leaves nothing behind but the CRD (what the chart's NOTES say).

The operator cannot run as a pod here (kwok's nodes run nothing): as in tests/k8s, `xtrace-operator run`
runs as a subprocess with the token of the ServiceAccount the chart installed, so its RBAC is the chart's.
The tests run in file order on one release.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helm.conftest import CHART, Helm, as_json
from tests.k8s.conftest import Cluster, Operator, wait_for

pytestmark = pytest.mark.k8s

NS = "xtrace-system"
RELEASE = "xtrace"
MONITOR = {"mode": "xdp", "interfaces": ["ehelm0"], "port": 29435}


def _values(tmp_path, **extra) -> str:
    values = {"monitors": {"edge": {"spec": {**MONITOR, **extra.pop("spec", {})}}}, **extra}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_rendered_objects_pass_a_server_side_dry_run(cluster: Cluster, helm: Helm, tmp_path):
    """Everything the chart renders, CRD first, then the monitors once the CRD is real."""
    cluster.kubectl("create", "namespace", NS)
    objs = helm.template("--include-crds", "-f", _values(tmp_path))
    monitors = [o for o in objs if o["kind"] == "XTraceMonitor"]
    rest = [o for o in objs if o["kind"] != "XTraceMonitor"]
    assert monitors and {o["kind"] for o in rest} >= {"CustomResourceDefinition", "Deployment", "ClusterRole"}
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=test", "-f", "-",
                           input=as_json(rest))
    assert proc.stdout.count("(server dry run)") == len(rest), proc.stdout
    assert cluster.get("crd", "xtracemonitors.xtrace.io") is None  # a dry run it was
    # a monitor's spec is checked against the CRD's schema only once the CRD exists
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "xtrace.io_xtracemonitors.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/xtracemonitors.xtrace.io", "--timeout=60s")
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=as_json(monitors))
    assert "(server dry run)" in proc.stdout
    bad = {**monitors[0], "spec": {**monitors[0]["spec"], "mode": "tcpdump"}}
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "spec.mode" in proc.stderr


@pytest.fixture(scope="module")
def release(cluster: Cluster, helm: Helm, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("release")
    helm("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace", "-f", _values(tmp),
         kubeconfig=cluster.kubeconfig)
    token = cluster.token(NS, "xtrace-operator")
    return {"kubeconfig": cluster.kubeconfig_for(token, tmp / "operator.kubeconfig"), "tmp": tmp}


@pytest.fixture(scope="module")
def operator(release: dict) -> Operator:
    op = Operator(release["kubeconfig"], release["tmp"] / "operator.log").start()
    yield op
    assert op.stop() == 0, op.text()[-3000:]
    assert "Traceback" not in op.text(), op.text()[-5000:]


def _ds(cluster: Cluster) -> dict | None:
    return cluster.get("ds", "xtrace-edge", "-n", NS)


def _agent_image(cluster: Cluster) -> str | None:
    ds = _ds(cluster)
    return ds and ds["spec"]["template"]["spec"]["containers"][0]["image"]


def test_install_and_the_installed_operator_reconciles_the_values_monitor(cluster: Cluster, release: dict,
                                                                          operator: Operator):
    dep = cluster.get("deploy", "xtrace-operator", "-n", NS)
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    wait_for(lambda: (_ds(cluster) or {}).get("status", {}).get("numberReady") == len(cluster.nodes), 90,
             "the monitor's agents ready on every node")
    assert _agent_image(cluster) == f"ghcr.io/xtrace-io/xtrace-agent:{dep['metadata']['labels']['app.kubernetes.io/version']}"
    wait_for(lambda: cluster.condition(NS, "edge", "Ready").get("status") == "True", 30, "the monitor Ready")
    # no finalizer of kopf's: the monitor can go when the operator is gone (see the uninstall test)
    assert not cluster.get("xtm", "edge", "-n", NS)["metadata"].get("finalizers")
    # the operator ran on the chart's RBAC: the token is the chart's ServiceAccount's
    who = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                          kubeconfig=release["kubeconfig"]).stdout
    assert who == f"system:serviceaccount:{NS}:xtrace-operator"


def _operator_pods(cluster: Cluster) -> list[dict]:
    got = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=xtrace-operator") or {"items": []}
    return [p for p in got["items"] if not p["metadata"].get("deletionTimestamp")]


def test_upgrade_rolls_changed_values_out(cluster: Cluster, helm: Helm, release: dict, operator: Operator):
    wait_for(lambda: _operator_pods(cluster), 60, "the operator's pod (kwok)")
    before = {p["metadata"]["name"] for p in _operator_pods(cluster)}
    registry = "127.0.0.1:5000/xtrace"
    helm("upgrade", RELEASE, str(CHART), "--namespace", NS,
         "-f", _values(release["tmp"], image={"registry": registry}, operator={"logLevel": "debug"},
                       spec={"interval": 2}), kubeconfig=cluster.kubeconfig)
    # the Deployment's new template, rolled by the real ReplicaSet controller (Recreate: a new pod)
    def rolled():
        pods = _operator_pods(cluster)
        return pods and not {p["metadata"]["name"] for p in pods} & before and pods
    [pod] = wait_for(rolled, 90, "the operator's pod replaced")
    [c] = pod["spec"]["containers"]
    assert c["image"].startswith(f"{registry}/xtrace-operator:") and "--verbose" in c["args"]
    assert helm("history", RELEASE, "-n", NS, "-o", "json", kubeconfig=cluster.kubeconfig).stdout.count('"revision"') == 2
    # the monitor's new spec, through the operator, down to its agents
    wait_for(lambda: (_agent_image(cluster) or "").startswith(f"{registry}/xtrace-agent:"), 60, "the agents' new image")
    wait_for(lambda: "interval: 2.0" in cluster.get("cm", "xtrace-edge", "-n", NS)["data"]["agent.yaml"], 60,
             "the new interval in the agents' config")


def _listable(cluster: Cluster) -> list[str]:
    out = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    return [r for r in out if r not in ("events", "events.events.k8s.io")]


def _left(cluster: Cluster, selector: str) -> list[str]:
    proc = cluster.kubectl("get", ",".join(_listable(cluster)), "-A", "-l", selector, "-o", "json")
    return [f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
            for o in json.loads(proc.stdout)["items"]]


def test_uninstall_leaves_only_the_crd(cluster: Cluster, helm: Helm, release: dict, operator: Operator):
    assert _left(cluster, "app.kubernetes.io/managed-by=Helm")
    helm("uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout=90s", kubeconfig=cluster.kubeconfig)
    wait_for(lambda: not _left(cluster, "app.kubernetes.io/managed-by=Helm"), 60, "the release's objects gone")
    # the monitor went with the release, and the garbage collector took its children
    wait_for(lambda: not _left(cluster, "app.kubernetes.io/managed-by=xtrace-operator"), 90,
             "the monitor's children gone")
    assert not cluster.get("xtm", "-A")["items"]
    assert not [s for s in cluster.get("secrets", "-n", NS)["items"] if s["type"] == "helm.sh/release.v1"]
    # what the chart's NOTES.txt says stays: the CRD (Helm never deletes what crds/ installed)
    assert cluster.get("crd", "xtracemonitors.xtrace.io") is not None
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl delete crd xtracemonitors.xtrace.io" in notes
