"""From a device plugin's device id to what XTrace reads: RDMA devices and net devices in sysfs.

The ids the kubelet reports are the plugins' own names, documented by each plugin:

- the SR-IOV network device plugin (and NVIDIA's network operator, which deploys it) hands out
  PCI functions by address, `0000:3b:00.2`: a virtual function, or a whole physical function;
  and mlx5 subfunctions by their auxiliary device name, `mlx5_core.sf.4`;
- the RDMA shared device plugin hands out slots of a device shared by many pods, numbered
  `0`..`rdmaHcaMax-1`: a slot names no device, and a shared device's counters belong to no pod.

A PCI function's sysfs directory (`bus/pci/devices/<address>`, a link into `devices/`) names its
RDMA devices in `infiniband/` and its net devices in `net/`; a VF links to its PF with `physfn`,
a PF to its VFs with `virtfn<N>`. Both directories list only what the sysfs mount's network
namespace sees. With `rdma system set netns exclusive`, an RDMA device moves into the network
namespace of the pod it was given to: its VF still shows on the host, without `infiniband/`,
while its PF (still on the host) has one. That is the exclusive case: held, and not readable here.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
AUXILIARY = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+\.\d+$")  # <driver>.<type>.<id>, e.g. mlx5_core.sf.4
SHARED_SLOT = re.compile(r"^\d+$")
# A function bound to one of these is driven from user space (DPDK, a VM): no kernel RDMA device.
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})

# Target.kind
PCI, AUX, SHARED, UNKNOWN = "pci", "auxiliary", "shared", "unknown"


class Target(NamedTuple):
    """What one device id is on this host."""

    kind: str  # PCI, AUX, SHARED or UNKNOWN
    device_id: str
    rdma: tuple[str, ...] = ()  # RDMA devices of the function the host sees
    netdevs: tuple[str, ...] = ()  # net devices of the function the host sees
    physfn: str = ""  # a VF's PF address
    exclusive: bool = False  # an RDMA VF whose RDMA device lives in the pod's network namespace
    problem: str = ""  # why it maps to nothing ("" when it maps, or is shared)


def _names(path: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def _link_name(path: str) -> str:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def normalise(device_id: str) -> str:
    """The id as sysfs spells it: PCI addresses and auxiliary names are lower case (ids of other
    plugins stay as they are)."""
    ident = device_id.strip()
    low = ident.lower()
    return low if PCI_ADDRESS.match(low) or AUXILIARY.match(low) else ident


def is_shared_slot(device_id: str) -> bool:
    return bool(SHARED_SLOT.match(device_id.strip()))


def _path(root: str, kind: str, ident: str) -> str:
    bus = "pci" if kind == PCI else "auxiliary"
    return os.path.join(root, "bus", bus, "devices", ident)


def resolve(root: str, device_id: str) -> Target:
    """The target of one device id under the sysfs mount `root` (never raises)."""
    ident = normalise(device_id)
    if PCI_ADDRESS.match(ident):
        return _function(root, ident, _path(root, PCI, ident), PCI)
    if SHARED_SLOT.match(ident):
        return Target(SHARED, device_id)
    if AUXILIARY.match(ident):
        path = _path(root, AUX, ident)
        if os.path.isdir(path):
            return _function(root, ident, path, AUX)
        return Target(AUX, device_id, problem=f"no auxiliary device {ident} in {os.path.dirname(path)}")
    return Target(UNKNOWN, device_id, problem=f"device id {device_id!r} is neither a PCI address nor a "
                                              "device name this agent knows")


def _function(root: str, ident: str, path: str, kind: str) -> Target:
    if not os.path.isdir(path):
        return Target(kind, ident, problem=f"no PCI function {ident} in {os.path.dirname(path)}")
    rdma = _names(os.path.join(path, "infiniband"))
    netdevs = _names(os.path.join(path, "net"))
    physfn = _link_name(os.path.join(path, "physfn"))
    if rdma:
        return Target(kind, ident, rdma, netdevs, physfn)
    driver = _link_name(os.path.join(path, "driver"))
    if driver in USERSPACE_DRIVERS:
        return Target(kind, ident, (), netdevs, physfn,
                      problem=f"{ident} is bound to {driver} (driven from user space): no RDMA device to read")
    if physfn and _names(os.path.join(path, "physfn", "infiniband")):
        return Target(kind, ident, (), netdevs, physfn, exclusive=True)
    where = "VF of a PF without RDMA" if physfn else "function"
    return Target(kind, ident, (), netdevs, physfn, problem=f"{ident} ({where}) has no RDMA device in sysfs")


def held_state(root: str, target: Target) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What changes in a held function's directory when its pod starts or ends: the RDMA and net
    devices the host sees (two directory listings)."""
    if target.kind not in (PCI, AUX):
        return (), ()
    path = _path(root, target.kind, target.device_id)
    return _names(os.path.join(path, "infiniband")), _names(os.path.join(path, "net"))
