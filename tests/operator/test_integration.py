"""The operator end to end: kopf running the real handlers against an API server.

By default the server is kmock's emulator (see TESTING.md for what it does not emulate); with
KUBECONFIG set the same tests run against that cluster. Each test says which real behaviour
the emulator stands in for.
"""

from __future__ import annotations

import asyncio

import pytest
from kopf.testing import KopfRunner

from tests.operator.conftest import MONITORS_PATH, REAL_CLUSTER
from xtrace_operator import render

pytestmark = pytest.mark.cluster

DS = "/apis/apps/v1/namespaces/{ns}/daemonsets/xtrace-%s"
CM = "/api/v1/namespaces/{ns}/configmaps/xtrace-%s"
SA = "/api/v1/namespaces/{ns}/serviceaccounts/xtrace-%s"
MON = MONITORS_PATH + "/%s"
CHILDREN = ("v1/serviceaccounts", "v1/configmaps", "apps/v1/daemonsets")
XDP = {"mode": "xdp", "interfaces": ["eth0"]}


def _condition(mon: dict | None, type_: str) -> dict:
    for c in ((mon or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def _runner(api) -> KopfRunner:
    scope = ["--namespace", api.namespace] if REAL_CLUSTER else ["--all-namespaces"]
    return KopfRunner(["run", "--standalone", "-m", "xtrace_operator.handlers", *scope], timeout=60)


async def test_create_makes_owned_children(api, operator):
    """Create: ServiceAccount, ConfigMap and DaemonSet appear, owned by the monitor.

    kmock stands in for the API server's storage; owner references are asserted as data
    (the garbage collection they drive on a real cluster is not emulated).
    """
    mon = await api.create_monitor("web", XDP)
    uid = mon["metadata"]["uid"]
    for path in (SA, CM, DS):
        child = await api.eventually(lambda p=path: api.get(p % "web"), what=path % "web")
        refs = child["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == \
            [("XTraceMonitor", "web", uid, True)]
        assert child["metadata"]["labels"][render.INSTANCE_LABEL] == "web"
    ds = await api.get(DS % "web")
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    mon = await api.eventually(lambda: api.get(MON % "web"), what="status")
    await api.eventually(lambda: _status_has(api, "web", "observedGeneration"), what="observedGeneration")


async def _status_has(api, name: str, key: str):
    mon = await api.get(MON % name)
    return ((mon or {}).get("status") or {}).get(key) is not None and mon


async def test_update_rolls_the_daemonset(api, operator):
    """Update: a spec change rewrites the ConfigMap and changes the pod template's config hash.

    On a real cluster the changed template makes the DaemonSet controller roll the pods; kmock
    has no controllers, so the hash change in the template is what is checked.
    """
    await api.create_monitor("roll", XDP)
    ds = await api.eventually(lambda: api.get(DS % "roll"), what="DaemonSet")
    before = ds["spec"]["template"]["metadata"]["annotations"][render.HASH_ANNOTATION]
    patch = {"spec": {"interfaces": ["eth0", "eth1"]}}
    if not REAL_CLUSTER:
        patch["metadata"] = {"generation": 2}  # the API server bumps it on a spec change
    await api.call("PATCH", MON % "roll", patch)

    async def rolled():
        ds = await api.get(DS % "roll")
        after = ds["spec"]["template"]["metadata"]["annotations"][render.HASH_ANNOTATION]
        return after != before and ds
    await api.eventually(rolled, what="new config hash")
    cm = await api.get(CM % "roll")
    assert "eth1" in cm["data"]["agent.yaml"]


async def test_conflict_refuses_the_later_monitor(api, operator):
    """Conflict: two xdp monitors on the same interface and nodes; the later one is refused by name."""
    await api.create_monitor("first", XDP, created="2025-01-01T00:00:00Z")
    await api.eventually(lambda: api.get(DS % "first"), what="first DaemonSet")
    await api.create_monitor("second", {"mode": "xdp", "interfaces": ["eth*"]}, created="2025-01-02T00:00:00Z")

    async def refused():
        c = _condition(await api.get(MON % "second"), "Conflict")
        return c.get("status") == "True" and c
    c = await api.eventually(refused, what="Conflict condition")
    assert f"XTraceMonitor {api.namespace}/first" in c["message"] and "eth0" in c["message"]
    assert await api.get(DS % "second") is None
    assert _condition(await api.get(MON % "first"), "Conflict").get("status") == "False"


async def test_invalid_spec_sets_condition(api, operator):
    """Invalid spec: the operator's own validation reports the exact problem.

    A real API server would reject this spec at apply time (CRD schema + CEL, tested in
    test_crd.py); kmock stores anything, which is how a CRD installed without its schema behaves.
    """
    await api.create_monitor("bad", {"mode": "rdma", "interfaces": ["eth0"]})

    async def flagged():
        c = _condition(await api.get(MON % "bad"), "InvalidSpec")
        return c.get("status") == "True" and c
    c = await api.eventually(flagged, what="InvalidSpec condition")
    assert "spec.interfaces: rdma mode reads RDMA devices" in c["message"]
    assert _condition(await api.get(MON % "bad"), "Ready")["reason"] == "InvalidSpec"
    assert await api.get(DS % "bad") is None


@pytest.mark.skipif(REAL_CLUSTER, reason="the DaemonSet controller owns the status on a real cluster")
async def test_daemonset_status_flows_into_monitor_status(api, operator):
    """Status: the DaemonSet's counts and the agent pods' problems reach the monitor's status.

    kmock has no DaemonSet controller and no kubelet: the test writes the DaemonSet status and
    an agent pod's status as they would.
    """
    await api.create_monitor("fleet", XDP)
    await api.eventually(lambda: api.get(DS % "fleet"), what="DaemonSet")
    await api.set_daemonset_status("fleet", desired=3, ready=2)
    await api.create_agent_pod("fleet", "xtrace-fleet-abcde", "gpu-7", {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "agent", "ready": False, "restartCount": 4, "image": "x", "imageID": "",
                               "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]})

    async def counted():
        st = ((await api.get(MON % "fleet")) or {}).get("status") or {}
        return st.get("desiredNodes") == 3 and st.get("readyNodes") == 2 and st.get("notReadyNodes") and st
    st = await api.eventually(counted, what="node counts")
    assert st["notReadyNodes"] == [{"node": "gpu-7", "reason": "CrashLoopBackOff: back-off 40s"}]
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "gpu-7 (CrashLoopBackOff" in degraded["message"]
    assert st["reason"] == "AgentsNotReady"

    await api.call("PATCH", (DS % "fleet") + "/status", {"status": {"numberReady": 3}})
    await api.call("PATCH", "/api/v1/namespaces/{ns}/pods/xtrace-fleet-abcde", {"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "agent", "ready": True, "restartCount": 4, "image": "x",
                               "imageID": "", "state": {"running": {}}}]}})

    async def ready():
        mon = await api.get(MON % "fleet")
        return _condition(mon, "Ready").get("status") == "True" and not mon["status"]["notReadyNodes"] \
            and mon["status"]
    st = await api.eventually(ready, what="Ready")
    assert st["readyNodes"] == 3 and st["notReadyNodes"] == [] and st["reason"] == ""


async def test_restart_resumes_without_duplicates(api):
    """Restart: a second operator run resumes the monitor and writes nothing new.

    The emulator stands in for the API server's storage across the two runs (the children are
    created once; the second run finds them with the same applied hash and leaves them alone).
    """
    runner = _runner(api)
    await asyncio.to_thread(runner.__enter__)
    try:
        await api.create_monitor("keep", XDP)
        await api.eventually(lambda: api.get(DS % "keep"), what="DaemonSet")
        await api.eventually(lambda: _status_has(api, "keep", "configHash"), what="status")
        before = [await api.version(r, "xtrace-keep") for r in CHILDREN]
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
    runner = _runner(api)
    await asyncio.to_thread(runner.__enter__)
    try:
        await asyncio.sleep(2)  # resume handlers and a few status flushes
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
    assert [await api.version(r, "xtrace-keep") for r in CHILDREN] == before
    listing = await api.call("GET", "/apis/apps/v1/namespaces/{ns}/daemonsets")
    assert [d["metadata"]["name"] for d in listing["items"]] == ["xtrace-keep"]
    assert runner.exception is None
