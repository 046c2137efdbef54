"""The owner table against a kubelet stand-in speaking the real pod-resources v1 protocol over a
unix socket (tests/owners/kubelet.py): who holds what, refresh policy, and every way the kubelet
or a device id can fail, each logged once."""

import logging
import os
import shutil

import grpc

from tests.fixtures import make_pci
from tests.helpers.netns import wait_for
from xtrace_agent.owners.podresources import PodResourcesClient
from xtrace_agent.owners.table import REFRESH_SECONDS, Owner, OwnerTable
from xtrace_agent.rdma import sysfs

VF = "nvidia.com/sriov_rdma_vf"
HCA = "nvidia.com/hca"
SHARED = "rdma/hca_shared_devices_a"


def allocations() -> dict:
    return {
        ("train", "job-0"): {"worker": {VF: [make_pci.VF_NETNS]}, "sidecar": {}},
        ("train", "job-1"): {"worker": {VF: [make_pci.VF_EXCLUSIVE]}},
        ("dpdk", "gw"): {"fwd": {VF: [make_pci.VF_VFIO]}},
        ("infer", "big"): {"main": {HCA: [make_pci.PF1], "nvidia.com/gpu": ["GPU-0f3c", "GPU-77aa"]}},
        ("infer", "sf"): {"main": {"nvidia.com/sf": [make_pci.SF]}},
        ("shared", "a"): {"c": {SHARED: ["0"]}},
        ("shared", "b"): {"c": {SHARED: ["1"], "rdma/other_shared": ["0"]}},
    }


def table(host, kubelet, monotonic) -> OwnerTable:
    return OwnerTable(host, PodResourcesClient(kubelet.socket_path), clock=monotonic)


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "xtrace.owners" and r.levelno >= logging.WARNING]


