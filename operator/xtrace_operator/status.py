"""The monitor's status: conditions, node counts and per-node problems, computed from observed state.

Everything here is pure. The handlers feed it what the watch streams put in the operator's
in-memory indexes (the DaemonSet's status, the agent pods that are not ready) and write the
result only when it differs from what the monitor already shows. With 1000 nodes rolling, the
pod events arrive by the thousand but the monitor gets at most one status write per flush.
"""

from __future__ import annotations

import datetime
from typing import Any, NamedTuple

# One name on both sides: the condition each agent writes on its own pod.
from xtrace_agent.readiness import CONDITION_TYPE as AGENT_CONDITION

MAX_AGENT_REASON = 512
MAX_LISTED_NODES = 20  # keeps the status object small on a large broken fleet; notReadyCount has the total


class Counts(NamedTuple):
    """The DaemonSet's own account of its pods."""

    desired: int
    ready: int
    updated: int
    observed_current: bool  # the DaemonSet controller has seen the latest template


def counts(ds_meta: dict[str, Any], ds_status: dict[str, Any]) -> Counts:
    return Counts(
        desired=int(ds_status.get("desiredNumberScheduled") or 0),
        ready=int(ds_status.get("numberReady") or 0),
        updated=int(ds_status.get("updatedNumberScheduled") or 0),
        observed_current=ds_status.get("observedGeneration", 0) >= (ds_meta.get("generation") or 0),
    )


def pod_problem(pod_spec: dict[str, Any], pod_status: dict[str, Any]) -> tuple[str, str] | None:
    """(node, reason) for an agent pod that is not ready, or None when it is ready."""
    node = pod_spec.get("nodeName") or _target_node(pod_spec) or "(unscheduled)"
    conditions = {c.get("type"): c for c in pod_status.get("conditions") or []}
    agent = conditions.get(AGENT_CONDITION) or {}
    if conditions.get("Ready", {}).get("status") == "True":
        # The agent's own word is fresher than the readiness probe, which lags by up to
        # failureThreshold x periodSeconds (and never comes where no kubelet probes).
        return (node, _agent_reason(agent)) if agent.get("status") == "False" else None
    sched = conditions.get("PodScheduled", {})
    if sched.get("status") == "False":
        return node, f"{sched.get('reason') or 'Unschedulable'}: {sched.get('message', '')}".rstrip(": ")
    for cs in pod_status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            detail = state.get(key)
            if detail and detail.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                reason = detail["reason"]
                last = (cs.get("lastState") or {}).get("terminated") or {}
                message = detail.get("message") or last.get("message") or ""
                return node, f"{reason}: {_first_line(message)}" if message else reason
        if "running" in state and not cs.get("ready"):
            # The readiness probe on /readyz fails. The agent says why on its pod, written only when
            # it changes; before its first write (or without RBAC for it) only the log says why.
            if agent.get("status") == "False":
                return node, _agent_reason(agent)
            return node, "AgentNotReady: /readyz failing (see the agent log)"
    phase = pod_status.get("phase") or "Pending"
    return node, f"Pod{phase}" if phase != "Running" else "Starting"


def _target_node(pod_spec: dict[str, Any]) -> str | None:
    """The node a DaemonSet pod is meant for before it is bound: its affinity names it (metadata.name)."""
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("values"):
                return str(field["values"][0])
    return None


def _agent_reason(cond: dict[str, Any]) -> str:
    reason = cond.get("reason") or "AgentNotReady"
    message = " ".join(str(cond.get("message") or "").split())
    text = f"{reason}: {message}" if message else reason
    return text if len(text) <= MAX_AGENT_REASON else text[: MAX_AGENT_REASON - 1] + "…"


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int,
               previous: dict[str, dict[str, Any]], now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(type_)
    # lastTransitionTime moves only when status flips: a stable condition must compare equal.
    since = before["lastTransitionTime"] if before and before.get("status") == status \
        and before.get("lastTransitionTime") else now
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def compute(*, generation: int, invalid: str | None, conflict: str | None, counts_: Counts | None,
            problems: list[tuple[str, str]], config_hash: str | None,
            previous: dict[str, Any] | None, now: str | None = None) -> dict[str, Any]:
    """The whole status block for one monitor from what is known about it right now."""
    previous = previous or {}
    now = now or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    prev = {c.get("type"): c for c in previous.get("conditions") or []}
    problems = sorted(set(problems))
    desired = counts_.desired if counts_ else 0
    ready = counts_.ready if counts_ else 0
    if invalid:
        reason, message = "InvalidSpec", invalid
    elif conflict:
        reason, message = "Conflict", conflict
    elif counts_ is None:
        reason, message = "Pending", "waiting for the agent DaemonSet"
    elif desired == 0:
        reason, message = "NoNodes", "no node matches nodeSelector and tolerations"
    elif ready < desired or not counts_.observed_current:
        reason = "RollingOut" if counts_.updated < desired else "AgentsNotReady"
        message = f"{ready} of {desired} agents ready"
    else:
        reason, message = "AgentsReady", f"{ready} of {desired} agents ready"
    is_ready = reason == "AgentsReady"
    # Problems count even on Ready pods: an agent's own report comes before its probe fails.
    not_ready = max(desired - ready, len(problems))
    degraded = bool(counts_) and not invalid and not conflict and 0 < desired and not_ready > 0
    listed = [{"node": n, "reason": r} for n, r in problems[:MAX_LISTED_NODES]]
    degraded_msg = ""
    if degraded:
        shown = ", ".join(f"{p['node']} ({_first_line(p['reason'], 120)})" for p in listed[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        degraded_msg = f"{not_ready} of {desired} agents not ready" + (f": {shown}{more}" if shown else "")
    conditions = [
        _condition("Ready", is_ready, reason, message, generation, prev, now),
        _condition("Degraded", degraded, "AgentsNotReady" if degraded else "AsExpected", degraded_msg,
                   generation, prev, now),
        _condition("InvalidSpec", bool(invalid), "InvalidSpec" if invalid else "Valid", invalid or "",
                   generation, prev, now),
        _condition("Conflict", bool(conflict), "Conflict" if conflict else "NoConflict", conflict or "",
                   generation, prev, now),
    ]
    return {
        "observedGeneration": generation,
        "desiredNodes": desired,
        "readyNodes": ready,
        "reason": "" if is_ready else reason,
        "configHash": config_hash or "",
        "notReadyNodes": listed,
        "notReadyCount": len(problems),
        "conditions": conditions,
    }


def diff(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """The part of `desired` that differs from `current` (empty: nothing to write)."""
    current = current or {}
    return {k: v for k, v in desired.items() if current.get(k) != v}
