"""Small pure parts of the operator: conflicts, status computation, validation messages."""

from __future__ import annotations

import pytest

from xtrace_operator import conflict, model
from xtrace_operator import status as st


def claim(name, created, spec):
    return conflict.Claim.of(model.parse(name, "ns", spec, created=created))


def test_interface_overlap():
    assert conflict.interface_overlap("eth0", "eth0")
    assert conflict.interface_overlap("eth*", "eth0") and conflict.interface_overlap("eth0", "eth*")
    assert not conflict.interface_overlap("eth0", "eth1")
    assert conflict.interface_overlap("ens*", "en*") and not conflict.interface_overlap("ens*", "eth*")


def test_later_monitor_conflicts_and_names_the_earlier():
    a = claim("a", "2025-01-01T00:00:00Z", {"interfaces": ["eth0"]})
    b = claim("b", "2025-01-02T00:00:00Z", {"interfaces": ["eth*"]})
    assert conflict.find(a, [a, b]) is None
    msg = conflict.find(b, [a, b])
    assert "XTraceMonitor ns/a" in msg and "eth0 (overlaps eth*)" in msg


def test_disjoint_selectors_or_interfaces_do_not_conflict():
    a = claim("a", "2025-01-01T00:00:00Z", {"interfaces": ["eth0"], "nodeSelector": {"pool": "x"}})
    b = claim("b", "2025-01-02T00:00:00Z", {"interfaces": ["eth0"], "nodeSelector": {"pool": "y"}, "port": 9500})
    c = claim("c", "2025-01-03T00:00:00Z", {"interfaces": ["eth1"], "port": 9501})
    assert conflict.find(b, [a, b, c]) is None and conflict.find(c, [a, b, c]) is None


def test_same_host_port_conflicts_across_modes():
    a = claim("a", "2025-01-01T00:00:00Z", {"mode": "rdma"})
    b = claim("b", "2025-01-02T00:00:00Z", {"mode": "nccl"})
    assert "host port 9435" in conflict.find(b, [a, b])


def test_pod_problems():
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert st.pod_problem({"nodeName": "n"}, ready) is None
    crash = {"conditions": [{"type": "Ready", "status": "False"}],
             "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                    "lastState": {"terminated": {"message": "config: xdp.sampling: bad\nmore"}}}]}
    assert st.pod_problem({"nodeName": "n"}, crash) == ("n", "CrashLoopBackOff: config: xdp.sampling: bad")
    probe = {"conditions": [{"type": "Ready", "status": "False"}],
             "containerStatuses": [{"ready": False, "state": {"running": {}}}]}
    assert st.pod_problem({"nodeName": "n"}, probe)[1].startswith("AgentNotReady")
    unsched = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": "0/3 nodes"}]}
    assert st.pod_problem({}, unsched) == ("(unscheduled)", "Unschedulable: 0/3 nodes")


def _compute(counts, problems=(), previous=None, invalid=None, clash=None):
    return st.compute(generation=1, invalid=invalid, conflict=clash, counts_=counts, problems=list(problems),
                      config_hash="h", previous=previous, now="2025-01-01T00:00:00Z")


def test_status_ready_degraded_and_stable():
    ok = _compute(st.Counts(3, 3, 3, True))
    assert ok["reason"] == "" and ok["readyNodes"] == 3
    assert {c["type"]: c["status"] for c in ok["conditions"]} == {
        "Ready": "True", "Degraded": "False", "InvalidSpec": "False", "Conflict": "False"}
    # Same facts later: nothing to write (lastTransitionTime is kept).
    later = st.compute(generation=1, invalid=None, conflict=None, counts_=st.Counts(3, 3, 3, True), problems=[],
                       config_hash="h", previous=ok, now="2025-06-01T00:00:00Z")
    assert st.diff(ok, later) == {}
    bad = _compute(st.Counts(3, 1, 3, True), [("n1", "CrashLoopBackOff"), ("n2", "ImagePullBackOff")], ok)
    assert bad["reason"] == "AgentsNotReady" and bad["notReadyCount"] == 2
    degraded = next(c for c in bad["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "n1 (CrashLoopBackOff)" in degraded["message"]
    assert set(st.diff(ok, bad)) >= {"readyNodes", "conditions", "notReadyNodes", "reason"}


def test_status_lists_at_most_a_few_nodes():
    problems = [(f"node-{i:04}", "CrashLoopBackOff") for i in range(1000)]
    s = _compute(st.Counts(1000, 0, 1000, True), problems)
    assert len(s["notReadyNodes"]) == st.MAX_LISTED_NODES and s["notReadyCount"] == 1000
    assert len(next(c for c in s["conditions"] if c["type"] == "Degraded")["message"]) < 400


def test_status_for_invalid_and_conflict():
    assert _compute(None, invalid="spec.mode: bad")["reason"] == "InvalidSpec"
    c = _compute(None, clash="XTraceMonitor ns/a already ...")
    assert c["reason"] == "Conflict" and c["desiredNodes"] == 0


def test_bounds_in_messages_are_printed_as_written():
    spec = {"mode": "xdp", "interfaces": ["eth0"], "xdp": {"flowTableSize": 2 ** 30}}
    body = {"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor",
            "metadata": {"name": "m", "namespace": "ns"}, "spec": spec}
    with pytest.raises(model.InvalidSpec) as exc:
        model.from_body(body)
    assert "between 1024 and 16777216, got 1073741824" in str(exc.value)
    body["spec"] = {"mode": "xdp", "interfaces": ["eth0"], "interval": 0.01}
    with pytest.raises(model.InvalidSpec, match="between 0.05 and 3600, got 0.01"):
        model.from_body(body)
