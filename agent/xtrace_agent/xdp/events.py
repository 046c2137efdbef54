"""The drop and TCP event programs (bpf/xtrace_events.c): offsets from the running kernel's BTF,
compile in the child, attach to raw tracepoints, two swapped tables per kind, drained each interval.

Exactness is the traffic program's (program.py): the program counts into the table an
array-of-maps slot holds; drain() installs the other, empty table (the update returns after an
RCU grace period, when no program run can hold the old one) and only then reads and empties the
old one. A drop whose table was full is in `drops_full` (cumulative, per interface and reason:
the drain reports what it gained since the last drain), and only if that is full too in `lost`
(cumulative, global). So every drop on a watched interface is in exactly one drain.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import NamedTuple

import numpy as np

from xtrace_agent.errors import AgentFailure
from xtrace_agent.stages import FlowKey
from xtrace_agent.xdp import compiler, layout, libbpf
from xtrace_agent.xdp.addresses import ip_text
from xtrace_agent.xdp.btf import VMLINUX, Btf, BtfError
from xtrace_agent.xdp.program import _Table

log = logging.getLogger("xtrace.xdp")

SOURCE = "xtrace_events.c"
# feature -> ((program, tracepoint), ...): what `/readyz` names as attached
TRACEPOINTS = {
    "drops": (("xtrace_drop", "kfree_skb"),),
    "tcp": (("xtrace_tcp_retrans", "tcp_retransmit_skb"), ("xtrace_tcp_probe", "tcp_probe")),
}
EVENT_NAMES = {"kfree_skb": "skb:kfree_skb", "tcp_retransmit_skb": "tcp:tcp_retransmit_skb",
               "tcp_probe": "tcp:tcp_probe"}
TABLES = {"drops": ("drops_a", "drops_b", "drop_tables"), "tcp": ("tcp_a", "tcp_b", "tcp_tables")}
RTT_SLOTS = 32  # slot i: srtt <= 2^i us and > 2^(i-1) us (a power of two: bpf/xtrace_events.c masks with it)
LOST_DROPS, LOST_TCP = 0, 1  # elements of the `lost` array (XT_LOST_*)
REASON_PREFIX = "SKB_DROP_REASON_"

# -D name -> (struct, member path): every kernel field the programs read
FIELDS = {
    "XT_OFF_SKB_DEV": ("sk_buff", "dev"),
    "XT_OFF_SKB_SK": ("sk_buff", "sk"),
    "XT_OFF_SKB_CB": ("sk_buff", "cb"),
    "XT_OFF_SKB_IIF": ("sk_buff", "skb_iif"),
    "XT_OFF_SKB_LEN": ("sk_buff", "len"),
    "XT_OFF_SKB_HEAD": ("sk_buff", "head"),
    "XT_OFF_SKB_DATA": ("sk_buff", "data"),
    "XT_OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "XT_OFF_SKB_MAC_HEADER": ("sk_buff", "mac_header"),
    "XT_OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
    "XT_OFF_DEV_IFINDEX": ("net_device", "ifindex"),
    "XT_OFF_DEV_ND_NET": ("net_device", "nd_net"),
    "XT_OFF_NET_INUM": ("net", "ns.inum"),
    "XT_OFF_SK_NET": ("sock", "__sk_common.skc_net"),
    "XT_OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "XT_OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "XT_OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "XT_OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "XT_OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "XT_OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "XT_OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "XT_OFF_SK_BOUND_DEV_IF": ("sock", "__sk_common.skc_bound_dev_if"),
    "XT_OFF_SK_DST_CACHE": ("sock", "sk_dst_cache"),
    "XT_OFF_DST_DEV": ("dst_entry", "dev"),
    "XT_OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us"),
    "XT_OFF_TCP_CB_GSO_SEGS": ("tcp_skb_cb", "tcp_gso_segs"),
}
# the size each read assumes (bytes); a kernel whose field differs is refused, not misread
SIZES = {"XT_OFF_SKB_DEV": 8, "XT_OFF_SKB_SK": 8, "XT_OFF_SKB_CB": 48, "XT_OFF_SKB_IIF": 4, "XT_OFF_SKB_LEN": 4, "XT_OFF_SKB_HEAD": 8,
         "XT_OFF_SKB_DATA": 8, "XT_OFF_SKB_NETWORK_HEADER": 2, "XT_OFF_SKB_MAC_HEADER": 2,
         "XT_OFF_SKB_PROTOCOL": 2, "XT_OFF_DEV_IFINDEX": 4, "XT_OFF_DEV_ND_NET": 8, "XT_OFF_NET_INUM": 4,
         "XT_OFF_SK_NET": 8, "XT_OFF_SK_FAMILY": 2, "XT_OFF_SK_DADDR": 4, "XT_OFF_SK_RCV_SADDR": 4,
         "XT_OFF_SK_DPORT": 2, "XT_OFF_SK_NUM": 2, "XT_OFF_SK_V6_DADDR": 16, "XT_OFF_SK_V6_RCV_SADDR": 16,
         "XT_OFF_SK_BOUND_DEV_IF": 4, "XT_OFF_SK_DST_CACHE": 8, "XT_OFF_DST_DEV": 8, "XT_OFF_TCP_SRTT_US": 4,
         "XT_OFF_TCP_CB_GSO_SEGS": 2}


class Unavailable(AgentFailure):
    """This kernel cannot give a feature (no BTF, no tracepoint, a field unlike what is read)."""


class KernelLayout(NamedTuple):
    """What the running kernel's BTF says, for the compile and for naming reasons."""

    defines: dict[str, int]
    reasons: dict[int, str]  # enum skb_drop_reason value -> name without SKB_DROP_REASON_


