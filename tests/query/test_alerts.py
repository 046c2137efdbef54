"""Every alert, evaluated by a real vmalert against each of the lab's databases at once (the single node,
and the cluster's tenant through vmselect, vmalert writing back through vminsert): quiet before, firing
on its injected fault (for the right node, port and counter), resolved once the fault is gone.

The rules are the shipped ones rendered with `tools/rules.py --timing fast`: the same expressions and
thresholds with windows of seconds, so the whole cycle takes seconds instead of an hour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import pytest

from tests.conftest import need
from tests.helpers.netns import wait_for
from tests.helpers.vm import free_port
from tests.query.conftest import ROOT, flood, lossy_tcp, vm_binary
from tests.query.test_panels import grafana, key, panels

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

VMALERT = vm_binary("vmalert")


class VmAlert:
    def __init__(self, lab, db, rules_dir: str, name: str):
        self.port, self.name = free_port(), name
        self.log = os.path.join(rules_dir, f"vmalert-{name}.log")
        # vmalert appends /api/v1/write: a tenant's write URL without it is vminsert's /insert/<t>/prometheus
        write = db.write_url.removesuffix("/api/v1/write")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [VMALERT, f"-rule={os.path.join(rules_dir, 'xtrace.rules.yml')}", f"-datasource.url={db.url}",
                 f"-remoteWrite.url={write}", f"-notifier.url={lab.notifier.url}", "-evaluationInterval=1s",
                 f"-httpListenAddr=127.0.0.1:{self.port}", "-loggerLevel=WARN", *self._no_delay()],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, 15, "vmalert to start")
        self.started = time.time()

    @staticmethod
    def _no_delay() -> list[str]:
        """Newer vmalert evaluates 30 s in the past by default (-rule.evalDelay, for a database's latency
        offset); the lab's VictoriaMetrics has none, and the faults last seconds."""
        usage = subprocess.run([VMALERT, "-help"], capture_output=True, text=True)
        return ["-rule.evalDelay=0s"] if "rule.evalDelay" in usage.stdout + usage.stderr else []

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.read()

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, open(self.log).read()[-2000:]
        try:
            self._get("/health")
            return True
        except OSError:
            return False

    def active(self) -> set[tuple]:
        """(alertname, state, the labels that say where) of every pending or firing alert."""
        out = set()
        for a in json.loads(self._get("/api/v1/alerts"))["data"]["alerts"] or []:
            labels = a["labels"]
            where = tuple(labels.get(k, "") for k in ("cluster", "node", "interface", "target", "reason", "device",
                                                       "port", "counter", "daemonset"))
            out.add((labels["alertname"], a["state"], *where))
        return out

    def firing(self) -> set[tuple]:
        return {(a[0], *a[2:]) for a in self.active() if a[1] == "firing"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def vmalerts(lab_base, tmp_path_factory):
    """{database name: a vmalert evaluating the fast rules against it}."""
    need(os.access(VMALERT, os.X_OK), f"{VMALERT} not installed (make vm, or apt-get install victoria-metrics)")
    rules = str(tmp_path_factory.mktemp("fast-rules"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "rules.py"), "--timing", "fast", "--out", rules],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    alerts = {}
    try:
        for name, db in lab_base.dbs.items():
            alerts[name] = VmAlert(lab_base, db, rules, name)
        yield alerts
    finally:
        for alert in alerts.values():
            alert.stop()


def expected_firing(lab) -> set[tuple]:
    """(alertname, cluster, node, interface, target, reason, device, port, counter, daemonset)."""
    iface = lab.veth.dev_b

    def at(name, cluster="test", node="", interface="", target="", reason="", device="", port="", counter="",
           daemonset=""):
        return (name, cluster, node, interface, target, reason, device, port, counter, daemonset)

    return {
        at("XTraceAgentNotPushing", cluster="other", node="node-c"),
        at("XTraceAgentsNotReady", daemonset="xtrace-uplinks"),
        at("XTraceSamplesDropped", node="node-a", target="reject", reason="rejected"),
        at("XTraceFlowTableOverflow", node="node-a", interface=iface),
        at("XTraceOtherShareHigh", node="node-a", interface=iface),
        at("XTraceDropRateHigh", node="node-a", interface=iface, reason="NO_SOCKET"),  # the flood's closed port
        at("XTraceTcpRetransmitRatioHigh", node="node-a", interface=iface),
        at("XTraceRdmaLinkDown", node="node-b", device="mlx5_0", port="1"),
        at("XTraceRdmaLinkFlapping", node="node-b", device="mlx5_0", port="1"),
        at("XTraceRdmaPortErrors", node="node-b", device="mlx5_0", port="1", counter="link_downed"),
        at("XTraceRdmaPortErrors", node="node-b", device="mlx5_bond_0", port="1", counter="port_rcv_errors"),
        at("XTraceRdmaTransportErrors", node="node-b", device="mlx5_1", port="1", counter="out_of_sequence"),
        at("XTraceRdmaCongestion", node="node-b", device="mlx5_1", port="1", counter="np_cnp_sent"),
        at("XTraceRdmaCounterSaturated", node="node-b", device="mlx4_0", port="1", counter="symbol_error"),
    }


def test_every_alert_fires_on_its_fault_and_resolves(lab_base, vmalerts):
    lab = lab_base
    # quiet first: a few evaluations after the known window's moves (errors, CNPs) left the 5 s windows
    started = max(a.started for a in vmalerts.values())
    settled = max(started + 2.5, lab.known.xdp[1] + 7, lab.known.rdma[1] + 7)
    time.sleep(max(0.0, settled - time.time()))
    wait_for(lambda: not any(a.active() for a in vmalerts.values()), 20, "no alert before the faults")

    # the faults, all at once
    lab.reject.status = 400                              # one remote-write target refuses: samples dropped
    flood(lab)                                           # 3,000 new flows: kernel table and series budget overflow,
    #                                                      and as many drops (no socket on their port)
    lossy_tcp(lab)                                       # node-a's TCP socket retransmits over a lossy path
    s = lab.sysfs
    s.write("mlx5_0", 1, "state", "1: DOWN")              # an IB link goes down, flapping 3 times
    s.write("mlx5_0", 1, "phys_state", "3: Disabled")
    s.add("mlx5_0", 1, "counters", "link_downed", 3)
    s.add("mlx5_bond_0", 1, "counters", "port_rcv_errors", 2)
    s.add("mlx5_1", 1, "hw_counters", "out_of_sequence", 7)
    s.add("mlx5_1", 1, "hw_counters", "np_cnp_sent", 100_000)
    s.write("mlx4_0", 1, "counters/symbol_error", "65535")  # 16-bit: saturated
    lab.spare.stop(signal.SIGKILL)                         # node-c's agent dies
    lab.ksm.ready_agents = 2                               # and one agent pod of a DaemonSet is not ready

    # each alert fires for as long as its fault lasts in its window (seconds): collect every one seen
    want = expected_firing(lab)
    seen: dict[str, set] = {name: set() for name in vmalerts}

    def all_fired():
        for name, alert in vmalerts.items():
            seen[name].update(alert.firing())
        return all(fired >= want for fired in seen.values())

    try:
        # the cluster path registers the flood's new series (flows, drop flows) slower under load: once 30 s
        wait_for(all_fired, 60, "every alert to fire")
    except AssertionError:
        raise AssertionError("\n".join(f"{name}: not firing: {want - fired}, unexpected: {fired - want}"
                                        for name, fired in seen.items())) from None
    for name, fired in seen.items():
        assert fired == want, f"{name}: unexpected alerts: {fired - want}"
    # the RDMA dashboard's saturated-counter table names it too (empty in the known window)
    saturated = next(e for title, _, e in panels("rdma") if title == "Saturated counters")
    for name, db in lab.dbs.items():
        assert replace(lab, vm=db).query(grafana(saturated, 1000), time.time()) == {
            key(node="node-b", device="mlx4_0", port="1", counter="symbol_error"): 1.0}, name

    # the faults removed
    lab.reject.status = 204
    s.write("mlx5_0", 1, "state", "4: ACTIVE")
    s.write("mlx5_0", 1, "phys_state", "5: LinkUp")
    s.write("mlx4_0", 1, "counters/symbol_error", "0")      # cleared (perfquery -R)
    # node-c's agent comes back watching one more port, whose counters already hold errors: new series
    # whose first samples must not read as new errors
    lab.spare.config["devices"] = ["mlx5_1", "mlx5_bond_0"]
    lab.spare.start()
    lab.ksm.ready_agents = 3
    late: dict[str, set] = {name: set() for name in vmalerts}

    def resolved():
        for name, alert in vmalerts.items():
            late[name].update(alert.firing() - want)
        return not any(alert.active() for alert in vmalerts.values())

    try:
        wait_for(resolved, 40, "every alert to resolve")
    except AssertionError:
        raise AssertionError(f"still active: { {n: a.active() for n, a in vmalerts.items()} }") from None
    # the one expected: once cleared, the saturated counter's errors are pushed (it counted at least up to
    # its maximum: docs/rdma-metrics.md), and the port-error alert reports them
    cleared = ("XTraceRdmaPortErrors", "test", "node-b", "", "", "", "mlx4_0", "1", "symbol_error", "")
    for name, fired in late.items():
        assert fired <= {cleared}, f"{name}: fired while resolving: {fired - {cleared}}"


def test_vmalert_writes_the_recording_rules(lab_base, vmalerts):
    """vmalert evaluates the recording rules too and writes them back: the series exist in each database."""
    flood(lab_base, 10)  # traffic in the 2 s window, whatever ran before
    want = {"node_interface:xtrace_interface_bytes:rate2s", "node_interface:xtrace_interface_packets:rate2s",
            "node_interface:xtrace_other_bytes:ratio_rate2s", "node_protocol:xtrace_network_bytes:rate2s",
            "node_port:xtrace_rdma_transmit_bytes:rate2s", "node_port:xtrace_rdma_receive_bytes:rate2s",
            "node_port:xtrace_rdma_congestion:rate2s", "node_port:xtrace_rdma_errors:rate2s",
            "node_interface_reason:xtrace_drop_packets:rate2s"}
    names: dict[str, set] = {name: set() for name in vmalerts}

    def recorded():
        for name in vmalerts:
            found = lab_base.dbs[name].export('{__name__=~"node_.*:xtrace_.*"}')
            names[name].update(s["metric"]["__name__"] for s in found)
        return all(got >= want for got in names.values())

    try:
        wait_for(recorded, 15, "the recorded series")
    except AssertionError:
        raise AssertionError(f"not recorded: { {n: want - got for n, got in names.items()} }") from None
