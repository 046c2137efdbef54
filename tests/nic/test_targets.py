"""Which netdevs carry an RDMA port, from a captured sysfs tree: the GID table's (RoCE), a bond's or a
VLAN's members in their place (a bond has no NIC counters), the PCI function's IPoIB device (InfiniBand)."""

from __future__ import annotations

import os

from xtrace_agent.nic.source import Target, lower_netdevs, rdma_targets


def _write(path: str, text: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _tree(root: str) -> None:
    ib = os.path.join(root, "class", "infiniband")
    net = os.path.join(root, "class", "net")
    # a bonded RoCE device: every GID names bond0 (some a VLAN on it), bond0's members are eth2 and eth3
    for i, ndev in enumerate(("bond0", "bond0", "bond0.100", "")):
        _write(f"{ib}/mlx5_bond_0/ports/1/gid_attrs/ndevs/{i}", ndev + "\n" if ndev else "")
    _write(f"{ib}/mlx5_bond_0/ports/1/state", "4: ACTIVE\n")
    os.makedirs(f"{net}/bond0")
    for lower in ("eth2", "eth3"):
        os.makedirs(f"{net}/{lower}")
        os.symlink(f"../{lower}", f"{net}/bond0/lower_{lower}")
    os.makedirs(f"{net}/bond0.100")
    os.symlink("../bond0", f"{net}/bond0.100/lower_bond0")
    # an InfiniBand HCA: no GID netdevs, the IPoIB device is under the PCI function
    _write(f"{ib}/mlx5_1/ports/1/state", "4: ACTIVE\n")
    _write(f"{ib}/mlx5_1/device/net/ib0/dev_port", "0\n")


def test_bond_members_and_ipoib(tmp_path):
    root = str(tmp_path)
    _tree(root)
    assert lower_netdevs(root, "bond0.100") == ["eth2", "eth3"]
    assert rdma_targets(root, "mlx5_bond_0", 1) == [Target("eth2", "mlx5_bond_0", "1"),
                                                    Target("eth3", "mlx5_bond_0", "1")]
    assert rdma_targets(root, "mlx5_1", 1) == [Target("ib0", "mlx5_1", "1")]
    assert rdma_targets(root, "mlx5_9", 1) == []
