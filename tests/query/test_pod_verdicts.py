"""The port verdicts aggregated per pod (pod attribution), on a real VictoriaMetrics and a real vmalert:
the shipped rules rendered with `tools/rules.py --timing fast` (5 s verdict windows), and the RDMA
dashboard's "Worst port verdict of each pod" panel on the same data.

Synthetic ports are written straight into VictoriaMetrics every 0.5 s as agents with pod attribution push
them (tests/nic/test_verdicts.py's background of a busy RoCE port, plus each port's fault): every series
of a held device carries its owner's namespace, pod, container and resource; an unheld port carries the
monitor's namespace and no pod, and its (worse) verdict must reach no pod.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.netns import wait_for
from tests.nic.test_verdicts import BACKGROUND, HW, NODES, TX3, Feeder, rules_lab
from tests.query.test_panels import grafana, panels

pytestmark = pytest.mark.vm

FAULTS = {name: extra for name, extra in NODES.values()}  # verdict -> what makes it
JOB0 = {"namespace": "train", "pod": "job-0", "container": "worker", "resource": "nvidia.com/sriov_rdma_vf"}
BIG = {"namespace": "infer", "pod": "big", "container": "main", "resource": "nvidia.com/hca"}
SOLO = {"namespace": "ml", "pod": "solo", "container": "t", "resource": "nvidia.com/sriov_rdma_vf"}
FREE = {"namespace": "xtrace-system"}  # remote write's namespace on a series no pod holds
PORTS = {  # (node, device) -> (owner labels, verdict)
    ("node-a", "mlx5_2"): (JOB0, "host_backpressure"),
    ("node-a", "mlx5_3"): (JOB0, "healthy"),
    ("node-b", "mlx5_1"): (BIG, "link_degraded"),
    ("node-b", "mlx5_4"): (BIG, "lossy_transport"),
    ("node-b", "mlx5_0"): (FREE, "pcie_stall"),  # nobody's: worse than job-0's worst, and in no pod's answer
    ("node-c", "mlx5_2"): (SOLO, "healthy"),
}
PCIE = ("xtrace_nic_pcie_stalled_ratio", (("netdev", "eth2"), ("kind", "read")))
assert (HW, (("counter", "out_of_sequence"),)) in BACKGROUND and TX3


class PodFeeder(Feeder):
    def _lines(self, now: float, dt: float) -> list[str]:
        ms = int(now * 1000)
        out = []
        for (node, device), (owner, verdict) in PORTS.items():
            labels = {"cluster": "test", "node": node, "device": device, "port": "1", "monitor": "m", **owner}
            port = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f'xtrace_rdma_port_info{{{port},state="ACTIVE",link_layer="Ethernet",netdev="eth2"}} 1 {ms}')
            out.append(f"xtrace_rdma_port_rate_bytes_per_second{{{port}}} 12500000000 {ms}")
            for (metric, extra), per_second in {**BACKGROUND, **FAULTS[verdict]}.items():
                key = (node, device, metric, extra)
                self.totals[key] = self.totals.get(key, 1_000_000) + per_second * dt
                more = "".join(f',{k}="{v}"' for k, v in extra)
                out.append(f"{metric}{{{port}{more}}} {self.totals[key]:.6f} {ms}")
            if verdict == "pcie_stall":
                more = "".join(f',{k}="{v}"' for k, v in PCIE[1])
                out.append(f"{PCIE[0]}{{{port}{more}}} 0.4 {ms}")
        return out


@pytest.fixture(scope="module")
def pod_fabric(tmp_path_factory):
    for vm, _ in rules_lab(tmp_path_factory, "pod-verdicts", PodFeeder):
        yield vm


RANKS = {("train", "job-0"): 4, ("infer", "big"): 6, ("ml", "solo"): 0}  # host_backpressure, link_degraded, healthy
PER_VERDICT = {("train", "job-0", "host_backpressure"): 1, ("train", "job-0", "healthy"): 1,
               ("infer", "big", "link_degraded"): 1, ("infer", "big", "lossy_transport"): 1,
               ("ml", "solo", "healthy"): 1}


def _recorded(vm, record: str, *labels: str) -> dict[tuple, float]:
    return {tuple(s["metric"].get(k) for k in labels): float(s["value"][1])
            for s in vm.query(f"last_over_time({record}[1500ms] offset 3s)")}


def test_each_pods_worst_verdict_and_its_ports_per_verdict(pod_fabric):
    vm = pod_fabric
    got: dict = {}

    def settled():
        got.clear()
        got["rank"] = _recorded(vm, "namespace_pod:xtrace_verdict:rank", "namespace", "pod")
        got["ports"] = _recorded(vm, "namespace_pod:xtrace_verdict:ports", "namespace", "pod", "verdict")
        return got["rank"] == RANKS and got["ports"] == PER_VERDICT

    try:
        wait_for(settled, 45, "every pod's verdicts", every=0.5)
    except AssertionError:
        raise AssertionError(f"recorded {got}, want {RANKS} and {PER_VERDICT}") from None
    # the per-port verdict of the unheld port is there, and in no pod
    ports = {(s["metric"]["node"], s["metric"]["device"]): float(s["value"][1])
             for s in vm.query("node_port:xtrace_verdict:rank")}
    assert ports[("node-b", "mlx5_0")] == 5
    assert all(s["metric"].get("cluster") == "test" for s in vm.query("namespace_pod:xtrace_verdict:rank"))


def test_dashboard_panel_shows_each_pods_worst_verdict(pod_fabric):
    vm = pod_fabric
    (expr,) = [e for t, _, e in panels("rdma") if t == "Worst port verdict of each pod"]
    got: dict = {}

    def settled():
        got.clear()
        got.update({(s["metric"]["namespace"], s["metric"]["pod"]): float(s["value"][1])
                    for s in vm.query(grafana(expr, 5000), at=f"{time.time() - 3:.3f}")})
        return got == RANKS

    try:
        wait_for(settled, 45, "the panel's answer", every=0.5)
    except AssertionError:
        raise AssertionError(f"panel says {got}, want {RANKS}") from None
