"""The kopf handlers: each one validates, builds, adopts, applies and reports, and nothing more.

- `reconcile` (create, update, resume: one idempotent function) applies the children.
- Watch streams feed three in-memory indexes: every monitor's claim (for conflicts), our
  DaemonSets' status, and our agent pods that are not ready. No handler polls the API.
- `flush` runs per monitor every few seconds, computes the status from those indexes and writes
  it only when it changed: one write per monitor per flush at most, whatever the node count.
  It also re-applies children when they are missing (a conflict cleared, a DaemonSet deleted
  by hand) or were edited by hand (the DaemonSet's generation or the ConfigMap's version moved
  past what the operator's last apply produced), and removes the DaemonSet of a monitor that
  lost a conflict. Children are written with server-side apply under one field manager.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from xtrace_agent import environ
from xtrace_operator import GROUP, PLURAL, VERSION, conflict, kube, metricsauth, model, render
from xtrace_operator import status as status_mod

MONITORS = (GROUP, VERSION, PLURAL)
DAEMONSETS = ("apps", "v1", "daemonsets")
CONFIGMAPS = ("v1", "configmaps")
SERVICES = ("v1", "services")
PODS = ("v1", "pods")
FLUSH_SECONDS = environ.STATUS_FLUSH_SECONDS.get()
OWNED_FILTER = dict(render.OWNED)
APPLIED = "applied"  # the key in each monitor's kopf memo: what our last apply produced, {kind: version}
BINDING = "metrics_binding"  # the key in the operator's memo (shared by every monitor's): a _Binding


class _QuietFlush(logging.Filter):
    """Drops kopf's "Timer 'flush' succeeded" line: every few seconds per monitor it would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timer 'flush' succeeded" not in record.getMessage()


class _Binding:
    """What the operator last wrote into the agents' metrics-auth binding, in this run (its memo)."""

    def __init__(self) -> None:
        self.subjects: list[tuple[str, str]] | None = None  # None: not yet written since start
        self.errors: set[str] = set()  # each distinct failure logged once


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Each monitor's memo is a shallow copy of this one: they all share this one _Binding.
    memo[BINDING] = _Binding()
    log = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietFlush) for f in log.filters):
        log.addFilter(_QuietFlush())
    # Server-side filtering: only our DaemonSets and agent pods travel over the watch streams.
    selector = ",".join(f"{k}={v}" for k, v in sorted(render.OWNED.items()))
    settings.watching.label_selectors[DAEMONSETS] = selector
    settings.watching.label_selectors[CONFIGMAPS] = selector
    settings.watching.label_selectors[SERVICES] = selector
    settings.watching.label_selectors[PODS] = selector
    # Handler chatter as Kubernetes events would flood large clusters: warnings and errors only.
    settings.posting.level = logging.WARNING
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="xtrace.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="xtrace.io", key="last-handled-configuration")


# --- indexes, fed by watch streams --------------------------------------------------------------

@kopf.index(*MONITORS)
def claims(name: str, namespace: str, spec: Any, meta: Any, **_: Any) -> dict:
    # {} (not None, which kopf reads as "keep the old value") drops a monitor that became invalid.
    try:
        monitor = model.parse(name, namespace, dict(spec), created=meta.get("creationTimestamp", ""))
    except model.InvalidSpec:
        return {}
    return {None: conflict.Claim.of(monitor)}


@kopf.index(*DAEMONSETS, labels=OWNED_FILTER)
def agent_sets(namespace: str, labels: Any, meta: Any, status: Any, **_: Any) -> dict:
    return {(namespace, labels.get(render.INSTANCE_LABEL)): status_mod.counts(dict(meta), dict(status))}


@kopf.index(*DAEMONSETS, labels=OWNED_FILTER)
def set_versions(namespace: str, labels: Any, meta: Any, **_: Any) -> dict:
    # generation, not resourceVersion: the DaemonSet controller's status writes must not look like edits
    return {(namespace, labels.get(render.INSTANCE_LABEL)): int(meta.get("generation") or 0)}


@kopf.index(*CONFIGMAPS, labels=OWNED_FILTER)
def config_versions(namespace: str, labels: Any, meta: Any, **_: Any) -> dict:
    return {(namespace, labels.get(render.INSTANCE_LABEL)): _version(meta.get("resourceVersion"))}


@kopf.index(*SERVICES, labels=OWNED_FILTER)
def agent_services(namespace: str, labels: Any, **_: Any) -> dict:
    return {(namespace, labels.get(render.INSTANCE_LABEL)): True}


