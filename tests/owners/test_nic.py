"""The NIC series (`xtrace_nic_*`, nic/) with pod attribution: every series of a netdev of a held device
carries its pod's `namespace`, `pod`, `container`, `resource` and counts from its owner's first report,
exactly as the device's RDMA series do; netdevs of shared or unallocated devices carry none; a pod's end
drops the labels on the next report after the refresh.

The host is the SR-IOV sysfs tree of tests/fixtures/make_pci.py, its netdevs' statistics are mlx5
`ethtool -S` dumps (tests/nic/dumps.py) read through `ethtool_dir` (`--ethtool-dir`), and the owners come
from the kubelet stand-in (tests/owners/kubelet.py, the real v1 pod-resources protocol over its socket:
no kubelet can run here).
"""

from __future__ import annotations

import json
import os

from tests.fixtures import make_pci
from tests.nic import dumps
from tests.owners.test_collector import BIG, owner_of
from tests.owners.test_e2e import _run
from tests.owners.test_table import VF, allocations
from tests.rdma.util import make
from xtrace_agent.config import NicConfig
from xtrace_agent.owners.podresources import PodResourcesClient
from xtrace_agent.owners.table import REFRESH_SECONDS, OwnerTable

# netdev -> the RDMA device whose port it carries in make_pci.build
NETDEVS = {"ens1f0np0": "mlx5_0", "ens1f0v1": "mlx5_3", "ib0": "mlx5_1", "ens3f0np0": "mlx5_4"}
DISCARDS = "xtrace_nic_discards_total"
FREE_VF = {"namespace": "ml", "pod": "next", "container": "t", "resource": VF}


def write_dump(ethtool: str, netdev: str, rx_discards_phy: int) -> None:
    with open(os.path.join(ethtool, f"{netdev}.txt"), "w") as f:
        f.write(dumps.render(dumps.mlx5("6.8", channels=2, values={"rx_prio3_pause": 100,
                                                                  "rx_discards_phy": rx_discards_phy})))


def bundle(tmp_path, extra=()) -> str:
    ethtool = str(tmp_path / "ethtool")
    os.makedirs(ethtool)
    for netdev in (*NETDEVS, *extra):
        write_dump(ethtool, netdev, 1000)
    return ethtool


def collector(host, ethtool, kubelet, monotonic, **kw):
    owners = OwnerTable(host, PodResourcesClient(kubelet.socket_path), clock=monotonic)
    c, _ = make(host, mode="nccl", ethtool_dir=ethtool, **kw)
    c.source.owners = owners
    c.start()
    return c


def nic_owners(report) -> dict[str, set]:
    """netdev -> the owner label sets its NIC series carry."""
    out: dict[str, set] = {}
    for s in report.samples:
        if s.name.startswith("xtrace_nic_"):
            out.setdefault(s.labels["netdev"], set()).add(tuple(sorted(owner_of(s).items())))
    return out


def discards(report, netdev: str) -> tuple[dict, int]:
    found = [s for s in report.samples if s.name == DISCARDS and s.labels["netdev"] == netdev
             and s.labels["cause"] == "port_buffer" and s.labels["direction"] == "rx"]
    assert len(found) == 1, found
    return owner_of(found[0]), found[0].value


def test_nic_series_of_a_held_device_carry_its_pod_and_others_none(host, kubelet, monotonic, tmp_path):
    kubelet.set(allocations())
    c = collector(host, bundle(tmp_path), kubelet, monotonic)
    report = c.collect(1.0)
    got = nic_owners(report)
    assert set(got) == set(NETDEVS), "every netdev's statistics were read"
    assert got["ib0"] == {tuple(sorted(BIG.items()))}  # the IPoIB netdev of a whole HCA held by infer/big
    for free in ("ens1f0np0", "ens1f0v1", "ens3f0np0"):  # PF, unallocated VF, shared device
        assert got[free] == {()}, free
    names = {s.name for s in report.samples if s.labels.get("netdev") == "ib0"}
    assert {"xtrace_nic_pause_frames_total", DISCARDS, "xtrace_nic_link_down_events_total"} <= names
    # the netdev's series and its device's RDMA series say the same owner
    rdma = {tuple(sorted(owner_of(s).items())) for s in report.samples if s.labels.get("device") == "mlx5_1"}
    assert rdma == got["ib0"]


