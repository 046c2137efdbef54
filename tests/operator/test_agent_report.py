"""The agent's own readiness reason, from its Pod to the monitor's status.

The agent writes the condition `xtrace.io/AgentReady` on its pod (xtrace_agent.podstatus);
the operator puts its reason in `status.notReadyNodes`. Covered here: the operator's reading
of the condition (pure), the RBAC that lets the agents write it (real schemas, and the escalation
rule the API server applies to the operator), and the whole path through kmock with the real
agent reporter writing to the emulated API server.
"""

from __future__ import annotations

import asyncio

import kubernetes_validate
import pytest
import yaml

from tests.operator.conftest import REAL_CLUSTER, ROOT
from xtrace_agent import podstatus
from xtrace_agent.health import Health
from xtrace_operator import model, render
from xtrace_operator import status as status_mod

MON = "/apis/xtrace.io/v1alpha1/namespaces/{ns}/xtracemonitors/%s"
DS = "/apis/apps/v1/namespaces/{ns}/daemonsets/xtrace-%s"
ROLE = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/xtrace-%s"
BINDING = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/xtrace-%s"
XDP = {"mode": "xdp", "interfaces": ["eth0", "eth1"]}
RUNNING_NOT_READY = {"name": "agent", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                     "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}


def _pod_status(*conditions: dict, container: dict = RUNNING_NOT_READY) -> dict:
    return {"phase": "Running", "containerStatuses": [container],
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}, *conditions]}


def _agent(status: str, reason: str, message: str) -> dict:
    return {"type": podstatus.CONDITION_TYPE, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:10Z"}


# --- the operator reads the condition (pure) ------------------------------------------------------

def test_pod_problem_uses_the_agents_reason():
    spec = {"nodeName": "gpu-7"}
    cond = _agent("False", "InterfaceNotFound", "xdp:eth1: interface not found")
    assert status_mod.pod_problem(spec, _pod_status(cond)) == ("gpu-7", "InterfaceNotFound: xdp:eth1: interface not found")
    push = _agent("False", "PushFailing", "remote_write:vm: no successful push to vm for 300s")
    assert status_mod.pod_problem(spec, _pod_status(push))[1].startswith("PushFailing: remote_write:vm: no successful")


def test_pod_problem_falls_back_when_the_agent_said_nothing_useful():
    spec = {"nodeName": "n1"}
    generic = "AgentNotReady: /readyz failing (see the agent log)"
    assert status_mod.pod_problem(spec, _pod_status()) == ("n1", generic)  # not written yet / no RBAC
    stale = _agent("True", "AgentReady", "")  # the probe noticed first; the agent writes within seconds
    assert status_mod.pod_problem(spec, _pod_status(stale)) == ("n1", generic)
    # A crashing container says more than the condition its previous run left behind.
    crash = {**RUNNING_NOT_READY, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}
    cond = _agent("False", "InterfaceNotFound", "xdp:eth1: interface not found")
    assert status_mod.pod_problem(spec, _pod_status(cond, container=crash)) == ("n1", "CrashLoopBackOff: back-off 40s")
    # The pod is Ready and the agent agrees: the node is not listed.
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}, stale]}
    assert status_mod.pod_problem(spec, ready) is None


def test_pod_problem_believes_the_agent_before_the_probe_notices():
    """A Ready pod whose agent says it is not ready: the probe lags by failureThreshold x period."""
    cond = _agent("False", "InterfaceNotFound", "xdp:eth1: interface not found")
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}, cond]}
    assert status_mod.pod_problem({"nodeName": "n1"}, ready) == ("n1", "InterfaceNotFound: xdp:eth1: interface not found")


def test_pod_problem_bounds_the_agents_text():
    cond = _agent("False", "Degraded", "x" * 5000 + "\nsecond line")
    _, reason = status_mod.pod_problem({"nodeName": "n"}, _pod_status(cond))
    assert len(reason) == status_mod.MAX_AGENT_REASON and reason.startswith("Degraded: xxx") and "\n" not in reason


def test_degraded_message_stays_short_with_long_agent_reasons():
    problems = [(f"n{i}", "PushFailing: " + "y" * 500) for i in range(8)]
    st = status_mod.compute(generation=1, invalid=None, conflict=None,
                            counts_=status_mod.Counts(8, 0, 8, True), problems=problems,
                            config_hash="h", previous=None, now="2025-01-01T00:00:00Z")
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert len(degraded["message"]) < 1000 and "and 3 more" in degraded["message"]
    assert st["notReadyNodes"][0]["reason"] == problems[0][1]  # the full reason stays in the list


# --- the agents' RBAC (real schemas, the escalation rule) ----------------------------------------

def _monitor(name="web", namespace="obs"):
    return model.parse(name, namespace, dict(XDP))


