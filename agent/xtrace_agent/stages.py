"""The pipeline's stage types: what each stage hands the next, and the seams between them.

    Source.collect(now) -> observation ─► Accounting.report(observation, now) -> Report ─► Sink.write(report)

A source reads (the kernel's flow tables, sysfs) and keeps its inputs healthy (attachments,
readiness); it knows nothing about counters over time or output. An accounting stage turns one
interval's observation into cumulative series (samples.Report). Sinks deliver reports; only they do
network I/O. `pipeline.MODES` says which source and accounting each mode runs.

The XDP source reads the kernel through `Program`, the kernel seam: `xdp.program.XdpProgram`
implements it on a real kernel, tests hand the source a fake that implements it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from xtrace_agent.samples import Report


# --- the three stage interfaces -----------------------------------------------------------------
class Source(Protocol):
    """start() attaches/opens (UsageError or AgentFailure with one clear line); collect() runs once
    per interval and never raises for a transient problem (it records it in Health); close()
    detaches, is always called (in a finally) and is idempotent."""

    def start(self) -> None: ...

    def collect(self, now: float) -> Any: ...

    def close(self) -> None: ...


class Accounting(Protocol):
    def report(self, observed: Any, now: float) -> Report: ...


class Sink(Protocol):
    """write() hands over one interval and returns at once (a slow receiver is the sink's own
    problem: queue, count, retry in its own thread); close() flushes within `timeout` seconds and
    persists the rest where the sink has a spool; idempotent."""

    def write(self, report: Report) -> None: ...

    def close(self, timeout: float) -> None: ...


# --- xdp: the kernel seam ------------------------------------------------------------------------
class FlowKey(NamedTuple):
    """A decoded kernel flow key; src_ip/dst_ip in canonical text (RFC 5952, as `ipaddress` prints)."""

    ifindex: int  # with xdp.layout.EGRESS set for what the interface sent
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    traffic_type: str  # "ethernet" | "roce" | "infiniband"
    rdma_opcode: int
    dest_qp: int


class Drained(NamedTuple):
    """Everything counted in one kernel table, i.e. since the previous drain."""

    flows: dict[FlowKey, tuple[int, int]]  # (packets, bytes) summed over CPUs, scaled up by the sampling
    untracked: dict[tuple[int, str], tuple[int, int]]  # (ifindex, reason) -> (packets, bytes), as counted
    interfaces: dict[int, tuple[int, int]]  # ifindex -> every packet counted there (exact, never sampled)
    sampled: int = 0  # with sampling: packets counted per flow (before scaling); else 0


class Egress(Protocol):
    def resolve(self) -> str: ...


class Program(Protocol):
    """The loaded kernel program as the XDP source uses it."""

    headers: str  # the kernel headers it was compiled against, as /readyz names them
    egress: Egress  # resolve(): the egress hook this kernel offers (AttachError when none)

    def claim(self, interval: float) -> None: ...

    def attach(self, ifname: str, ifindex: int, infiniband: bool, mode: str, direction: str) -> str: ...

    def detach(self, ifindex: int, direction: str) -> None: ...

    def attached(self, direction: str) -> Mapping[int, str]: ...

    def drain(self) -> Drained: ...

    def unattributed(self) -> tuple[int, int]: ...

    def close(self) -> None: ...


# --- xdp: source -> accounting -------------------------------------------------------------------
Group = tuple  # (interface, "ingress" | "egress"): conservation holds per group


class FlowId(NamedTuple):
    """A flow's identity in what is exported: label values, so a recreated interface (a new
    ifindex) continues the same series. The hot paths build and read these as plain tuples, by the
    slots below; the fields after the first are FlowKey's."""

    group: Group
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    traffic_type: str
    rdma_opcode: int | None  # None outside RoCE: the BTH fields are no part of other flows' identity
    dest_qp: int | None


assert FlowId._fields[1:] == FlowKey._fields[1:]  # the source copies FlowKey's slots over by slice
GROUP = FlowId._fields.index("group")
ENDPOINTS = slice(FlowId._fields.index("src_ip"), FlowId._fields.index("traffic_type") + 1)
TRAFFIC_TYPE = FlowId._fields.index("traffic_type")
BTH = slice(FlowId._fields.index("rdma_opcode"), len(FlowId._fields))
NO_BTH = (None, None)


class Observed(NamedTuple):
    """What the XDP source saw in one interval (deltas, except `unattributed`)."""

    flows: dict[tuple, tuple[int, int]]  # FlowId -> estimates (x sampling)
    untracked: dict[tuple[Group, str], tuple[int, int]]  # (group, reason) -> as counted
    interfaces: dict[Group, tuple[int, int]]  # every packet, exact
    sampled: int = 0
    unattributed: tuple[int, int] = (0, 0)  # cumulative since the program was loaded
    watched: tuple[Group, ...] = ()  # (interface, direction) the program is attached to now
    began: float | None = None  # time.monotonic() when the collection started
    unobserved: dict[str, tuple[int, int]] = {}  # interface -> driver rx while our program was not on it
    drops: object = None  # drops.DropsObserved with xdp.drops
    tcp: object = None  # tcp.TcpObserved with xdp.tcp


# --- rdma / nccl: source -> accounting -----------------------------------------------------------
class PortsObserved(NamedTuple):
    """What the RDMA source read in one interval: each port's raw counters (rdma.sysfs.Port) with
    the net devices it carries."""

    ports: list  # rdma.sysfs.Port
    netdevs: dict[tuple[str, int], str]  # (device, port) -> comma-separated net device names
    began: float  # time.perf_counter() when the collection started
    nic: tuple | list = ()  # nic.source.NicReading: the NIC statistics of the ports' netdevs and the config's
    # pod attribution: device -> its owner's labels (namespace, pod, container, resource); a device
    # no pod holds is absent
    owners: dict[str, dict[str, str]] = {}
    # and netdev -> its owner's labels, for the net devices of held functions (a VF's net/ entries):
    # a NIC reading without an RDMA device, or of an unheld one, takes its owner from here
    netdev_owners: dict[str, dict[str, str]] = {}
