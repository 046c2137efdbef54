"""Per-pod and per-namespace RDMA queries (recording rules and the RDMA dashboard's "Per pod" row),
run against a real VictoriaMetrics that a real `xtrace-agent -m nccl` with pod attribution filled.

The agent reads an SR-IOV host's sysfs tree (tests/fixtures/make_pci.py) and asks the kubelet's
pod-resources API, served by the stand-in in tests/owners/kubelet.py (the real v1 protocol on a unix
socket; no kubelet can run here), who holds which device. Between two reports the test moves known
counters on held devices and on a device nobody holds; every per-pod answer must be exactly the held
moves, per owner, and the unheld device must appear in none.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import pytest

from tests.conftest import need
from tests.fixtures import make_pci
from tests.helpers import vm as vm_helpers
from tests.helpers.netns import wait_for
from tests.helpers.vm import VictoriaMetrics, free_port
from tests.owners.kubelet import FakeKubelet
from tests.query.conftest import INTERVAL, SPAN, Agent
from tests.query.test_panels import (
    OFFSET,
    PORT_ERRORS,
    TRANSPORT_ERRORS,
    assert_exact,
    grafana,
    key,
    ms,
    panels,
    recording_rules,
)

pytestmark = [pytest.mark.vm]

VF = "nvidia.com/sriov_rdma_vf"
OWNERS = {  # device -> (namespace, pod)
    "mlx5_2": ("train", "job-0"),  # a VF
    "mlx5_1": ("train", "job-1"),  # a whole PF
    "mlx5_5": ("infer", "sf-0"),   # a subfunction
}
# (device, group, counter) -> delta moved in the known window; mlx5_0 (a PF) and mlx5_3 (a free VF)
# are nobody's: their moves must show in no per-pod answer.
MOVES = {
    ("mlx5_2", "counters", "port_xmit_data"): 1000,
    ("mlx5_2", "counters", "port_rcv_data"): 400,
    ("mlx5_2", "hw_counters", "packet_seq_err"): 3,
    ("mlx5_2", "hw_counters", "np_cnp_sent"): 50,
    ("mlx5_1", "counters", "port_xmit_data"): 2500,
    ("mlx5_1", "counters", "symbol_error"): 2,
    ("mlx5_5", "counters", "port_rcv_data"): 700,
    ("mlx5_5", "hw_counters", "rp_cnp_handled"): 20,
    ("mlx5_0", "counters", "port_xmit_data"): 9999,
    ("mlx5_0", "hw_counters", "packet_seq_err"): 9,
    ("mlx5_3", "counters", "port_rcv_data"): 8888,
}


def _path(root: str, device: str, group: str, counter: str) -> str:
    return os.path.join(root, "class", "infiniband", device, "ports", "1", group, counter)


def _add(root: str, device: str, group: str, counter: str, delta: int) -> None:
    path = _path(root, device, group, counter)
    with open(path) as f:
        value = int(f.read().strip())
    with open(path, "w") as f:
        f.write(f"{value + delta}\n")


class PodLab:
    def __init__(self, vm: VictoriaMetrics, agent: Agent, window: tuple[float, float]):
        self.vm, self.agent = vm, agent
        start, end = window
        self.t, self.w = ms(end + OFFSET), round((end - start) * 1000)
        self.dt = self._dt()

    def query(self, expr: str) -> dict[tuple, float]:
        answer = self.vm.query(expr, at=f"{self.t + 0.0002:.4f}")
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in answer}

    def _dt(self) -> dict[str, float]:
        """Seconds between the two samples of each device's port that bound the window."""
        out = {}
        start = self.t - self.w / 1000
        for s in self.vm.export('xtrace_rdma_port_info{node="node-p"}'):
            stamps = s["timestamps"]
            before = [t for t in stamps if t <= start * 1000]
            if before:
                out[s["metric"]["device"]] = (max(t for t in stamps if t <= self.t * 1000) - max(before)) / 1000
        return out

    def per(self, by: tuple[str, ...], group: str, counters: tuple[str, ...], factor: int = 1,
            kind: str = "rate", by_counter: bool = False) -> dict:
        """The expected answer, summed by owner labels `by` (and `counter`), from MOVES on held devices."""
        out: dict = {}
        for device, (namespace, pod) in OWNERS.items():
            owner = {"namespace": namespace, "pod": pod}
            for counter in counters:
                delta = MOVES.get((device, group, counter), 0) * factor
                k = key(**{b: owner[b] for b in by}, **({"counter": counter} if by_counter else {}))
                out[k] = out.get(k, 0) + (delta / self.dt[device] if kind == "rate" else delta)
        return out


