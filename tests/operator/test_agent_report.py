"""The agent's own readiness reason, from its Pod to the monitor's status.

The agent writes the condition `xtrace.io/AgentReady` on its pod (xtrace_agent.sinks.podstatus);
the operator puts its reason in `status.notReadyNodes`. Covered here: the operator's reading
of the condition (pure) and the RBAC that lets the agents write it (real schemas, and the escalation
rule the API server applies to the operator). The whole path, the real agent writing to a real API
server with its ServiceAccount's token, is tests/k8s/test_agent_pod.py.
"""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.operator.conftest import ROOT
from xtrace_agent import readiness
from xtrace_operator import model, render
from xtrace_operator import status as status_mod

XDP = {"mode": "xdp", "interfaces": ["eth0", "eth1"]}
RUNNING_NOT_READY = {"name": "agent", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                     "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}


def _pod_status(*conditions: dict, container: dict = RUNNING_NOT_READY) -> dict:
    return {"phase": "Running", "containerStatuses": [container],
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}, *conditions]}


def _agent(status: str, reason: str, message: str) -> dict:
    return {"type": readiness.CONDITION_TYPE, "status": status, "reason": reason, "message": message,
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
    assert not rbac_verbs & {"escalate", "delete", "*"}
    # `bind` only on the one role the agents' binding grants (metrics.auth, docs/security.md), by name
    binds = [r for r in rules if "bind" in r["verbs"]]
    assert binds == [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                      "resourceNames": ["system:auth-delegator"], "verbs": ["bind"]}], binds
