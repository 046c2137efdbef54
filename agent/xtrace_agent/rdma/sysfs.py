"""RDMA devices and ports as the kernel shows them in sysfs, parsed into typed values.

Layout (Documentation/ABI/stable/sysfs-class-infiniband), under an injectable root (`--sysfs`):

    class/infiniband/<device>/ports/<n>/{state,phys_state,rate,link_layer}
    class/infiniband/<device>/ports/<n>/counters/*        PMA port counters
    class/infiniband/<device>/ports/<n>/counters_ext/*    64-bit *_64 copies (MLNX_OFED mlx4 only)
    class/infiniband/<device>/ports/<n>/hw_counters/*     driver counters (mlx5 queue, congestion)
    class/infiniband/<device>/ports/<n>/gid_attrs/ndevs/* net device of each GID (RoCE, bonds)
    class/infiniband/<device>/device/net/<netdev>/dev_port  net devices of the PCI function

Real sysfs is messy: counters read "N/A (no PMA)" where the driver has no performance
management agent (iWARP), reads fail with EINVAL, files lack a trailing newline or carry blank
lines, devices vanish between listing and reading. Every such value is None here (absent, never
a wrong number), and what went wrong is returned with the reading for the caller to count.
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import NamedTuple

CLASS_DIR = ("class", "infiniband")
NO_PMA = "no PMA"


class Port(NamedTuple):
    """One read of one port: every file read in one pass, stamped with the time of the read."""

    device: str
    port: int
    timestamp: float
    state: str | None  # "ACTIVE" (from "4: ACTIVE")
    phys_state: str | None  # "LinkUp" (from "5: LinkUp")
    rate: str | None  # "100 Gb/sec (4X EDR)"
    link_layer: str | None  # "InfiniBand", "Ethernet"
    counters: dict[str, int | None]  # counters/ and counters_ext/ (their names never collide)
    hw_counters: dict[str, int | None]
    problems: tuple[tuple[str, str], ...] = ()  # (file relative to the port dir, why it has no value)

    @property
    def rate_bytes_per_second(self) -> float | None:
        return parse_rate(self.rate)


# --- parsing: pure functions on the text of one file ------------------------------------------

def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line
    return ""


def parse_counter(text: str | None) -> tuple[int | None, str | None]:
    """(value, None) for a counter file's text, or (None, why) when it holds no number."""
    if text is None:
        return None, "unreadable"
    line = _first_line(text)
    if not line:
        return None, "empty"
    if line.startswith("N/A"):
        return None, NO_PMA
    if line.isdigit():  # unsigned decimal is all the kernel prints (%u, %llu)
        return int(line), None
    return None, "not a number"


def parse_enum(text: str | None) -> str | None:
    """The name in a "<code>: <NAME>" file (state, phys_state): "4: ACTIVE" -> "ACTIVE"."""
    if text is None:
        return None
    line = _first_line(text)
    code, sep, name = line.partition(":")
    if sep and code.strip().isdigit():
        return name.strip() or None
    return line or None


def parse_text(text: str | None) -> str | None:
    if text is None:
        return None
    return _first_line(text) or None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([GM])b/sec")


def parse_rate(text: str | None) -> float | None:
    """Link rate in bytes per second from "100 Gb/sec (4X EDR)" (the kernel's unit is 10^9 bit/s)."""
    if not text:
        return None
    m = _RATE.match(text)
    if not m:
        return None
    return float(m.group(1)) * (1e9 if m.group(2) == "G" else 1e6) / 8


# --- reading ----------------------------------------------------------------------------------

def _raw(path: str) -> bytes:
    """The bytes of one sysfs file. os.open/os.read cost a third of open().read()."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _read(path: str) -> tuple[str | None, str | None]:
    """(text, None), or (None, errno name) when the read fails (ENOENT, EINVAL, EIO...)."""
    try:
        data = _raw(path)
    except OSError as e:
        return None, errno.errorcode.get(e.errno or 0, "OSError")
    return data.decode("ascii", "replace"), None


def _natural(name: str) -> tuple:
    """Sort key that puts mlx5_2 before mlx5_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def class_dir(root: str) -> str:
    return os.path.join(root, *CLASS_DIR)


def devices(root: str) -> list[str]:
    """Names of the RDMA devices under `root` (a sysfs mount), naturally sorted; none -> []."""
    try:
        return sorted(os.listdir(class_dir(root)), key=_natural)
    except OSError:
        return []


