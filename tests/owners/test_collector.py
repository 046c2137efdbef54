"""The nccl/rdma collector with pod attribution: every series of a held device carries its pod's
`namespace`, `pod`, `container`, `resource` and counts from its owner's first report; every other
series carries none of them. Against the kubelet stand-in (tests/owners/kubelet.py) over its socket."""

from tests.fixtures import make_pci
from tests.owners.test_table import VF, allocations
from tests.rdma.util import make
from xtrace_agent.owners.podresources import PodResourcesClient
from xtrace_agent.owners.table import LABELS, REFRESH_SECONDS, OwnerTable

JOB0 = {"namespace": "train", "pod": "job-0", "container": "worker", "resource": VF}
BIG = {"namespace": "infer", "pod": "big", "container": "main", "resource": "nvidia.com/hca"}


def collector(host, kubelet, monotonic, mode="nccl"):
    owners = OwnerTable(host, PodResourcesClient(kubelet.socket_path), clock=monotonic)
    c, health = make(host, mode=mode)
    c.source.owners = owners
    c.start()
    return c


def owner_of(sample) -> dict:
    return {k: sample.labels[k] for k in LABELS if k in sample.labels}


def test_every_series_of_a_held_device_carries_its_pod_and_others_none(host, kubelet, monotonic):
    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic)
    report = c.collect(1.0)
    by_device: dict[str, set] = {}
    for s in report.samples:
        by_device.setdefault(s.labels["device"], set()).add(tuple(sorted(owner_of(s).items())))
    assert by_device["mlx5_2"] == {tuple(sorted(JOB0.items()))}
    assert by_device["mlx5_1"] == {tuple(sorted(BIG.items()))}
    assert by_device["mlx5_5"] == {tuple(sorted({**BIG, "pod": "sf", "resource": "nvidia.com/sf"}.items()))}
    for free in ("mlx5_0", "mlx5_3", "mlx5_4"):  # PF, unallocated VF, shared device
        assert by_device[free] == {()}
    names = {s.name for s in report.samples if s.labels["device"] == "mlx5_2"}
    assert {"xtrace_rdma_port_info", "xtrace_rdma_port_transmit_bytes_total", "xtrace_rdma_hw_counter_total",
            "xtrace_rdma_counter_saturated", "xtrace_rdma_port_rate_bytes_per_second"} <= names
    assert any(line.startswith("mlx5_2 ") and " pod=train/job-0 " in line for line in c.text.lines(report))


def tx_bytes(report, device):
    found = [s for s in report.samples if s.name == "xtrace_rdma_port_transmit_bytes_total"
             and s.labels["device"] == device]
    assert len(found) == 1
    return owner_of(found[0]), found[0].value


def test_held_counts_start_at_the_owners_first_report(host, kubelet, monotonic):
    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic)
    assert tx_bytes(c.collect(1.0), "mlx5_2") == (JOB0, 0)
    assert tx_bytes(c.collect(1.0), "mlx5_0") == ({}, 9_000_000 * 4)  # unheld: the hardware's total
    make_pci.set_words(host, "mlx5_2", 2_000_000 + 250)
    assert tx_bytes(c.collect(2.0), "mlx5_2") == (JOB0, 1000)


def test_device_moving_to_another_pod_starts_a_new_series(host, kubelet, monotonic):
    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic)
    c.collect(1.0)
    make_pci.set_words(host, "mlx5_2", 2_000_500)
    assert tx_bytes(c.collect(2.0), "mlx5_2") == (JOB0, 2000)
    moved = allocations()
    moved[("train", "job-0")] = {"worker": {}}
    moved[("ml", "next")] = {"t": {VF: [make_pci.VF_NETNS]}}
    kubelet.set(moved)
    monotonic.now += REFRESH_SECONDS
    make_pci.set_words(host, "mlx5_2", 2_000_600)
    labels, value = tx_bytes(c.collect(3.0), "mlx5_2")
    assert labels == {"namespace": "ml", "pod": "next", "container": "t", "resource": VF} and value == 0
    make_pci.set_words(host, "mlx5_2", 2_000_700)
    assert tx_bytes(c.collect(4.0), "mlx5_2")[1] == 400  # only the new owner's traffic


def test_pod_end_drops_labels_on_the_next_report_after_the_refresh(host, kubelet, monotonic):
    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic)
    c.collect(1.0)
    kubelet.set({k: v for k, v in allocations().items() if k != ("train", "job-0")})
    monotonic.now += REFRESH_SECONDS
    labels, value = tx_bytes(c.collect(2.0), "mlx5_2")
    assert labels == {} and value == 2_000_000 * 4  # unheld again: the hardware's total, never backwards


def test_kubelet_gone_leaves_series_unlabelled_and_collection_going(host, kubelet, monotonic):
    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic, mode="rdma")
    assert tx_bytes(c.collect(1.0), "mlx5_2")[0] == JOB0
    kubelet.stop()
    monotonic.now += REFRESH_SECONDS
    report = c.collect(2.0)
    assert all(not owner_of(s) for s in report.samples)
    assert len(c.text.lines(report)) == 6  # every port still reported
    kubelet.start()
    monotonic.now += REFRESH_SECONDS
    assert tx_bytes(c.collect(3.0), "mlx5_2")[0] == JOB0


def test_self_metrics_say_how_attribution_goes(host, kubelet, monotonic):
    from xtrace_agent import selfmetrics as sm

    kubelet.set(allocations())
    c = collector(host, kubelet, monotonic)
    c.collect(1.0)
    assert c.health.get(sm.RDMA_ATTRIBUTED) == 3  # mlx5_2, mlx5_1, mlx5_5
    assert c.health.get(sm.POD_RESOURCES_FAILURES, {"kind": "unreachable"}) == 0  # exists at 0
    kubelet.stop()
    monotonic.now += REFRESH_SECONDS
    c.collect(2.0)
    assert c.health.get(sm.RDMA_ATTRIBUTED) == 0
    assert c.health.get(sm.POD_RESOURCES_FAILURES, {"kind": "unreachable"}) == 1
    assert c.health.get(sm.POD_RESOURCES_FAILURES, {"kind": "error"}) == 0