def kernel_layout(features: tuple[str, ...], btf: Btf | None = None, path=VMLINUX) -> KernelLayout:
    """Offsets and reason names from the kernel's BTF; Unavailable (one line) if it lacks any."""
    what = " and ".join(f"xdp.{f}" for f in features)
    try:
        btf = btf or Btf.load(path)
    except BtfError as e:
        raise Unavailable(f"{what} needs the running kernel's BTF (CONFIG_DEBUG_INFO_BTF): {e}") from None
    defines: dict[str, int] = {}
    try:
        for name, (struct_name, member) in FIELDS.items():
            m = btf.member(struct_name, member)
            if m.bitfield or m.size != SIZES[name]:
                raise BtfError(f"{struct_name}.{member} is {m.size} bytes here, not {SIZES[name]}")
            defines[name] = m.offset
        enum = btf.enum("skb_drop_reason")
        by_name = {v: k for k, v in enum.items()}
        defines["XT_SKB_CONSUMED"] = by_name.get("SKB_CONSUMED", 1)
        defines["XT_SKB_NOT_DROPPED_YET"] = by_name.get("SKB_NOT_DROPPED_YET", 0)
        for feature in features:
            for _prog, event in TRACEPOINTS[feature]:
                try:
                    args = btf.tracepoint_args(event)
                except BtfError:
                    raise Unavailable(f"{what}: this kernel has no tracepoint {EVENT_NAMES[event]}") from None
                _check_args(event, args)
                if event == "kfree_skb":
                    defines["XT_KFREE_SKB_HAS_RX_SK"] = int(len(args) > 3 and args[3] == "struct sock *")
                if event == "tcp_retransmit_skb":
                    defines["XT_TCP_RETRANS_HAS_ERR"] = int(len(args) > 2 and args[2] == "int")
    except BtfError as e:
        raise Unavailable(f"{what}: {e}") from None
    defines.update(spans(defines))
    defines.setdefault("XT_KFREE_SKB_HAS_RX_SK", 0)
    defines.setdefault("XT_TCP_RETRANS_HAS_ERR", 0)
    return KernelLayout(defines, {v: n.removeprefix(REASON_PREFIX) for v, n in enum.items()})


# fields read together with one bpf_probe_read_kernel: -D prefix -> the fields of that span
SPANS = {
    "XT_SKB": ("XT_OFF_SKB_LEN", "XT_OFF_SKB_PROTOCOL", "XT_OFF_SKB_NETWORK_HEADER", "XT_OFF_SKB_MAC_HEADER",
               "XT_OFF_SKB_HEAD", "XT_OFF_SKB_DATA"),
    "XT_SK": ("XT_OFF_SK_FAMILY", "XT_OFF_SK_DADDR", "XT_OFF_SK_RCV_SADDR", "XT_OFF_SK_DPORT", "XT_OFF_SK_NUM",
              "XT_OFF_SK_V6_DADDR", "XT_OFF_SK_V6_RCV_SADDR", "XT_OFF_SK_BOUND_DEV_IF", "XT_OFF_SK_NET"),
}
SPAN_MAX = 192  # bytes of stack a span may take


