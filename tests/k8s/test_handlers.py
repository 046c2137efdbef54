"""The operator's kopf handlers in this process (kopf.testing.KopfRunner), against the real control plane.

tests/k8s/test_operator.py runs `xtrace-operator run` as a subprocess, as the Deployment does; here
the same handlers (`xtrace_operator.handlers`) run inside the test process, holding the
ServiceAccount token deploy/manifests grants (so RBAC is real), watching one namespace of their
own. The API server, the DaemonSet controller and kwok's nodes are real; what is checked is what
the handlers did to them, and the handlers' own log lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.k8s.conftest import Cluster, wait_for

pytestmark = pytest.mark.k8s


class InProcess(logging.Handler):
    """The running handlers' namespace, and their log lines (KopfRunner shows its output only at exit)."""

    def __init__(self, namespace: str):
        super().__init__(logging.DEBUG)
        self.ns, self.lines = namespace, []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def handlers(installed: Cluster, operator_kubeconfig: str) -> Iterator[InProcess]:
    import kopf
    import kubernetes
    from kopf.testing import KopfRunner

    from xtrace_operator import kube

    ns = installed.namespace()
    with pytest.MonkeyPatch.context() as mp:
        # The kubernetes client reads KUBECONFIG once, when imported (earlier in this session), and
        # both kopf's login and the handlers' client (kube.py) load that default location.
        mp.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", operator_kubeconfig)
        if "xtrace_operator.handlers" not in sys.modules:  # the flush interval is read at import
            mp.setenv("XTRACE_STATUS_FLUSH_SECONDS", "0.5")
        kube.configure()
        capture = InProcess(ns)
        logging.getLogger("kopf.objects").addHandler(capture)
        args = ["run", "--standalone", "--namespace", ns, "--verbose", "-m", "xtrace_operator.handlers"]
        # One namespace, named: the shipped ClusterRole does not list namespaces, and kopf's scan
        # for them would retry for about a minute before serving the named one anyway.
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        try:
            with KopfRunner(args, timeout=300, settings=settings) as runner:
                yield capture
        finally:
            logging.getLogger("kopf.objects").removeHandler(capture)
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0, runner.stdout[-3000:]
    assert "Traceback" not in runner.stdout, runner.stdout[-5000:]


def _spec(ns: str, k: int) -> dict:
    """An xdp spec with an interface and a host port of this monitor's own (k: which monitor)."""
    n = int(ns[3:], 16)
    return {"mode": "xdp", "interfaces": [f"h{k}{ns[3:]}"], "port": 20000 + (n + 7 * k + 3) % 40000}


def _agent_yaml(cluster: Cluster, ns: str, name: str) -> dict:
    cm = cluster.get("cm", f"xtrace-{name}", "-n", ns)
    return yaml.safe_load(cm["data"]["agent.yaml"]) if cm else {}


def _image(cluster: Cluster, ns: str, name: str) -> str | None:
    ds = cluster.get("ds", f"xtrace-{name}", "-n", ns)
    return ds["spec"]["template"]["spec"]["containers"][0]["image"] if ds else None


def test_reconcile_applies_once_and_flush_reports_ready(installed: Cluster, handlers: InProcess):
    """create -> reconcile applies the children; flush fills the status from the watched DaemonSet;
    later flushes apply nothing and log nothing more (the monitor's memo holds the last apply)."""
    ns = handlers.ns
    installed.monitor(ns, "one", _spec(ns, 1))
    status = wait_for(lambda: (s := installed.status(ns, "one")).get("readyNodes") == 3
                      and s.get("observedGeneration") == 1 and s, 60, "readyNodes 3 at generation 1")
    assert status["desiredNodes"] == 3 and status["reason"] == ""
    assert installed.condition(ns, "one", "Ready")["status"] == "True"
    version = installed.get("ds", "xtrace-one", "-n", ns)["metadata"]["resourceVersion"]
    time.sleep(4 * sys.modules["xtrace_operator.handlers"].FLUSH_SECONDS)  # several flushes
    applied = [line for line in handlers.log().splitlines() if "applied " in line and "xtrace-one" in line]
    assert len(applied) == 1 and "DaemonSet xtrace-one" in applied[0], applied
    assert installed.get("ds", "xtrace-one", "-n", ns)["metadata"]["resourceVersion"] == version