@pytest.fixture(scope="module")
def pods_lab(tmp_path_factory):
    need(os.access(vm_helpers.VM_BIN, os.X_OK), f"{vm_helpers.VM_BIN} not installed (make vm)")
    work = str(tmp_path_factory.mktemp("pods-lab"))
    sock_dir = tempfile.mkdtemp(prefix="xk", dir="/tmp")  # a unix socket path fits in 108 bytes
    kubelet = FakeKubelet(os.path.join(sock_dir, "kubelet.sock")).start()
    kubelet.set({("train", "job-0"): {"worker": {VF: [make_pci.VF_NETNS]}},
                 ("train", "job-1"): {"main": {"nvidia.com/hca": [make_pci.PF1]}},
                 ("infer", "sf-0"): {"main": {"nvidia.com/sf": [make_pci.SF]}},
                 ("shared", "s"): {"c": {"rdma/hca_shared_devices_a": ["0"]}}})
    root = os.path.join(work, "sys")
    make_pci.build(root)
    vm = VictoriaMetrics(os.path.join(work, "vm-data"), free_port())
    agent = None
    try:
        vm.start()
        agent = Agent("node-p", {
            "mode": "nccl", "sysfs": root, "interval": INTERVAL, "output": "json", "node": "node-p",
            "labels": {"cluster": "test"}, "httpListen": "", "monitor": "m", "namespace": "xtrace-system",
            "remoteWrite": [{"url": vm.write_url, "name": "vm"}],
            "rdma": {"podAttribution": True, "podResourcesSocket": kubelet.socket_path}}, work)
        agent.start()
        agent.next_report(30)
        agent.next_report()  # every held device's series exists before the window
        i = agent.next_report()
        for (device, group, counter), delta in MOVES.items():
            _add(root, device, group, counter, delta)
        j = i + SPAN
        wait_for(lambda: len(agent.reports) > j, 15, "the window's reports")
        window = (agent.reports[i][0], agent.reports[j][0])
        wait_for(lambda: any(t > window[1] * 1000 for s in vm.export('xtrace_reports_total{node="node-p"}')
                             for t in s["timestamps"]), 15, "the window's reports to reach the database")
        yield PodLab(vm, agent, window)
    finally:
        if agent:
            agent.stop()
        vm.stop()
        kubelet.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


CONGESTION = ("np_cnp_sent", "rp_cnp_handled", "np_ecn_marked_roce_packets")


def test_held_series_carry_the_pod_in_the_database(pods_lab):
    got = pods_lab.query('max by (device, namespace, pod, container, resource, monitor) (xtrace_rdma_port_info)')
    held = {dict(k)["device"]: dict(k) for k in got if "pod" in dict(k)}
    assert {d: (v["namespace"], v["pod"]) for d, v in held.items()} == OWNERS
    assert held["mlx5_2"]["container"] == "worker" and held["mlx5_2"]["resource"] == VF
    # a device nobody holds keeps the monitor's namespace that remote write adds, and no pod
    free = {dict(k)["device"]: dict(k) for k in got if "pod" not in dict(k)}
    assert set(free) == {"mlx5_0", "mlx5_3", "mlx5_4"} and all(v["namespace"] == "xtrace-system" for v in free.values())
    assert all(v["monitor"] == "m" for v in [*held.values(), *free.values()])


def test_recording_rules_per_pod_and_namespace(pods_lab):
    rules = {name: expr for name, expr in recording_rules().items() if name.startswith("namespace")}
    lab = pods_lab
    pod, ns = ("namespace", "pod"), ("namespace",)

    def c(by, group, counters, factor=1, by_counter=False):
        return {key(cluster="test", **dict(k)): v for k, v in lab.per(by, group, counters, factor,
                                                                      by_counter=by_counter).items()}

    want = {
        "namespace_pod:xtrace_rdma_transmit_bytes:rate1m": c(pod, "counters", ("port_xmit_data",), 4),
        "namespace_pod:xtrace_rdma_receive_bytes:rate1m": c(pod, "counters", ("port_rcv_data",), 4),
        "namespace:xtrace_rdma_transmit_bytes:rate1m": c(ns, "counters", ("port_xmit_data",), 4),
        "namespace:xtrace_rdma_receive_bytes:rate1m": c(ns, "counters", ("port_rcv_data",), 4),
        "namespace_pod:xtrace_rdma_errors:rate1m": c(pod, "counters", PORT_ERRORS, by_counter=True),
        "namespace_pod:xtrace_rdma_transport_errors:rate1m": c(pod, "hw_counters", TRANSPORT_ERRORS, by_counter=True),
        "namespace_pod:xtrace_rdma_congestion:rate1m": c(pod, "hw_counters", CONGESTION, by_counter=True),
    }
    assert set(rules) == set(want), "every per-pod rule has an expectation"
    for record, values in want.items():
        expr = re.sub(r"\[1m\]", f"[{lab.w}ms]", rules[record])
        assert_exact(lab.query(expr), values, record)


def test_dashboard_per_pod_row(pods_lab):
    lab = pods_lab
    queries = {(t, r): e for t, r, e in panels("rdma") if " per pod" in t or " per namespace" in t}
    pod, ns = ("namespace", "pod"), ("namespace",)
    want = {
        ("RDMA bytes per second per pod", "A"): lab.per(pod, "counters", ("port_xmit_data",), 4),
        ("RDMA bytes per second per pod", "B"): lab.per(pod, "counters", ("port_rcv_data",), 4),
        ("RDMA bytes per second per namespace", "A"): lab.per(ns, "counters", ("port_xmit_data",), 4),
        ("RDMA bytes per second per namespace", "B"): lab.per(ns, "counters", ("port_rcv_data",), 4),
        ("Errors and retransmissions per pod (per interval)", "A"): lab.per(
            pod, "counters", PORT_ERRORS, kind="increase", by_counter=True),
        ("Errors and retransmissions per pod (per interval)", "B"): lab.per(
            pod, "hw_counters", TRANSPORT_ERRORS, kind="increase", by_counter=True),
        ("Congestion notifications per second per pod", "A"): lab.per(pod, "hw_counters", CONGESTION,
                                                                       by_counter=True),
    }
    assert set(queries) == set(want), "every per-pod panel query has an expectation"
    for (title, ref), expr in queries.items():
        assert_exact(lab.query(grafana(expr, lab.w)), want[(title, ref)], f"{title} ({ref})")
