"""What the agent and bpf/xtrace.c agree on, written once: the numbering of traffic types and of
untracked reasons (handed to the C as -D defines), and numpy views of the map layouts that the
compile child reports (so no C struct is declared again in Python).
"""

from __future__ import annotations

import numpy as np

from xtrace_agent.xdp.compiler import Field

# label traffic_type, by the value of flow_key.traffic_type
TRAFFIC_TYPES = {0: "ethernet", 1: "roce", 2: "infiniband"}

# Why a packet is in its interface's untracked entry (flow_key.protocol of a key with ip_version 0).
# Every reason counts in the interface total and in the interface's `other` flow.
UNTRACKED = {
    1: "malformed",  # a header was cut short or invalid (bad IHL, bad version...)
    2: "non_ip",  # parsed fine but not IPv4/IPv6 (ARP, LLDP...)
    3: "table_full",  # the flow table had no room for a new flow
    4: "unsampled",  # with xdp.sampling N: the N-1 in N packets not counted per flow
}

# The top bit of flow_key.ifindex marks what an interface sent (the TC program) from what it
# received (XDP): kernel ifindexes are positive ints, so the bit is never part of one.
EGRESS = 1 << 31


def split_ifindex(raw: int) -> tuple[int, str]:
    """(ifindex, direction) of a flow key's ifindex word."""
    return (raw & ~EGRESS, "egress") if raw & EGRESS else (raw, "ingress")


def defines() -> dict[str, int]:
    """The -D defines bpf/xtrace.h requires."""
    out = {f"XT_TRAFFIC_{name.upper()}": value for value, name in TRAFFIC_TYPES.items()}
    out["XT_EGRESS"] = EGRESS
    out.update({f"XT_UNTRACKED_{name.upper()}": value for value, name in UNTRACKED.items()})
    return out


def untracked_value(name: str) -> int:
    """flow_key.protocol of the untracked entry for reason `name`."""
    return next(value for value, n in UNTRACKED.items() if n == name)


def reasons(sampling: int) -> tuple[str, ...]:
    """The untracked reasons a program compiled with this sampling can report."""
    return tuple(name for name in UNTRACKED.values() if name != "unsampled" or sampling > 1)


def dtype_of(fields: tuple[Field, ...], itemsize: int) -> np.dtype:
    """A numpy structured dtype for a C struct as the compile child reported it.

    Arrays (addresses) become raw bytes ('V<n>'): numpy's tolist() turns a column of them into
    Python bytes objects in one C loop."""
    formats = [f"V{f.size}" if f.count > 1 else f"=u{f.size}" for f in fields]
    return np.dtype({"names": [f.name for f in fields], "formats": formats,
                     "offsets": [f.offset for f in fields], "itemsize": itemsize})