def spans(offsets: dict[str, int]) -> dict[str, int]:
    """XT_<S>_SPAN_START/LEN: 8-aligned ranges holding each span's fields (Unavailable if too wide)."""
    out = {}
    for prefix, fields in SPANS.items():
        start = min(offsets[f] for f in fields) // 8 * 8
        end = max(offsets[f] + SIZES[f] for f in fields)
        length = (end - start + 7) // 8 * 8
        if length > SPAN_MAX:
            raise Unavailable(f"the kernel's fields {', '.join(FIELDS[f][1] for f in fields)} lie {length} bytes "
                              f"apart (more than the {SPAN_MAX} the programs read at once)")
        out[f"{prefix}_SPAN_START"], out[f"{prefix}_SPAN_LEN"] = start, length
    return out


def _check_args(event: str, args: tuple[str, ...]) -> None:
    """The argument positions the programs rely on (ctx->args[i])."""
    want = {"kfree_skb": ("struct sk_buff *", "void *", "enum skb_drop_reason"),
            "tcp_retransmit_skb": ("struct sock *", "struct sk_buff *"),
            "tcp_probe": ("struct sock *", "struct sk_buff *")}[event]
    if args[:len(want)] != want:
        raise Unavailable(f"the tracepoint {EVENT_NAMES[event]} has arguments ({', '.join(args)}), "
                          f"not ({', '.join(want)}, ...)")


def support(path=VMLINUX) -> list[str]:
    """One line per feature: what it would attach to on this kernel, or why it cannot (`-l`)."""
    try:
        btf = Btf.load(path)
    except BtfError as e:
        return [f"unavailable: no BTF ({e})"]
    out = []
    for feature, programs in TRACEPOINTS.items():
        try:
            kl = kernel_layout((feature,), btf)
            events = ", ".join(EVENT_NAMES[e] for _, e in programs)
            reasons = f", {len(kl.reasons)} drop reasons" if feature == "drops" else ""
            out.append(f"xdp.{feature}: {events} (BTF {path}{reasons})")
        except Unavailable as e:
            out.append(f"xdp.{feature}: unavailable: {str(e).removeprefix(f'xdp.{feature}: ')}")
    return out


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class DropsDrained(NamedTuple):
    """Drops counted since the previous drain; every ifindex is a key's (with layout.EGRESS)."""

    flows: dict[tuple[FlowKey, int], tuple[int, int]]  # (flow, reason value) -> (packets, bytes)
    untracked: dict[tuple[int, str, int], tuple[int, int]]  # (ifindex, untracked reason, reason value)
    full: dict[tuple[int, int], tuple[int, int]]  # (ifindex, reason value): no room in the table
    lost: tuple[int, int]  # cumulative: no room anywhere


class TcpDrained(NamedTuple):
    """TCP events since the previous drain, per flow; ifindex-only keys are `other` (table full)."""

    flows: dict[FlowKey, np.ndarray]  # [retrans_segs, rtt_count, rtt_sum_us]
    untracked: dict[int, np.ndarray]  # ifindex -> the same vector
    lost: int  # cumulative events with no place
    histograms: dict[int, np.ndarray] = {}  # ifindex -> [sum_us, slot 0..RTT_SLOTS-1] gained since the last drain