@kopf.index(*MONITORS)
def secured(name: str, namespace: str, spec: Any, **_: Any) -> dict:
    """The agents' ServiceAccount of every valid monitor with metrics.auth: kubernetes."""
    try:
        monitor = model.parse(name, namespace, dict(spec))
    except model.InvalidSpec:
        return {}
    return {None: (namespace, render.child_name(monitor))} if monitor.metrics.secure else {}


@kopf.on.event(*MONITORS)
def agents_binding(secured: kopf.Index, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Keep xtrace-agents-metrics-auth's subjects equal to the secured monitors' agents.

    On every monitor event, deletions included (an event handler needs no finalizer); the index is
    up to date by then. One apply when the list changed since this run's last, none otherwise.
    """
    state: _Binding = memo[BINDING]
    subjects = sorted(set(secured.get(None, [])))
    if subjects == state.subjects:
        return
    try:
        kube.apply(metricsauth.agents_binding(subjects))
    except kube.ApiError as e:
        if str(e) not in state.errors:  # once per distinct error: events come often
            state.errors.add(str(e))
            hint = " (installed from deploy/manifests or the chart?)" if e.status == 404 else ""
            logger.warning(f"ClusterRoleBinding {metricsauth.AGENTS_BINDING}: {e}{hint}: agents with "
                           "metrics.auth cannot review tokens and answer 503")
        return
    logger.info(f"ClusterRoleBinding {metricsauth.AGENTS_BINDING}: {len(subjects)} agent ServiceAccount(s)")
    state.subjects = subjects


def _version(rv: Any) -> int:
    # resourceVersions are opaque to clients, but every server in use (etcd's revision) makes them
    # integers that grow; a non-integer one simply never looks like a later edit
    try:
        return int(rv)
    except (TypeError, ValueError):
        return 0


@kopf.index(*PODS, labels=OWNED_FILTER)
def agent_problems(namespace: str, labels: Any, spec: Any, status: Any, **_: Any) -> dict:
    problem = status_mod.pod_problem(dict(spec), dict(status))
    return {(namespace, labels.get(render.INSTANCE_LABEL)): problem} if problem else {}


# --- reconcile ----------------------------------------------------------------------------------

def _examine(body: Any, claims: kopf.Index) -> tuple[model.Monitor | None, str | None, str | None]:
    """(monitor, invalid-spec message, conflict message) for a monitor body."""
    meta = body["metadata"]
    try:
        monitor = model.parse(meta["name"], meta["namespace"], dict(body.get("spec") or {}),
                              uid=meta.get("uid", ""), created=meta.get("creationTimestamp", ""))
    except model.InvalidSpec as e:
        return None, str(e), None
    return monitor, None, conflict.find(conflict.Claim.of(monitor), list(claims.get(None, [])))


def _apply_children(monitor: model.Monitor, body: Any, logger: Any, memo: kopf.Memo) -> str:
    """Apply every child; remember in the monitor's memo what this apply produced ({kind: version}).

    kopf keeps one memo per monitor, in memory only: after a restart the resume handler applies
    everything again and refills it.
    """
    objs = render.objects(monitor)
    kopf.adopt(objs, owner=body)
    applied: dict[str, int] = {}
    try:
        for obj in objs:
            try:
                stored = kube.apply(obj)
            except kube.ApiError as e:
                if e.status != 404 or obj["kind"] not in render.SCRAPE_API:
                    raise
                # The scraper's operator (its CRD) is not installed: the agents still run and push.
                kopf.warn(body, reason="ScrapeNotInstalled",
                          message=f"spec.scrape.kind {obj['kind']}: no {obj['apiVersion']} API in this cluster "
                                  f"(install its operator's CRDs, or use kind Service)")
                continue
            meta = stored.get("metadata") or {}
            version = int(meta.get("generation") or 0) if obj["kind"] == "DaemonSet" else \
                _version(meta.get("resourceVersion"))
            applied[obj["kind"]] = version
    except kube.ApiError as e:
        raise kopf.TemporaryError(f"applying the agent objects failed: {e}", delay=10) from None
    if memo.get(APPLIED) != applied:
        logger.info(f"applied {', '.join(o['kind'] + ' ' + o['metadata']['name'] for o in objs)}")
    memo[APPLIED] = applied
    return render.config_hash(monitor)


def _edited_by_hand(key: tuple[str, str], memo: kopf.Memo, set_versions: kopf.Index,
                    config_versions: kopf.Index) -> str | None:
    """The kind of a child whose watched version moved past what our last apply produced, if any."""
    mine = memo.get(APPLIED)
    if mine is None:
        return None
    for kind, index in (("DaemonSet", set_versions), ("ConfigMap", config_versions)):
        seen = max(index.get(key, [0]), default=0)
        if kind in mine and seen > mine[kind]:
            return kind
    return None


def _status(body: Any, invalid: str | None, clash: str | None, agent_sets: kopf.Index,
            agent_problems: kopf.Index, generation: int, config_hash: str | None) -> dict[str, Any]:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    counts = next(iter(agent_sets.get(key, [])), None)
    return status_mod.compute(
        generation=generation, invalid=invalid, conflict=clash, counts_=counts,
        problems=list(agent_problems.get(key, [])), config_hash=config_hash,
        previous=dict(body.get("status") or {}))


def _write(patch: kopf.Patch, body: Any, desired: dict[str, Any]) -> None:
    for k, v in status_mod.diff(dict(body.get("status") or {}), desired).items():
        patch.status[k] = v


@kopf.on.resume(*MONITORS)
@kopf.on.create(*MONITORS)
@kopf.on.update(*MONITORS)
def reconcile(body: kopf.Body, meta: Any, patch: kopf.Patch, logger: Any, memo: kopf.Memo, claims: kopf.Index,
              agent_sets: kopf.Index, agent_problems: kopf.Index, agent_services: kopf.Index, **_: Any) -> None:
    monitor, invalid, clash = _examine(body, claims)
    config_hash = None
    if monitor is not None and clash is None:
        config_hash = _apply_children(monitor, body, logger, memo)
        if (meta["namespace"], meta["name"]) in agent_services:
            for api_version, kind in render.scrape_leftovers(monitor):  # spec.scrape removed or changed
                kube.delete(api_version, kind, meta["namespace"], render.child_name(monitor))
    elif clash is not None:
        kube.delete("apps/v1", "DaemonSet", meta["namespace"], render.child_name(monitor))
        kopf.warn(body, reason="Conflict", message=clash)
    _write(patch, body, _status(body, invalid, clash, agent_sets, agent_problems,
                                meta.get("generation") or 0, config_hash))
    if invalid:
        raise kopf.PermanentError(invalid)


@kopf.timer(*MONITORS, interval=FLUSH_SECONDS, initial_delay=FLUSH_SECONDS)
def flush(body: kopf.Body, meta: Any, status: Any, patch: kopf.Patch, logger: Any, memo: kopf.Memo, claims: kopf.Index,
          agent_sets: kopf.Index, agent_problems: kopf.Index, set_versions: kopf.Index,
          config_versions: kopf.Index, **_: Any) -> None:
    monitor, invalid, clash = _examine(body, claims)
    key = (meta["namespace"], meta["name"])
    config_hash = status.get("configHash") or None
    if monitor is not None:
        has_set = key in agent_sets
        edited = _edited_by_hand(key, memo, set_versions, config_versions) if clash is None else None
        if clash is None and not has_set and status.get("observedGeneration") is not None:
            config_hash = _apply_children(monitor, body, logger, memo)
        elif edited:
            logger.info(f"{edited} {render.child_name(monitor)} was edited by hand: putting back what the monitor says")
            config_hash = _apply_children(monitor, body, logger, memo)
        elif clash is not None and has_set:
            kube.delete("apps/v1", "DaemonSet", meta["namespace"], render.child_name(monitor))
    generation = status.get("observedGeneration") or 0
    if clash is not None and status.get("reason") != "Conflict":
        generation = meta.get("generation") or 0
    desired = _status(body, invalid, clash, agent_sets, agent_problems, generation, config_hash)
    if status.get("observedGeneration") is None:
        # kopf runs this timer beside a first reconcile, with the body as it was before that
        # reconcile's status write: what reconcile owns must not be overwritten with our zeros
        # (tests/k8s/test_handlers.py caught observedGeneration 0 staying on a Ready monitor).
        del desired["observedGeneration"], desired["configHash"]
    _write(patch, body, desired)


def _timers_without_finalizer(registry: kopf.OperatorRegistry) -> None:
    """kopf puts its finalizer on every object a timer watches, only to stop the timer before the object
    goes. `flush` needs no such grace (it reads indexes and writes status; a write to a monitor already
    gone fails harmlessly), and the finalizer blocks deletion whenever the operator is not there to
    remove it: `helm uninstall` deletes the monitors, the operator's binding and its Deployment at once,
    which left the monitors Terminating for good (tests/helm/test_install.py), as did deleting a
    namespace while the operator was down. Without it kopf stops the timer when the object is gone, and
    removes the finalizer an older operator left. kopf offers no public switch: its handler is rebuilt."""
    import dataclasses
    spawning = registry._spawning  # kopf 1.x: the registry of timers and daemons
    spawning._handlers[:] = [dataclasses.replace(h, requires_finalizer=False) for h in spawning._handlers]


_timers_without_finalizer(kopf.get_default_registry())