def test_held_nic_counts_start_at_the_owners_first_report_and_end_with_the_pod(host, kubelet, monotonic, tmp_path):
    ethtool = bundle(tmp_path)
    kubelet.set(allocations())
    c = collector(host, ethtool, kubelet, monotonic)
    assert discards(c.collect(1.0), "ens1f0v1") == ({}, 1000)  # unallocated: the hardware's total
    assert discards(c.collect(1.0), "ib0") == (BIG, 0)
    # the free VF (mlx5_3, netdev ens1f0v1 on the host) goes to a pod
    given = {**allocations(), ("ml", "next"): {"t": {VF: [make_pci.VF_FREE]}}}
    kubelet.set(given)
    monotonic.now += REFRESH_SECONDS
    write_dump(ethtool, "ens1f0v1", 1010)
    assert discards(c.collect(2.0), "ens1f0v1") == (FREE_VF, 0)
    write_dump(ethtool, "ens1f0v1", 1025)
    assert discards(c.collect(3.0), "ens1f0v1") == (FREE_VF, 15)  # only its owner's drops
    # it moves to another pod: a new series from 0
    moved = {**allocations(), ("ml", "other"): {"u": {VF: [make_pci.VF_FREE]}}}
    kubelet.set(moved)
    monotonic.now += REFRESH_SECONDS
    write_dump(ethtool, "ens1f0v1", 1030)
    labels, value = discards(c.collect(4.0), "ens1f0v1")
    assert labels == {**FREE_VF, "pod": "other", "container": "u"} and value == 0
    # the pod ends: the next report after the refresh has no pod labels and the hardware's total again
    kubelet.set(allocations())
    monotonic.now += REFRESH_SECONDS
    write_dump(ethtool, "ens1f0v1", 1040)
    assert discards(c.collect(5.0), "ens1f0v1") == ({}, 1040)


def test_a_held_functions_own_netdev_carries_its_pod(host, kubelet, monotonic, tmp_path):
    """A netdev named in nic.interfaces (no RDMA port of the selection carries it) takes its owner from
    the held function's net/ entries."""
    ethtool = bundle(tmp_path)
    kubelet.set({**allocations(), ("ml", "next"): {"t": {VF: [make_pci.VF_FREE]}}})
    c = collector(host, ethtool, kubelet, monotonic, devices=("mlx5_0",), nic=NicConfig(interfaces=("ens1f0v1",)))
    report = c.collect(1.0)
    got = nic_owners(report)
    assert got == {"ens1f0np0": {()}, "ens1f0v1": {tuple(sorted(FREE_VF.items()))}}
    assert all("device" not in s.labels for s in report.samples if s.labels.get("netdev") == "ens1f0v1")


def test_kubelet_gone_leaves_nic_series_unlabelled(host, kubelet, monotonic, tmp_path):
    kubelet.set(allocations())
    c = collector(host, bundle(tmp_path), kubelet, monotonic)
    assert nic_owners(c.collect(1.0))["ib0"] == {tuple(sorted(BIG.items()))}
    kubelet.stop()
    monotonic.now += REFRESH_SECONDS
    got = nic_owners(c.collect(2.0))
    assert set(got) == set(NETDEVS) and all(v == {()} for v in got.values())


def test_installed_agent_labels_held_netdevs_from_an_ethtool_dir(host, kubelet, tmp_path):
    kubelet.set(allocations())
    out = _run("-m", "nccl", "--sysfs", host, "--ethtool-dir", bundle(tmp_path), "--pod-attribution",
               "--pod-resources-socket", kubelet.socket_path, "--count", "1", "--interval", "0.1",
               "--output", "json")
    assert out.returncode == 0, out.stderr
    nic = [s for s in json.loads(out.stdout)["samples"] if s["name"].startswith("xtrace_nic_")]
    held = {(s["labels"]["netdev"], s["labels"].get("pod")) for s in nic}
    assert held == {("ib0", "big"), ("ens1f0np0", None), ("ens1f0v1", None), ("ens3f0np0", None)}
    assert "Traceback" not in out.stderr