def test_a_spec_xdp_change_reaches_the_agent_config(installed: Cluster, handlers: InProcess):
    """update -> the new spec.xdp values, every one away from its default, in the rendered agent.yaml."""
    ns = handlers.ns
    spec = _spec(ns, 2)
    installed.monitor(ns, "two", spec)
    wait_for(lambda: _agent_yaml(installed, ns, "two"), 30, "the ConfigMap")
    xdp = {"attachMode": "generic", "flowTableSize": 4096, "sampling": 4, "idleTimeout": 30, "maxFlows": 500,
           "flowGauges": False, "directions": ["egress", "ingress"]}
    installed.monitor(ns, "two", {**spec, "xdp": xdp})
    want = {**xdp, "directions": ["ingress", "egress"]}  # the agent's canonical order
    got = wait_for(lambda: (a := _agent_yaml(installed, ns, "two")).get("xdp") == want and a, 30, "the new xdp")
    assert got["mode"] == "xdp" and got["interfaces"] == spec["interfaces"]


def test_a_hand_edit_is_put_back_by_flush(installed: Cluster, handlers: InProcess):
    ns = handlers.ns
    installed.monitor(ns, "three", _spec(ns, 3))
    image = wait_for(lambda: _image(installed, ns, "three"), 30, "the DaemonSet")
    installed.kubectl("set", "image", "ds/xtrace-three", "-n", ns, "agent=example.invalid/evil:1")
    wait_for(lambda: _image(installed, ns, "three") == image, 30, "the image put back")
    assert "DaemonSet xtrace-three was edited by hand" in handlers.log()


def test_an_invalid_spec_is_a_condition_and_no_children(installed: Cluster, handlers: InProcess):
    ns = handlers.ns
    installed.monitor(ns, "four", {**_spec(ns, 4), "nodeSelector": {"bad key!": "x"}})
    c = wait_for(lambda: installed.condition(ns, "four", "InvalidSpec").get("status") == "True"
                 and installed.condition(ns, "four", "InvalidSpec"), 30, "InvalidSpec")
    assert c["message"].startswith("spec.nodeSelector: bad key!='x' is not a valid label selector term")
    assert installed.get("ds", "xtrace-four", "-n", ns) is None and installed.get("cm", "xtrace-four", "-n", ns) is None


def test_monitors_carry_no_kopf_finalizer(installed: Cluster, handlers: InProcess):
    """The flush timer must not put kopf's finalizer on monitors (handlers._timers_without_finalizer):
    with it, a monitor deleted while no operator runs (helm uninstall removes the operator with the
    monitors) would stay Terminating for good (tests/helm/test_install.py shows that case end to end)."""
    ns = handlers.ns
    installed.monitor(ns, "five", _spec(ns, 5))
    wait_for(lambda: installed.status(ns, "five").get("observedGeneration") == 1, 60, "the first status")
    time.sleep(3 * sys.modules["xtrace_operator.handlers"].FLUSH_SECONDS)  # flushes ran on it
    meta = installed.get("xtm", "five", "-n", ns)["metadata"]
    assert not any(f.startswith("kopf.") for f in meta.get("finalizers") or []), meta.get("finalizers")
    installed.kubectl("delete", "xtm", "five", "-n", ns, "--wait=false")
    wait_for(lambda: installed.get("xtm", "five", "-n", ns) is None, 30, "the monitor gone")


def test_a_secured_monitor_binds_its_agents_for_token_review(installed: Cluster, handlers: InProcess):
    """metrics.auth: kubernetes -> the agents' ServiceAccount in xtrace-agents-metrics-auth (kept by an event
    handler whose state is in the operator's memo); deleting the monitor takes it out again."""
    ns = handlers.ns

    def subjects() -> list[tuple[str, str]]:
        crb = installed.get("clusterrolebinding", "xtrace-agents-metrics-auth") or {}
        return [(s["namespace"], s["name"]) for s in crb.get("subjects") or []]

    installed.monitor(ns, "six", {**_spec(ns, 6), "metrics": {"auth": "kubernetes"}})
    wait_for(lambda: (ns, "xtrace-six") in subjects(), 30, "the agents' ServiceAccount bound")
    assert installed.get("clusterrolebinding", "xtrace-agents-metrics-auth")["roleRef"]["name"] == \
        "system:auth-delegator"
    assert "ClusterRoleBinding xtrace-agents-metrics-auth: 1 agent ServiceAccount(s)" in handlers.log()
    installed.kubectl("delete", "xtm", "six", "-n", ns)
    wait_for(lambda: (ns, "xtrace-six") not in subjects(), 30, "the subject removed")