class EventsProgram:
    """The loaded event programs, their tracepoint attachments and tables."""

    def __init__(self, compiled: compiler.Compiled, features: tuple[str, ...], reasons: dict[int, str]):
        self._c = compiled
        self.features = features
        self.reasons = reasons
        self.ncpu = libbpf.possible_cpus()
        maps = compiled.maps
        self._tables = {f: [_Table(maps[TABLES[f][0]], self.ncpu), _Table(maps[TABLES[f][1]], self.ncpu)]
                        for f in features}
        self._active = dict.fromkeys(features, 0)
        self._watched = maps["watched"]
        self._lost = maps["lost"]
        self._full = maps.get("drops_full")
        self._full_seen: dict[tuple[int, int], tuple[int, int]] = {}
        self._hists = maps.get("rtt_hists")
        self._hists_seen: dict[int, np.ndarray] = {}
        self._places: set[int] = set()
        self._links: dict[str, int] = {}  # tracepoint -> attachment fd
        self.netns = netns_inode()
        for f in features:
            self._install(f, 0)

    @classmethod
    def load(cls, features: tuple[str, ...], drop_table_size: int = 16384, tcp_table_size: int = 16384,
             btf_path=VMLINUX, offsets: dict[str, int] | None = None) -> EventsProgram:
        """Resolve the kernel's layout, compile and load (Unavailable / AgentFailure, one line).
        `offsets` replaces some of the BTF's (tests: what headers of another kernel would give)."""
        kl = kernel_layout(features, path=btf_path)
        given = {**kl.defines, **(offsets or {})}
        extra = {**layout.defines(), **given, **spans(given), "XT_DROP_TABLE_SIZE": drop_table_size,
                 "XT_TCP_TABLE_SIZE": tcp_table_size, "XT_RTT_SLOTS": RTT_SLOTS}
        for f in features:
            extra[f"XT_{f.upper()}"] = 1
        programs = tuple(p for f in features for p, _ in TRACEPOINTS[f])
        maps = tuple(m for f in features for m in TABLES[f]) + ("watched", "lost") + (
            ("drops_full",) if "drops" in features else ()) + (("rtt_hists",) if "tcp" in features else ())
        compiled = compiler.compile_and_load(0, 1, source=str(compiler.bpf_dir() / SOURCE), programs=programs,
                                             extra=extra, tc=(), raw_tracepoints=programs, maps=maps,
                                             what="the drop/TCP event programs")
        try:
            return cls(compiled, features, kl.reasons)
        except (OSError, KeyError) as e:
            compiled.close()
            raise AgentFailure(f"the loaded event programs are not usable: {e}") from None

    def reason_name(self, value: int) -> str:
        return self.reasons.get(value, str(value))

    @property
    def programs(self) -> dict[str, int]:
        return dict(self._c.programs)

    def _install(self, feature: str, index: int) -> None:
        outer = self._c.maps[TABLES[feature][2]]
        key, fd = ctypes.c_uint32(0), ctypes.c_uint32(self._tables[feature][index].info.fd)
        libbpf.update_elem(outer.fd, ctypes.byref(key), ctypes.byref(fd))

    # ---- attachment -----------------------------------------------------------------------
    def attach(self) -> list[str]:
        """Attach every program to its tracepoint; returns the events attached ('skb:kfree_skb')."""
        for feature in self.features:
            for prog, event in TRACEPOINTS[feature]:
                if event in self._links:
                    continue
                try:
                    self._links[event] = libbpf.raw_tracepoint_open(event, self._c.programs[prog])
                except OSError as e:
                    raise Unavailable(f"xdp.{feature}: cannot attach to {EVENT_NAMES[event]}: {e.strerror}") from None
        return self.attached()

    def attached(self) -> list[str]:
        return sorted(EVENT_NAMES[e] for e in self._links)

    def watch(self, place: int, netns: int | None = None) -> None:
        """Count events of ifindex | direction in network namespace `netns` (default: ours; one
        namespace per place); TCP's untracked entries are made first."""
        if "tcp" in self.features:
            for table in self._tables["tcp"]:
                table.insert_zero(self._tcp_untracked_key(table, place))
        self._places.add(place)
        value = ctypes.c_uint32(self.netns if netns is None else netns)
        libbpf.update_elem(self._watched.fd, ctypes.byref(ctypes.c_uint32(place)), ctypes.byref(value))

    def unwatch(self, place: int) -> None:
        self._places.discard(place)
        libbpf.delete_elem(self._watched.fd, ctypes.byref(ctypes.c_uint32(place)))

    @staticmethod
    def _tcp_untracked_key(table: _Table, place: int) -> np.ndarray:
        key = np.zeros(1, dtype=table.key_dtype)
        key["ifindex"] = place
        key["protocol"] = layout.untracked_value("table_full")
        return key

    # ---- counters -------------------------------------------------------------------------
    def _swap(self, feature: str) -> _Table:
        """Install the other table and return the old one, which no program writes to any more."""
        old = self._tables[feature][self._active[feature]]
        fresh = 1 - self._active[feature]
        if feature == "tcp":
            for place in self._places:
                self._tables[feature][fresh].insert_zero(self._tcp_untracked_key(self._tables[feature][fresh], place))
        self._install(feature, fresh)  # returns after an RCU grace period
        self._active[feature] = fresh
        return old

    def drain_drops(self) -> DropsDrained:
        old = self._swap("drops")
        flows: dict = {}
        untracked: dict = {}
        for keys, vals in old.take():
            sums = vals.sum(axis=1)
            for row, (p, b) in zip(keys, sums[:, :2].tolist(), strict=True):
                if not p:
                    continue
                reason = int(row["reason"])
                if row["ip_version"] == 0:
                    k = (int(row["ifindex"]), layout.UNTRACKED.get(int(row["protocol"]), "malformed"), reason)
                    cur = untracked.get(k, (0, 0))
                    untracked[k] = (cur[0] + p, cur[1] + b)
                else:
                    k = (flow_key(row), reason)
                    cur = flows.get(k, (0, 0))
                    flows[k] = (cur[0] + p, cur[1] + b)
        return DropsDrained(flows, untracked, self._full_deltas(), self._lost_total(LOST_DROPS))

    def _full_deltas(self) -> dict[tuple[int, int], tuple[int, int]]:
        """What drops_full gained since the last drain (it is cumulative: never emptied)."""
        table = _Table(self._full, self.ncpu)
        out = {}
        for keys, vals in table.read():
            sums = vals.sum(axis=1)
            for row, (p, b) in zip(keys, sums[:, :2].tolist(), strict=True):
                k = (int(row["ifindex"]), int(row["reason"]))
                p0, b0 = self._full_seen.get(k, (0, 0))
                if p > p0:
                    out[k] = (p - p0, b - b0)
                self._full_seen[k] = (p, b)
        return out

    def _lost_total(self, which: int) -> tuple[int, int]:
        slot = (self._lost.value_size + 7) // 8 * 8
        buf = ctypes.create_string_buffer(slot * self.ncpu)
        libbpf.lookup_elem(self._lost.fd, ctypes.byref(ctypes.c_uint32(which)), buf)
        words = np.frombuffer(buf, dtype=np.uint64).reshape(self.ncpu, slot // 8).sum(axis=0)
        return int(words[0]), int(words[1])

    def drain_tcp(self) -> TcpDrained:
        old = self._swap("tcp")
        flows: dict = {}
        untracked: dict = {}
        for keys, vals in old.take():
            sums = vals.sum(axis=1)
            for row, vec in zip(keys, sums, strict=True):
                if not (vec[0] or vec[1]):
                    continue
                if row["ip_version"] == 0:
                    i = int(row["ifindex"])
                    untracked[i] = untracked.get(i, 0) + vec
                else:
                    k = flow_key(row)
                    flows[k] = flows.get(k, 0) + vec
        return TcpDrained(flows, untracked, self._lost_total(LOST_TCP)[0], self._hist_deltas())

    def _hist_deltas(self) -> dict[int, np.ndarray]:
        """What each place's RTT histogram gained since the last drain (cumulative, never emptied)."""
        out = {}
        for keys, vals in _Table(self._hists, self.ncpu).read():
            for place, vec in zip(keys["value"].tolist(), vals.sum(axis=1), strict=True):
                seen = self._hists_seen.get(place)
                delta = vec - seen if seen is not None else vec
                if delta.any():
                    out[place] = delta
                self._hists_seen[place] = vec
        return out

    def close(self) -> None:
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        self._c.close()

    def __enter__(self) -> EventsProgram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def flow_key(row) -> FlowKey:
    """A FlowKey from one structured row of a flow_key-shaped key (as program.py decodes them)."""
    version = int(row["ip_version"])
    return FlowKey(int(row["ifindex"]), ip_text(row["src"].tobytes(), version), ip_text(row["dst"].tobytes(), version), int(row["src_port"]), int(row["dst_port"]), int(row["protocol"]),
                   layout.TRAFFIC_TYPES.get(int(row["traffic_type"]), "ethernet"), int(row["rdma_opcode"]),
                   int(row["dest_qp"]))
