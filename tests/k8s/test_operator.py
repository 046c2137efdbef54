"""The operator against a real control plane, with the ServiceAccount and ClusterRole deploy/manifests ships.

`xtrace-operator run` runs as a subprocess holding only that ServiceAccount's token (TokenRequest
API), so every call it makes passes real RBAC. The DaemonSet controller, the scheduler and the
garbage collector are real; kwok plays the kubelet on three fake nodes (pods become Running and
Ready; nothing executes in them).
"""

from __future__ import annotations

import json

import pytest

from tests.k8s.conftest import Cluster, Operator, wait_for
from xtrace_operator import render

pytestmark = pytest.mark.k8s



def xdp(ns: str) -> dict:
    """An xdp spec with an interface and a host port of this test's own.

    Monitors in other namespaces conflict on a shared interface, and their agents' pods on a shared
    host port (the scheduler leaves the later ones Pending): each test keeps to itself.
    """
    return {"mode": "xdp", "interfaces": [f"e{ns[3:]}"], "port": 20000 + int(ns[3:], 16) % 40000}


def _columns(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    """`kubectl get xtm` as a user reads it: {column: text}, empty columns included."""
    header, row = cluster.kubectl("get", "xtm", name, "-n", ns).stdout.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    ends = starts[1:] + [None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def _ready(cluster: Cluster, ns: str, name: str, n: int) -> dict[str, str] | None:
    cols = _columns(cluster, ns, name)
    return cols if cols["READY"] == str(n) and cols["DESIRED"] == str(n) else None


def _children(cluster: Cluster, ns: str) -> dict[str, list[str]]:
    kinds = "serviceaccounts,configmaps,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,daemonsets"
    items = json.loads(cluster.kubectl("get", kinds, "-n", ns, "-l", "app.kubernetes.io/managed-by=xtrace-operator",
                                       "-o", "json").stdout)["items"]
    out: dict[str, list[str]] = {}
    for item in items:
        out.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return out


def test_monitor_to_one_pod_per_selected_node(installed: Cluster, operator: Operator):
    """Create: owned children, one agent pod on each of the two selected nodes, READY 2 DESIRED 2."""
    ns = installed.namespace()
    installed.kubectl("label", "node", installed.nodes[0], installed.nodes[1], f"role-{ns}=gpu")
    installed.monitor(ns, "web", {**xdp(ns), "nodeSelector": {f"role-{ns}": "gpu"}})
    wait_for(lambda: _ready(installed, ns, "web", 2), 60, "READY 2 DESIRED 2")
    uid = installed.get("xtm", "web", "-n", ns)["metadata"]["uid"]
    children = _children(installed, ns)
    assert children == {k: ["xtrace-web"] for k in ("ServiceAccount", "ConfigMap", "Role", "RoleBinding", "DaemonSet")}
    for kind in children:
        meta = installed.get(kind.lower(), "xtrace-web", "-n", ns)["metadata"]
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in meta["ownerReferences"]] == \
            [("XTraceMonitor", "web", uid, True)]
    pods = installed.pods(ns, "web")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(installed.nodes[:2])
    assert all(p["status"]["phase"] == "Running" for p in pods)
    st = installed.status(ns, "web")
    assert st["desiredNodes"] == 2 and st["readyNodes"] == 2
    assert installed.condition(ns, "web", "Ready")["status"] == "True"
    # the whole apply went through one field manager, server-side
    ds = installed.get("ds", "xtrace-web", "-n", ns, "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in ds["metadata"]["managedFields"] if not m.get("subresource")}
    assert managers == {("xtrace-operator", "Apply")}


def test_spec_change_rolls_the_pods_and_drops_removed_fields(installed: Cluster, operator: Operator):
    ns = installed.namespace()
    label = f"roll-{ns}"
    installed.kubectl("label", "node", *installed.nodes, f"{label}=yes", f"{label}-extra=1")
    installed.monitor(ns, "roll", {**xdp(ns), "nodeSelector": {label: "yes", f"{label}-extra": "1"}})
    wait_for(lambda: _ready(installed, ns, "roll", 3), 60, "READY 3")
    before = {p["metadata"]["name"] for p in installed.pods(ns, "roll")}
    installed.monitor(ns, "roll", {**xdp(ns), "interval": 2, "nodeSelector": {label: "yes"}})

    def rolled():
        pods = installed.pods(ns, "roll")
        names = {p["metadata"]["name"] for p in pods}
        return len(pods) == 3 and not names & before and all(
            p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods)
    wait_for(rolled, 90, "three new pods")
    wait_for(lambda: _ready(installed, ns, "roll", 3), 60, "READY 3 after the roll")
    assert "interval: 2.0" in installed.get("cm", "xtrace-roll", "-n", ns)["data"]["agent.yaml"]
    # server-side apply removes what the operator no longer renders: the dropped selector key
    selector = installed.get("ds", "xtrace-roll", "-n", ns)["spec"]["template"]["spec"]["nodeSelector"]
    assert f"{label}-extra" not in selector and selector[label] == "yes"


def test_a_hand_edit_to_an_owned_field_is_put_back(installed: Cluster, operator: Operator):
    ns = installed.namespace()
    installed.monitor(ns, "heal", xdp(ns))
    wait_for(lambda: _ready(installed, ns, "heal", 3), 60, "READY 3")
    image = installed.get("ds", "xtrace-heal", "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
    installed.kubectl("set", "image", "ds/xtrace-heal", "-n", ns, "agent=example.invalid/evil:1")
    wait_for(lambda: installed.get("ds", "xtrace-heal", "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
             == image, 30, "the image put back")
    installed.kubectl("patch", "cm", "xtrace-heal", "-n", ns, "--type=merge", "-p", '{"data":{"agent.yaml":"mode: rdma"}}')
    wait_for(lambda: "mode: xdp" in installed.get("cm", "xtrace-heal", "-n", ns)["data"]["agent.yaml"], 30,
             "the agent config put back")
    # a field nobody renders is not the operator's: a label added by hand stays
    installed.kubectl("label", "ds", "xtrace-heal", "-n", ns, "team=net")
    installed.kubectl("set", "image", "ds/xtrace-heal", "-n", ns, "agent=example.invalid/evil:2")
    wait_for(lambda: installed.get("ds", "xtrace-heal", "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
             == image, 30, "the image put back again")
    assert installed.get("ds", "xtrace-heal", "-n", ns)["metadata"]["labels"]["team"] == "net"
    assert "edited by hand" in operator.text()


def test_deleting_the_monitor_removes_every_child(installed: Cluster, operator: Operator):
    """The real garbage collector follows the owner references: no finalizer logic of ours."""
    ns = installed.namespace()
    installed.monitor(ns, "gone", xdp(ns))
    wait_for(lambda: _ready(installed, ns, "gone", 3), 60, "READY 3")
    installed.kubectl("delete", "xtm", "gone", "-n", ns, "--timeout=60s")
    wait_for(lambda: not _children(installed, ns) and not installed.pods(ns, "gone"), 60, "every child removed")


def test_two_monitors_on_one_interface_the_later_is_conflict(installed: Cluster, operator: Operator):
    ns = installed.namespace()
    installed.monitor(ns, "first", xdp(ns))
    wait_for(lambda: installed.get("ds", "xtrace-first", "-n", ns), 30, "first DaemonSet")
    installed.monitor(ns, "second", {"mode": "xdp", "interfaces": [xdp(ns)["interfaces"][0][:4] + "*"],
                                     "port": xdp(ns)["port"] + 1})
    c = wait_for(lambda: installed.condition(ns, "second", "Conflict").get("status") == "True"
                 and installed.condition(ns, "second", "Conflict"), 30, "Conflict")
    assert f"XTraceMonitor {ns}/first" in c["message"] and xdp(ns)["interfaces"][0] in c["message"]
    assert installed.get("ds", "xtrace-second", "-n", ns) is None
    assert _columns(installed, ns, "second")["REASON"] == "Conflict"
    assert installed.condition(ns, "first", "Conflict")["status"] == "False"
    # the conflict clears when the first monitor goes: the second gets its agents
    installed.kubectl("delete", "xtm", "first", "-n", ns)
    wait_for(lambda: _ready(installed, ns, "second", 3), 60, "the second monitor READY 3")


def test_invalid_monitor_is_invalidspec(installed: Cluster, operator: Operator):
    """A spec the CRD admits but the operator cannot use (a node selector no node could carry)."""
    ns = installed.namespace()
    installed.monitor(ns, "bad", {**xdp(ns), "nodeSelector": {"bad key!": "x"}})
    c = wait_for(lambda: installed.condition(ns, "bad", "InvalidSpec").get("status") == "True"
                 and installed.condition(ns, "bad", "InvalidSpec"), 30, "InvalidSpec")
    assert "spec.nodeSelector" in c["message"]
    assert _columns(installed, ns, "bad")["REASON"] == "InvalidSpec"
    assert installed.get("ds", "xtrace-bad", "-n", ns) is None


def test_operator_restart_makes_no_duplicates_and_writes_nothing(installed: Cluster, operator_kubeconfig: str,
                                                                  tmp_path):
    ns = installed.namespace()
    first = Operator(operator_kubeconfig, tmp_path / "op1.log").start()
    try:
        installed.monitor(ns, "keep", xdp(ns))
        wait_for(lambda: _ready(installed, ns, "keep", 3), 60, "READY 3")
    finally:
        assert first.stop() == 0
    versions = {k: installed.get(k, "xtrace-keep", "-n", ns)["metadata"]["resourceVersion"]
                for k in ("sa", "cm", "role", "rolebinding")}
    generation = installed.get("ds", "xtrace-keep", "-n", ns)["metadata"]["generation"]
    pods = {p["metadata"]["name"] for p in installed.pods(ns, "keep")}
    second = Operator(operator_kubeconfig, tmp_path / "op2.log").start()
    try:
        wait_for(lambda: "applied" in second.text(), 30, "the resumed operator's apply")
    finally:
        assert second.stop() == 0
    assert _children(installed, ns) == {k: ["xtrace-keep"] for k in
                                        ("ServiceAccount", "ConfigMap", "Role", "RoleBinding", "DaemonSet")}
    assert {k: installed.get(k, "xtrace-keep", "-n", ns)["metadata"]["resourceVersion"] for k in versions} == versions
    assert installed.get("ds", "xtrace-keep", "-n", ns)["metadata"]["generation"] == generation
    assert {p["metadata"]["name"] for p in installed.pods(ns, "keep")} == pods
    assert "Traceback" not in second.text()


def test_the_operators_rbac_is_enough_and_not_more(installed: Cluster, operator_kubeconfig: str):
    """`kubectl auth can-i` as the operator: what it needs is allowed, Secrets and deletes of monitors are not."""
    def can(*args: str) -> bool:
        return installed.kubectl("auth", "can-i", *args, kubeconfig=operator_kubeconfig, check=False) \
            .stdout.strip() == "yes"
    assert can("patch", "xtracemonitors.xtrace.io/status", "-A") and can("watch", "pods", "-A")
    assert can("create", "daemonsets.apps", "-n", "anywhere") and can("patch", "roles", "-n", "anywhere")
    assert not can("get", "secrets", "-A") and not can("list", "secrets", "-n", "xtrace-system")
    assert not can("delete", "xtracemonitors.xtrace.io", "-A") and not can("create", "pods", "-A")
    assert not can("delete", "configmaps", "-A") and not can("create", "clusterroles")


def test_agent_pods_carry_the_rendered_identity(installed: Cluster, operator: Operator):
    """The pods the real DaemonSet controller made from our template: host network, the agent's ServiceAccount."""
    ns = installed.namespace()
    installed.monitor(ns, "ident", xdp(ns))
    wait_for(lambda: _ready(installed, ns, "ident", 3), 60, "READY 3")
    for pod in installed.pods(ns, "ident"):
        assert pod["spec"]["hostNetwork"] is True
        assert pod["spec"]["serviceAccountName"] == "xtrace-ident"
        assert pod["metadata"]["labels"][render.INSTANCE_LABEL] == "ident"
        # kwok gives a host-network pod its node's address, distinct per node
        assert pod["status"]["podIP"] == pod["status"]["hostIP"]
    assert len({p["status"]["podIP"] for p in installed.pods(ns, "ident")}) == 3


def test_agents_that_cannot_be_scheduled_are_named_per_node(installed: Cluster, operator: Operator):
    """Another workload holds the agents' host port on one node: the real scheduler leaves that agent Pending.

    The operator only sees its own monitors' ports; the monitor's status names the node and gives the
    scheduler's reason, while the other nodes' agents run.
    """
    ns = installed.namespace()
    spec = xdp(ns)
    squatted = installed.nodes[0]
    installed.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "squatter", "namespace": ns},
                     "spec": {"hostNetwork": True, "nodeSelector": {"kubernetes.io/hostname": squatted},
                              "containers": [{"name": "c", "image": "example.invalid/web",
                                              "ports": [{"containerPort": spec["port"]}]}]}})
    wait_for(lambda: (installed.get("pod", "squatter", "-n", ns) or {}).get("status", {}).get("phase") == "Running",
             30, "the squatter running")
    installed.monitor(ns, "late", spec)
    st = wait_for(lambda: installed.status(ns, "late").get("readyNodes") == 2
                  and installed.status(ns, "late").get("notReadyNodes") and installed.status(ns, "late"),
                  60, "two agents ready, one node listed")
    assert st["desiredNodes"] == 3
    assert [n["node"] for n in st["notReadyNodes"]] == [squatted]
    assert "free ports" in st["notReadyNodes"][0]["reason"], st["notReadyNodes"]
    assert installed.condition(ns, "late", "Degraded")["status"] == "True"


def _stand_in_crd(group: str, kind: str, plural: str, version: str) -> dict:
    """A schemaless CRD standing in for the Prometheus or VictoriaMetrics operator's own (not installed here)."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": kind + "List"},
                     "versions": [{"name": version, "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def test_scrape_renders_a_headless_service_and_the_scrape_object(installed: Cluster, operator: Operator):
    """spec.scrape: the real EndpointSlice controller lists every agent; the ServiceMonitor selects them."""
    installed.apply(_stand_in_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "v1"))
    installed.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    ns = installed.namespace()
    spec = {**xdp(ns), "scrape": {"kind": "ServiceMonitor", "interval": "15s"}}
    installed.monitor(ns, "scr", spec)
    wait_for(lambda: _ready(installed, ns, "scr", 3), 60, "READY 3")
    svc = wait_for(lambda: installed.get("svc", "xtrace-scr", "-n", ns), 30, "the Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == spec["port"]

    def endpoints():
        slices = installed.get("endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=xtrace-scr")["items"]
        return sorted(a for sl in slices for e in sl.get("endpoints") or [] for a in e["addresses"])
    pod_ips = sorted(p["status"]["podIP"] for p in installed.pods(ns, "scr"))
    wait_for(lambda: endpoints() == pod_ips, 30, "every agent behind the Service")
    sm = wait_for(lambda: installed.get("servicemonitors.monitoring.coreos.com", "xtrace-scr", "-n", ns), 30,
                  "the ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s"
    assert endpoint["relabelings"] == [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    assert sm["metadata"]["ownerReferences"][0]["name"] == "scr"
    # scrape removed: the Service and the ServiceMonitor go, the agents stay
    installed.monitor(ns, "scr", xdp(ns))
    wait_for(lambda: installed.get("svc", "xtrace-scr", "-n", ns) is None
             and installed.get("servicemonitors.monitoring.coreos.com", "xtrace-scr", "-n", ns) is None,
             30, "the scrape objects removed")
    assert _ready(installed, ns, "scr", 3)


def test_a_scrape_kind_whose_operator_is_missing_is_a_warning(installed: Cluster, operator: Operator):
    """No VMServiceScrape API in the cluster: the agents and the Service still come, and an event says why."""
    ns = installed.namespace()
    installed.monitor(ns, "novm", {**xdp(ns), "scrape": {"kind": "VMServiceScrape"}})
    wait_for(lambda: _ready(installed, ns, "novm", 3), 60, "READY 3")
    assert installed.get("svc", "xtrace-novm", "-n", ns)
    events = wait_for(lambda: [e for e in installed.get("events", "-n", ns)["items"]
                               if e.get("reason") == "ScrapeNotInstalled"], 30, "the warning event")
    assert "operator.victoriametrics.com/v1beta1" in events[0]["message"]