def ports(root: str, device: str) -> list[int]:
    """Port numbers of `device`; [] if it has none or is gone."""
    try:
        names = os.listdir(os.path.join(class_dir(root), device, "ports"))
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isascii() and n.isdigit())


def _read_group(path: str, skip: frozenset[str], problems: list, prefix: str) -> dict[str, int | None]:
    values: dict[str, int | None] = {}
    try:
        names = os.listdir(path)
    except OSError:
        return values  # no such group on this device (or port): no data, not an error
    for name in names:
        if name in skip:
            continue
        text, err = _read(os.path.join(path, name))
        value, why = parse_counter(text)
        values[name] = value
        if value is None:
            problems.append((f"{prefix}/{name}", err or why))
    return values


def read_port(root: str, device: str, port: int, hw_counters: bool = False,
              hw_skip: frozenset[str] = frozenset({"lifespan"}), clock=time.time) -> Port | None:
    """Read every file of one port in one pass; None if the port (or its device) is gone.

    The reading is stamped with the middle of the pass, so rates use when the values were read,
    not when the interval started.
    """
    base = os.path.join(class_dir(root), device, "ports", str(port))
    problems: list[tuple[str, str]] = []
    t0 = clock()
    attrs = {}
    for name in ("state", "phys_state", "rate", "link_layer"):
        text, err = _read(os.path.join(base, name))
        attrs[name] = text
        if text is None and err != "ENOENT":  # a driver without the file: no data, not an error
            problems.append((name, err or "unreadable"))
    counters = _read_group(os.path.join(base, "counters"), frozenset(), problems, "counters")
    counters.update(_read_group(os.path.join(base, "counters_ext"), frozenset(), problems, "counters_ext"))
    hw = _read_group(os.path.join(base, "hw_counters"), hw_skip, problems, "hw_counters") if hw_counters else {}
    t1 = clock()
    if (problems or not attrs["state"]) and not os.path.isdir(base):
        return None  # vanished while we read it: its half-read values are not data
    return Port(
        device=device, port=port, timestamp=(t0 + t1) / 2,
        state=parse_enum(attrs["state"]), phys_state=parse_enum(attrs["phys_state"]),
        rate=parse_text(attrs["rate"]), link_layer=parse_text(attrs["link_layer"]),
        counters=counters, hw_counters=hw, problems=tuple(problems),
    )


def netdevs(root: str, device: str, port: int) -> tuple[str, ...]:
    """Net devices carrying a port's traffic.

    RoCE: the GID table names them (gid_attrs/ndevs/<index>), and only it names the bond or VLAN
    device on top of the PCI function. InfiniBand GIDs have no net device (reading gives EINVAL),
    so the IPoIB devices come from the PCI function (device/net/*), where `dev_port` (0-based)
    tells the ports of a multi-port card apart.
    """
    base = os.path.join(class_dir(root), device)
    names: set[str] = set()
    gid_dir = os.path.join(base, "ports", str(port), "gid_attrs", "ndevs")
    try:
        entries = os.listdir(gid_dir)
    except OSError:
        entries = []
    for entry in entries:
        name = parse_text(_read(os.path.join(gid_dir, entry))[0])
        if name:
            names.add(name)
    if names:
        return tuple(sorted(names, key=_natural))
    net_dir = os.path.join(base, "device", "net")
    try:
        candidates = os.listdir(net_dir)
    except OSError:
        return ()
    multi_port = len(ports(root, device)) > 1
    for name in candidates:
        if multi_port:
            dev_port, _ = parse_counter(_read(os.path.join(net_dir, name, "dev_port"))[0])
            if dev_port is not None and dev_port != port - 1:
                continue
        names.add(name)
    return tuple(sorted(names, key=_natural))


def list_devices(root: str) -> list[str]:
    """Printable lines for `xtrace-agent -l`: one per port, with link layer, state, rate and net devices.

    Returns [] when there are no RDMA devices under `root`.
    """
    lines = []
    for device in devices(root):
        port_numbers = ports(root, device)
        if not port_numbers:
            lines.append(f"{device:<14} no ports")
            continue
        for number in port_numbers:
            p = read_port(root, device, number)
            if p is None:
                continue
            nets = ",".join(netdevs(root, device, number)) or "-"
            lines.append(
                f"{device:<14} port={number} link_layer={p.link_layer or '?'} state={p.state or '?'} "
                f"phys_state={p.phys_state or '?'} rate={p.rate or '?'} netdev={nets}"
            )
    return lines