def test_role_and_binding_are_valid_and_minimal():
    m = _monitor()
    role, binding, ds = render.role(m), render.rolebinding(m), render.daemonset(m)
    for obj in (role, binding):
        kubernetes_validate.validate(obj, "1.33", strict=True)
        assert obj["metadata"]["namespace"] == "obs" and obj["metadata"]["labels"].items() >= render.OWNED.items()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]
    pod = ds["spec"]["template"]["spec"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "obs"}]
    assert pod["automountServiceAccountToken"] is True
    assert "readinessGates" not in pod  # the /readyz probe decides readiness; the condition only explains
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert render.serviceaccount(m)["automountServiceAccountToken"] is False  # only the agent pods get a token


def _allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r["verbs"]
               for r in rules)


def test_operator_holds_what_it_grants_and_can_create_the_rbac():
    """The API server refuses a Role granting more than its creator holds (unless it has `escalate`)."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "manifests" / "rbac.yaml").read_text()))
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    for rule in render.role(_monitor())["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert _allows(rules, group, resource, verb), (group, resource, verb)
    for resource in ("roles", "rolebindings"):
        for verb in ("get", "create", "patch"):
            assert _allows(rules, "rbac.authorization.k8s.io", resource, verb), (resource, verb)
    rbac_verbs = {v for r in rules if "rbac.authorization.k8s.io" in r["apiGroups"] for v in r["verbs"]}
    assert not rbac_verbs & {"escalate", "bind", "delete", "*"}


# --- end to end through kmock --------------------------------------------------------------------

async def test_children_include_the_agents_rbac(api, operator):
    """The Role and RoleBinding are created with the other children, owned by the monitor."""
    mon = await api.create_monitor("rbac", XDP)
    for path in (ROLE, BINDING):
        child = await api.eventually(lambda p=path: api.get(p % "rbac"), what=path % "rbac")
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [mon["metadata"]["uid"]]
    role = await api.get(ROLE % "rbac")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]


@pytest.mark.skipif(REAL_CLUSTER, reason="the DaemonSet controller and kubelet own pods on a real cluster")
async def test_agents_reason_reaches_the_monitor_status(api, operator, tmp_path):
    """The real agent reporter writes its condition; the monitor lists the node with the agent's reason.

    kmock stands in for the kubelet (the test creates the running-but-unready agent pod and the
    DaemonSet status). It applies the agent's strategic merge patch as a plain merge, replacing
    the conditions list instead of merging by `type`; the patch's shape is checked against the
    real merge semantics in tests/test_podstatus.py.
    """
    await api.create_monitor("fleet", XDP)
    await api.eventually(lambda: api.get(DS % "fleet"), what="DaemonSet")
    await api.set_daemonset_status("fleet", desired=2, ready=1)
    pod_name = "xtrace-fleet-x7k2p"
    await api.create_agent_pod("fleet", pod_name, "gpu-7", _pod_status())

    async def listed(expected: str):
        st = ((await api.get(MON % "fleet")) or {}).get("status") or {}
        nodes = st.get("notReadyNodes") or []
        return nodes and nodes[0]["reason"].startswith(expected) and st
    await api.eventually(lambda: listed("AgentNotReady"), what="the generic reason first")

    token = tmp_path / "token"
    token.write_text("agent-token")
    health = Health()
    health.not_ready("xdp:eth1", "interface not found")
    reporter = podstatus.PodStatusReporter(health, api.namespace, pod_name, str(api.kmock.url), token,
                                           min_interval=0.2, jitter=0.0, timeout=5.0).start()
    try:
        for _ in range(3):  # three intervals, one readiness: one write
            reporter.observe()
        st = await api.eventually(lambda: listed("InterfaceNotFound"), what="the agent's reason")
        assert st["notReadyNodes"] == [{"node": "gpu-7", "reason": "InterfaceNotFound: xdp:eth1: interface not found"}]
        degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
        assert "gpu-7 (InterfaceNotFound: xdp:eth1: interface not found)" in degraded["message"]
        patches = [r for r in api.kmock if r.method == "PATCH" and r.url.path.endswith(f"/pods/{pod_name}/status")]
        assert len(patches) == 1 and patches[0].headers["Authorization"] == "Bearer agent-token"
        assert health.get("xtrace_pod_status_writes_total") == 1

        # Another problem of another kind: one more write, and the monitor follows.
        health.not_ready("remote_write:vm", "no successful push to vm for 130s (maxPushAge 120s): HTTP 503")
        reporter.observe()
        st = await api.eventually(lambda: listed("Degraded"), what="the agent's new reason")
        assert "remote_write:vm: no successful push" in st["notReadyNodes"][0]["reason"]
    finally:
        await asyncio.to_thread(reporter.close)