def test_owners_of_vfs_whole_devices_and_subfunctions(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.refresh()
    assert t.by_rdma == {
        "mlx5_2": Owner("train", "job-0", "worker", VF),
        "mlx5_1": Owner("infer", "big", "main", HCA),
        "mlx5_5": Owner("infer", "sf", "main", "nvidia.com/sf"),
    }
    assert t.labels("mlx5_2") == {"namespace": "train", "pod": "job-0", "container": "worker", "resource": VF}
    for free in ("mlx5_0", "mlx5_3", "mlx5_4"):  # a PF, an unallocated VF, a shared device
        assert t.labels(free) is None
    assert t.by_netdev == {"ib0": Owner("infer", "big", "main", HCA)}


def test_listing_names_owners_and_the_exclusive_device(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.refresh()
    lines = t.listing()
    assert any(line.startswith(make_pci.VF_NETNS) and "pod=train/job-0 container=worker" in line for line in lines)
    assert f"{make_pci.VF_EXCLUSIVE} ({VF}): device held by pod train/job-1 in exclusive RDMA namespace mode: " \
           "not readable from the host" in "\n".join(lines)
    assert any("dpdk/gw" in line and "vfio-pci" in line for line in lines)


def test_each_problem_is_logged_once_across_periods(host, kubelet, monotonic, caplog):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    with caplog.at_level(logging.INFO, logger="xtrace.owners"):
        for _ in range(4):
            t.update(sysfs.devices(host))
            monotonic.now += REFRESH_SECONDS
    assert kubelet.calls == 4
    said = warnings(caplog)
    assert len(said) == 4, said  # exclusive VF, vfio VF, two GPUs
    assert sum("exclusive RDMA namespace mode" in m and "train/job-1" in m for m in said) == 1
    assert sum("vfio-pci" in m for m in said) == 1
    assert sum("GPU-0f3c" in m for m in said) == 1
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum(SHARED in m for m in infos) == 1  # shared slots: said once, never a conflict
    assert not any("more than one pod" in m for m in said)


def test_refresh_per_period_not_per_interval(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    devices = sysfs.devices(host)
    for _ in range(50):  # 50 intervals of 0.1 s: one refresh
        t.update(devices)
        monotonic.now += 0.1
    assert kubelet.calls == 1
    monotonic.now += REFRESH_SECONDS
    assert t.update(devices) and kubelet.calls == 2


def test_pod_going_away_drops_its_labels_at_the_next_refresh(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.update(sysfs.devices(host))
    gone = allocations()
    del gone[("train", "job-0")]
    kubelet.set(gone)
    monotonic.now += 1
    t.update(sysfs.devices(host))
    assert t.labels("mlx5_2") is not None  # within the period: not asked yet
    monotonic.now += REFRESH_SECONDS
    t.update(sysfs.devices(host))
    assert t.labels("mlx5_2") is None and t.labels("mlx5_1") is not None


def test_device_change_refreshes_at_once(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.update(sysfs.devices(host))
    # job-0 ends: the CNI moves its VF's net device back to the host, and the kubelet frees the VF
    kubelet.set({k: v for k, v in allocations().items() if k != ("train", "job-0")})
    make_pci.function(host, make_pci.VF_NETNS, physfn=None, netdevs={"ens1f0v0": 0})
    monotonic.now += 0.5
    assert t.update(sysfs.devices(host)) and t.labels("mlx5_2") is None
    # job-1 ends: its exclusive-mode RDMA device comes back into the host's namespace
    kubelet.set({("train", "job-2"): {"w": {VF: [make_pci.VF_EXCLUSIVE]}}})
    make_pci.rdma_device(host, make_pci.function_dir(host, make_pci.VF_EXCLUSIVE), "mlx5_6")
    monotonic.now += 0.5
    assert t.update(sysfs.devices(host))
    assert t.by_rdma == {"mlx5_6": Owner("train", "job-2", "w", VF)}


def test_device_moving_to_another_pod(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.refresh()
    moved = allocations()
    moved[("train", "job-0")] = {"worker": {}}
    moved[("train", "job-9")] = {"trainer": {VF: [make_pci.VF_NETNS.upper()]}}
    kubelet.set(moved)
    t.refresh()
    assert t.by_rdma["mlx5_2"] == Owner("train", "job-9", "trainer", VF)


def test_socket_vanishing_and_coming_back(host, kubelet, monotonic, caplog):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.refresh()
    caplog.clear()
    kubelet.stop()  # the kubelet restarts: its socket is gone for a while
    with caplog.at_level(logging.INFO, logger="xtrace.owners"):
        for _ in range(3):
            t.refresh()
        assert t.by_rdma == {} and t.labels("mlx5_2") is None
        assert t.listing() == [f"(no owners: no kubelet pod-resources socket at {kubelet.socket_path})"]
        # a socket file nobody listens on (the kubelet died without removing it)
        open(kubelet.socket_path, "w").close()
        t.refresh()
        os.unlink(kubelet.socket_path)
        kubelet.start()

        def answered() -> bool:  # the first List after a restart can miss its 2 s on a loaded machine
            t.refresh()
            return t.labels("mlx5_2") is not None
        wait_for(answered, 20, "the owners after the kubelet came back", every=0.2)
    said = warnings(caplog)
    assert sum("no kubelet pod-resources socket" in m for m in said) == 1, said
    assert not any("exclusive" in m for m in said)  # said before the outage: not again after it
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


def test_kubelet_answering_errors(host, kubelet, monotonic, caplog):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.refresh()
    with caplog.at_level(logging.INFO, logger="xtrace.owners"):
        for code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED):
            kubelet.error = code
            t.refresh()
            assert t.by_rdma == {}
        kubelet.error = None
        t.refresh()
    assert t.labels("mlx5_1") == Owner("infer", "big", "main", HCA).labels()
    said = warnings(caplog)
    # the error kind is logged when it starts, once (a different status of the same kind is not news)
    answered = [m for m in said if "answered" in m]
    assert len(answered) == 1 and "UNIMPLEMENTED" in answered[0]
    assert t.failures == 3


def test_contested_device_gets_no_owner(host, kubelet, monotonic, caplog):
    kubelet.set({("a", "p"): {"c": {VF: [make_pci.VF_NETNS]}}, ("b", "q"): {"c": {VF: [make_pci.VF_NETNS]}}})
    t = table(host, kubelet, monotonic)
    with caplog.at_level(logging.WARNING, logger="xtrace.owners"):
        t.refresh()
        t.refresh()
    assert t.labels("mlx5_2") is None
    assert sum("more than one pod" in m for m in warnings(caplog)) == 1


def test_sysfs_root_without_pci_bus(tmp_path, kubelet, monotonic, caplog):
    # a node whose sysfs mount lacks bus/pci (a hand-made --sysfs): every id maps to nothing, once
    root = str(tmp_path / "sys")
    make_pci.build(root)
    shutil.rmtree(os.path.join(root, "bus"))
    kubelet.set(allocations())
    t = table(root, kubelet, monotonic)
    with caplog.at_level(logging.WARNING, logger="xtrace.owners"):
        t.refresh()
        t.refresh()
    assert t.by_rdma == {}
    assert sum("no PCI function" in m for m in warnings(caplog)) == 4


def test_failing_kubelet_is_asked_less_and_less(host, kubelet, monotonic):
    kubelet.set(allocations())
    t = table(host, kubelet, monotonic)
    t.update(sysfs.devices(host))
    kubelet.error = grpc.StatusCode.UNAVAILABLE  # a kubelet that answers, but only errors
    asked = []
    for _ in range(int(700 / 5)):  # 700 s of 5 s intervals
        monotonic.now += 5
        if t.update(sysfs.devices(host)):
            asked.append(monotonic.now - 100)
    # after the first failure 10 s (the period), then 20, 40, 80, 160, and at most 300 s between asks
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert gaps == [10, 20, 40, 80, 160, 300][:len(gaps)] and len(gaps) >= 5, asked
    kubelet.error = None
    monotonic.now += 300
    t.update(sysfs.devices(host))
    assert t.labels("mlx5_2") is not None
    monotonic.now += 5
    assert not t.update(sysfs.devices(host))  # answering again: back to the period


def test_messy_answers(host, kubelet, monotonic):
    # ids with blanks and upper case, one id twice in a container and in two of its containers, a
    # pod without a namespace (never from a real kubelet: not attributed rather than mislabelled)
    kubelet.set({("train", "job-0"): {"a": {VF: [f" {make_pci.VF_NETNS.upper()} ", make_pci.VF_NETNS]},
                                      "b": {VF: [make_pci.VF_NETNS]}},
                 ("", "nameless"): {"c": {VF: [make_pci.PF1]}}})
    t = table(host, kubelet, monotonic)
    t.refresh()
    assert t.by_rdma == {"mlx5_2": Owner("train", "job-0", "a,b", VF)}


def test_stuck_kubelet_times_out(host, kubelet, monotonic, caplog):
    kubelet.set(allocations())
    kubelet.delay = 1.0
    t = OwnerTable(host, PodResourcesClient(kubelet.socket_path, timeout=0.2), clock=monotonic)
    with caplog.at_level(logging.WARNING, logger="xtrace.owners"):
        t.refresh()
    assert t.by_rdma == {} and "deadline_exceeded" in t.listing()[0]
    kubelet.delay = 0.0
    t.refresh()
    assert t.labels("mlx5_2") is not None
