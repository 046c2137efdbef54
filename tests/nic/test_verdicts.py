"""The verdict rules on a real VictoriaMetrics and a real vmalert, and the on-call command on the same data.

Synthetic nodes, one RDMA port each, are written straight into VictoriaMetrics every 0.5 s as the agent
would push them (counters that start at lifetime totals and move at known rates): one per condition,
two that show the precedence (link errors with transport errors is link_degraded; a PCIe stall with
back-pressure is pcie_stall), and a healthy one with the normal background of a busy RoCE port. The rules
are the shipped ones rendered with `tools/rules.py --timing fast` (5 s windows for the verdicts, 8 s
`for:`): on a loaded machine the newest 2-3 s of samples are not searchable yet, so the windows must be
longer than that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import need
from tests.helpers.netns import wait_for
from tests.helpers.vm import VM_BIN, VM_BIN_DIR, VictoriaMetrics, _need_binary, free_port

pytestmark = pytest.mark.vm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VMALERT = os.path.join(VM_BIN_DIR, "vmalert")
XTRACE = os.path.join(os.path.dirname(sys.executable), "xtrace")

HW, PMA = "xtrace_rdma_hw_counter_total", "xtrace_rdma_port_counter_total"
RX3 = {"netdev": "eth2", "direction": "rx", "priority": "3"}
TX3 = {"netdev": "eth2", "direction": "tx", "priority": "3"}
# what every port does on a busy, healthy RoCE fabric (per second)
BACKGROUND = {
    (HW, (("counter", "np_ecn_marked_roce_packets"),)): 10, (HW, (("counter", "np_cnp_sent"),)): 3,
    (HW, (("counter", "rp_cnp_handled"),)): 3, (HW, (("counter", "out_of_sequence"),)): 0.1,
    ("xtrace_nic_pause_duration_seconds_total", tuple(RX3.items())): 0.001,
    ("xtrace_nic_pause_frames_total", tuple(TX3.items())): 1,
    ("xtrace_nic_fec_corrected_bits_total", (("netdev", "eth2"),)): 1000,  # BER 1e-8 at 100G: normal
    ("xtrace_rdma_port_transmit_bytes_total", ()): 5e9, ("xtrace_rdma_port_receive_bytes_total", ()): 4e9,
}
NODES = {  # node -> (expected verdict, what it does on top of the background)
    "node-healthy": ("healthy", {}),
    "node-fabric": ("fabric_congestion", {(HW, (("counter", "np_ecn_marked_roce_packets"),)): 5000,
                                          ("xtrace_nic_pause_duration_seconds_total", tuple(RX3.items())): 0.2}),
    "node-pfc": ("pfc_blocking", {("xtrace_nic_pause_duration_seconds_total", tuple(RX3.items())): 0.3}),
    "node-host": ("host_backpressure", {("xtrace_nic_pause_frames_total", tuple(TX3.items())): 1000,
                                        ("xtrace_nic_discards_total", (("netdev", "eth2"), ("direction", "rx"),
                                                                       ("cause", "port_buffer"))): 50}),
    "node-lossy": ("lossy_transport", {(HW, (("counter", "out_of_sequence"),)): 20,
                                       (HW, (("counter", "packet_seq_err"),)): 5}),
    "node-link": ("link_degraded", {("xtrace_nic_symbol_errors_total", (("netdev", "eth2"), ("layer", "phy"))): 3,
                                    (HW, (("counter", "out_of_sequence"),)): 20}),
    "node-pcie": ("pcie_stall", {("xtrace_nic_pcie_stalled_seconds_total", (("netdev", "eth2"), ("kind", "read"))): 1,
                                 ("xtrace_nic_pause_frames_total", tuple(TX3.items())): 1000}),
}
GAUGES = {"node-pcie": {("xtrace_nic_pcie_stalled_ratio", (("netdev", "eth2"), ("kind", "read"))): 0.4}}


class Feeder:
    """Writes every node's series every 0.5 s through /api/v1/import/prometheus, as pushes would arrive
    (`_lines` says what; a subclass feeds other nodes)."""

    def __init__(self, vm: VictoriaMetrics):
        self.vm = vm
        self.totals: dict = {}
        self.stop = threading.Event()
        self.last = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _lines(self, now: float, dt: float) -> list[str]:
        ms = int(now * 1000)
        out = []
        for node, (_, extra) in NODES.items():
            port = f'cluster="test",node="{node}",device="mlx5_0",port="1"'
            out.append(f'xtrace_rdma_port_info{{{port},state="ACTIVE",link_layer="Ethernet",netdev="eth2"}} 1 {ms}')
            out.append(f"xtrace_rdma_port_rate_bytes_per_second{{{port}}} 12500000000 {ms}")
            for (metric, labels), per_second in {**BACKGROUND, **extra}.items():
                key = (node, metric, labels)
                # counters start at a lifetime total: their first samples must not read as new events
                self.totals[key] = self.totals.get(key, 1_000_000) + per_second * dt
                extra_labels = "".join(f',{k}="{v}"' for k, v in labels)
                out.append(f"{metric}{{{port}{extra_labels}}} {self.totals[key]:.6f} {ms}")
            for (metric, labels), value in GAUGES.get(node, {}).items():
                out.append(f"{metric}{{{port}{''.join(f',{k}={v!r}'.replace(chr(39), chr(34)) for k, v in labels)}}} {value} {ms}")
        # flows and pods for `xtrace top`
        for src, dst, rate in (("10.0.0.1", "10.0.0.2", 3e8), ("10.0.0.3", "10.0.0.2", 1e6)):
            key = ("flow", src, dst)
            self.totals[key] = self.totals.get(key, 0) + rate * dt
            out.append(f'xtrace_network_bytes_total{{cluster="test",node="node-healthy",interface="eth0",'
                       f'src_ip="{src}",dst_ip="{dst}",protocol="6"}} {self.totals[key]:.0f} {ms}')
        out.append(f'kube_pod_info{{cluster="test",namespace="ml",pod="trainer-0",pod_ip="10.0.0.1"}} 1 {ms}')
        return out

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            body = ("\n".join(self._lines(now, now - self.last)) + "\n").encode()
            self.last = now
            req = urllib.request.Request(self.vm.import_url, data=body, method="POST")
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except OSError:
                pass
            self.stop.wait(0.5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class VmAlert:
    def __init__(self, vm: VictoriaMetrics, rules: str, log: str):
        self.port = free_port()
        usage = subprocess.run([VMALERT, "-help"], capture_output=True, text=True)
        no_delay = ["-rule.evalDelay=0s"] if "rule.evalDelay" in usage.stdout + usage.stderr else []
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [VMALERT, f"-rule={rules}", f"-datasource.url={vm.url}", f"-remoteWrite.url={vm.url}",
                 "-notifier.blackhole", "-evaluationInterval=1s", f"-httpListenAddr=127.0.0.1:{self.port}",
                 "-loggerLevel=WARN", *no_delay], stdout=f, stderr=subprocess.STDOUT)

    def alerts(self) -> list[dict]:
        assert self.proc.poll() is None, open(self.log).read()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=5) as r:
            return json.load(r)["data"]["alerts"] or []

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rules_lab(tmp_path_factory, name: str, feeder: type[Feeder]):
    """VictoriaMetrics fed by `feeder` and real vmalert evaluating the generated rules at fast timing;
    a generator for a module fixture: yields (vm, vmalert), stops both after."""
    _need_binary(VM_BIN)
    need(os.access(VMALERT, os.X_OK), f"{VMALERT} not built: run `make vm`")
    work = tmp_path_factory.mktemp(name)
    rules = work / "rules"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "rules.py"), "--timing", "fast",
                        "--out", str(rules)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    vm = VictoriaMetrics(str(work / "data"), free_port())
    vm.start()
    feeding = feeder(vm)
    alert = VmAlert(vm, str(rules / "xtrace.rules.yml"), str(work / "vmalert.log"))
    yield vm, alert
    alert.stop()
    feeding.close()
    vm.stop()


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    yield from rules_lab(tmp_path_factory, "verdicts", Feeder)


def recorded_verdicts(vm: VictoriaMetrics) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in vm.query("last_over_time(node_port:xtrace_verdict:active[1500ms] offset 3s)"):
        out.setdefault(s["metric"]["node"], set()).add(s["metric"]["verdict"])
    return out


def test_each_condition_gives_exactly_its_verdict(fabric):
    vm, _ = fabric
    want = {node: {verdict} for node, (verdict, _) in NODES.items()}
    got: dict = {}

    def settled():
        got.clear()
        got.update(recorded_verdicts(vm))
        return got == want

    try:
        wait_for(settled, 40, "every node's verdict", every=0.5)
    except AssertionError:
        raise AssertionError(f"recorded {got}, want {want}") from None
    ranks = {s["metric"]["node"]: float(s["value"][1]) for s in vm.query("node_port:xtrace_verdict:rank")}
    assert ranks == {"node-link": 6, "node-pcie": 5, "node-host": 4, "node-fabric": 3, "node-pfc": 2,
                     "node-lossy": 1, "node-healthy": 0}
    pfc = vm.query('node_port:xtrace_condition:active{condition="pfc_blocking"}')
    assert {(s["metric"]["node"], s["metric"]["priority"]) for s in pfc} == {("node-pfc", "3"), ("node-fabric", "3")}


def test_sustained_verdicts_fire_their_alert_and_healthy_stays_quiet(fabric):
    _, alert = fabric
    want = {(f"XTraceRdmaPort{''.join(p.capitalize() for p in verdict.split('_'))}", node)
            for node, (verdict, _) in NODES.items() if verdict != "healthy"}
    seen: set = set()

    def fired():
        for a in alert.alerts():
            if "verdict" in a["labels"]:
                seen.add((a["labels"]["alertname"], a["labels"]["node"], a["state"]))
        return {(n, node) for n, node, state in seen if state == "firing"} >= want

    wait_for(fired, 40, "the verdict alerts", every=0.5)
    assert {(n, node) for n, node, _ in seen} == want  # nothing else, not even pending
    assert all(node != "node-healthy" for _, node, _ in seen)


def xtrace(vm_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([XTRACE, "--url", vm_url, *args], capture_output=True, text=True, timeout=60)


def test_the_cli_prints_each_verdict_worst_first(fabric):
    vm, _ = fabric
    wait_for(lambda: recorded_verdicts(vm) == {n: {v} for n, (v, _) in NODES.items()}, 40, "verdicts", every=0.5)
    r = xtrace(vm.url, "fabric", "--since", "8s")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:-1]]
    assert [(row[0], row[3]) for row in rows] == [
        ("node-link", "link_degraded"), ("node-pcie", "pcie_stall"), ("node-host", "host_backpressure"),
        ("node-fabric", "fabric_congestion"), ("node-pfc", "pfc_blocking"), ("node-lossy", "lossy_transport"),
        ("node-healthy", "healthy")]
    line = {row[0]: " ".join(row) for row in rows}
    assert "PFC priority 3" in line["node-pfc"] and "rx paused 3" in line["node-pfc"]  # 30.0%
    assert "PCIe stalled 40%" in line["node-pcie"]
    assert r.stdout.splitlines()[-1].startswith("7 ports: 1 link_degraded")

    r = xtrace(vm.url, "--output", "json", "fabric", "--node", "node-host", "--since", "8s")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(p["node"], p["verdict"], p["worst_recorded"]) for p in doc["ports"]] == [
        ("node-host", "host_backpressure", "host_backpressure")]
    assert doc["ports"][0]["evidence"]["tx_pause_per_second"] == pytest.approx(1001, rel=0.2)
    assert doc["ports"][0]["evidence"]["discards_per_second"] == pytest.approx(50, rel=0.2)


def test_the_cli_top(fabric):
    vm, _ = fabric
    r = xtrace(vm.url, "top", "--since", "8s")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Top talkers")
    assert "10.0.0.1 (ml/trainer-0) -> 10.0.0.2" in lines[1] and "300.0MB/s" in lines[1]
    assert "10.0.0.3 -> 10.0.0.2" in lines[2]
    ports = lines[lines.index(next(x for x in lines if x.startswith("RDMA ports"))) + 1:]
    assert len(ports) == 7 and all("9.0GB/s" in p for p in ports)


def test_the_cli_without_data_or_database(tmp_path):
    _need_binary(VM_BIN)
    vm = VictoriaMetrics(str(tmp_path / "empty"), free_port())
    vm.start()
    try:
        for args in (("fabric",), ("top",), ("fabric", "--node", "node-x")):
            r = xtrace(vm.url, *args)
            assert r.returncode == 2 and r.stdout == ""
            assert r.stderr.count("\n") == 1 and "no XTrace data" in r.stderr, r.stderr
        # something answers, but not VictoriaMetrics' query API: the refusal in one line, exit 1
        r = xtrace(vm.url + "/no-such-prefix", "fabric")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "refused the query: HTTP 4" in r.stderr, r.stderr
    finally:
        vm.stop()
    r = xtrace(vm.url, "fabric")
    assert r.returncode == 2 and r.stderr.startswith(f"xtrace: cannot reach VictoriaMetrics at {vm.url}")
    assert r.stderr.count("\n") == 1
    r = xtrace(vm.url, "fabric", "--since", "fifteen")
    assert r.returncode == 2 and "not a duration" in r.stderr and "Traceback" not in r.stderr


def dashboard_query(title: str, ref: str = "A") -> str:
    with open(os.path.join(ROOT, "deploy", "dashboards", "xtrace-rdma.json")) as f:
        doc = json.load(f)
    expr = next(t["expr"] for p in doc["panels"] if p["title"] == title for t in p.get("targets", [])
                if t["refId"] == ref)
    for name, value in (("__rate_interval", "8s"), ("cluster", "test"), ("node", ".*"), ("device", ".*"),
                        ("port", ".*")):
        expr = expr.replace(f"${name}", value)
    return expr


def test_the_dashboard_timeline_and_evidence(fabric):
    """The RDMA dashboard's state timeline shows each port's verdict (its value mapping names it) and
    the evidence panels show the numbers that made it."""
    vm, _ = fabric
    wait_for(lambda: recorded_verdicts(vm) == {n: {v} for n, (v, _) in NODES.items()}, 40, "verdicts", every=0.5)
    with open(os.path.join(ROOT, "deploy", "dashboards", "xtrace-rdma.json")) as f:
        timeline = next(p for p in json.load(f)["panels"] if p["title"] == "Verdict per port")
    names = {int(k): v["text"] for k, v in timeline["fieldConfig"]["defaults"]["mappings"][0]["options"].items()}
    shown = {s["metric"]["node"]: names[int(float(s["value"][1]))]
             for s in vm.query(dashboard_query("Verdict per port"))}
    assert shown == {node: verdict for node, (verdict, _) in NODES.items()}
    share = {(s["metric"]["node"], s["metric"]["priority"]): float(s["value"][1])
             for s in vm.query(dashboard_query("Receive pause share per priority"))}
    assert share[("node-pfc", "3")] == pytest.approx(0.301, rel=0.05)
    assert share[("node-healthy", "3")] == pytest.approx(0.001, rel=0.05)
    stalled = {s["metric"]["node"]: float(s["value"][1]) for s in vm.query(dashboard_query("PCIe outbound stalls (share of time)"))}
    assert stalled == {"node-pcie": 0.4}
