"""Network interfaces of this host (the agent's network namespace): lookup, globs and `-l` listing."""

from __future__ import annotations

import fnmatch
import json
import socket
import subprocess
from typing import NamedTuple

_LINK_TYPES = {1: "ether", 32: "infiniband", 772: "loopback", 65534: "none", 776: "sit", 778: "gre"}
DEFAULT_SYSFS = "/sys"


class Link(NamedTuple):
    name: str
    ifindex: int
    state: str  # operstate: up, down, unknown (veth/loopback often report unknown while usable)
    link_type: str
    mtu: int

    @property
    def infiniband(self) -> bool:
        return self.link_type == "infiniband"

    @property
    def is_down(self) -> bool:
        return self.state in ("down", "lowerlayerdown", "notpresent")


def _read(sysfs: str, name: str, attr: str) -> str | None:
    try:
        with open(f"{sysfs}/class/net/{name}/{attr}", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def link(name: str, sysfs: str = DEFAULT_SYSFS) -> Link | None:
    """The interface called `name` now, or None if there is none (deleted, renamed, not yet created).

    Its type, state and MTU are read under `sysfs` (the agent's --sysfs root, as for RDMA)."""
    try:
        ifindex = socket.if_nametoindex(name)
    except OSError:
        return None
    arphrd = _read(sysfs, name, "type")
    kind = _LINK_TYPES.get(int(arphrd), f"arphrd{arphrd}") if arphrd and arphrd.isdigit() else "unknown"
    mtu = _read(sysfs, name, "mtu")
    return Link(name, ifindex, _read(sysfs, name, "operstate") or "unknown", kind, int(mtu) if mtu and mtu.isdigit() else 0)


def rx_counters(name: str, sysfs: str = DEFAULT_SYSFS) -> tuple[int, int] | None:
    """(rx_packets, rx_bytes) the interface's driver counted, or None if unreadable. Driver
    counts: some leave out the Ethernet header (veth does), so bytes are approximate."""
    packets, bytes_ = _read(sysfs, name, "statistics/rx_packets"), _read(sysfs, name, "statistics/rx_bytes")
    if not (packets and bytes_ and packets.isdigit() and bytes_.isdigit()):
        return None
    return int(packets), int(bytes_)


def names() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def is_pattern(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def matching(spec: str, present: list[str]) -> list[str]:
    """The names in `present` that a glob (or a plain name) selects."""
    return [n for n in present if fnmatch.fnmatchcase(n, spec)]


def expand(specs: tuple[str, ...] | list[str]) -> list[str]:
    """Names matching `specs` (plain names are kept even when absent, so callers can report them)."""
    present = names()
    out: list[str] = []
    for spec in specs:
        matched = matching(spec, present) if is_pattern(spec) else [spec]
        out.extend(n for n in matched if n not in out)
    return out


def _egress_programs(ifindex: int) -> str:
    """The programs on the interface's tcx egress hook, in order ('-' when none or not readable)."""
    try:
        from xtrace_agent.xdp import libbpf

        ids = libbpf.tcx_query(ifindex)
        return ",".join(f"{libbpf.prog_name_by_id(i) or '?'}(id {i})" for i in ids) or "-"
    except OSError:  # no tcx, no libbpf, no permission
        return "-"


def listing(sysfs: str = DEFAULT_SYSFS) -> list[str]:
    """Human-readable lines for `xtrace-agent -l`: every interface with state, type, MTU, XDP program
    and tcx egress programs."""
    try:
        raw = subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True, timeout=10)
        links = json.loads(raw.stdout) if raw.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        links = []
    lines = []
    if not links:  # no iproute2: fall back to sysfs, without XDP details
        for name in names():
            li = link(name, sysfs)
            if li:
                lines.append(f"{li.name:<16} state={li.state:<8} type={li.link_type:<10} mtu={li.mtu:<6} xdp=-")
        return lines
    for li in links:
        xdp = li.get("xdp") or {}
        prog = xdp.get("prog") or {}
        if prog:
            where = {1: "native", 2: "generic", 3: "offload"}.get(xdp.get("mode"), "?")
            xdp_text = f"{prog.get('name', '?')}(id {prog.get('id', '?')}, {where})"
        else:
            xdp_text = "-"
        lines.append(
            f"{li.get('ifname', '?'):<16} state={li.get('operstate', '?').lower():<8} "
            f"type={li.get('link_type', '?'):<10} mtu={li.get('mtu', '?'):<6} xdp={xdp_text}"
            f" tcx-egress={_egress_programs(li.get('ifindex', 0))}"
        )
    return lines
