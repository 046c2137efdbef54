"""The loaded XDP program: its two flow tables, swapped and drained each interval.

The program and maps come from the compile child as fds; the agent process never imports bcc.
Map layouts come from the child's report (as BCC's ctypes saw the C structs); the numbering of
traffic types and untracked reasons from layout.py. Which interfaces carry the program, and
whether we may take one over, is attach.py's business.

The drain cannot race the program (docs/architecture.md, "Every packet accounted for"): the
program counts into the table `tables[0]` holds; drain() installs the other, empty table there,
the kernel returns from that update only after every program run that could still hold the old
table has finished, and only then is the old table read and emptied. A packet is counted in
exactly one drain, in exactly one entry: its flow, or its interface's untracked entry.
"""

from __future__ import annotations

import ctypes
import logging
import os

import numpy as np

from xtrace_agent.errors import AgentFailure
from xtrace_agent.stages import Drained, FlowKey
from xtrace_agent.xdp import compiler, layout, libbpf
from xtrace_agent.xdp.addresses import ip_text
from xtrace_agent.xdp.attach import (
    OWNER,
    UNATTRIBUTED,
    AttachError,
    Attachments,
    Owner,
    boottime_ns,
    pidns,
    pod_id,
    read_state,
    start_time,
)
from xtrace_agent.xdp.compiler import Compiled, MapInfo
from xtrace_agent.xdp.egress import EgressAttachments
from xtrace_agent.xdp.flowtable import FlowTable, grouped

__all__ = ["AttachError", "Drained", "FlowKey", "XdpProgram", "ip_text"]

log = logging.getLogger("xtrace.xdp")

ETH_PROG, IPOIB_PROG = compiler.RX_PROGRAMS
ETH_TX_PROG, IPOIB_TX_PROG = compiler.TX_PROGRAMS
TABLES = ("flows_a", "flows_b")
# Per-CPU value buffers of one drain step are capped at this size (at 64 CPUs, a whole 65536-flow
# table would need 64 MiB at once; chunks keep the agent's RSS flat).
DRAIN_CHUNK_BYTES = 8 << 20


class _Table:
    """One flow table with reusable key/value buffers for its batch reads."""

    def __init__(self, info: MapInfo, ncpu: int):
        self.info = info
        self.slot = (info.value_size + 7) // 8 * 8  # the kernel rounds each CPU's value up to 8 bytes
        self.ncpu = ncpu
        self.value_bytes = self.slot * ncpu
        self.chunk = max(1, min(info.max_entries, DRAIN_CHUNK_BYTES // self.value_bytes))
        self.keys = ctypes.create_string_buffer(self.chunk * info.key_size)
        self.values = ctypes.create_string_buffer(self.chunk * self.value_bytes)
        self.tokens = (ctypes.create_string_buffer(max(8, info.key_size)),
                       ctypes.create_string_buffer(max(8, info.key_size)))
        self.key_dtype = layout.dtype_of(info.key_fields, info.key_size)
        self.zero = ctypes.create_string_buffer(self.value_bytes)

    def take(self):
        """Read and delete every entry: yield (keys structured array, values uint64 [n, cpus, words]),
        both views of the read buffers, valid until the next chunk is read (drain() copies what it
        keeps).

        Only for a table no program writes to any more (after the swap)."""
        return self.batches(libbpf.lookup_and_delete_batch, copy=False)

    def read(self):
        """Every entry, left in place (lookup batch): yields as `take` does."""
        return self.batches(libbpf.lookup_batch)

    def batches(self, op, copy: bool = True):
        """`op` (a libbpf batch call) over the whole table, a chunk at a time; the keys a copy, or
        (copy=False) a view of the buffer the next chunk is read into, as the values always are."""
        in_token, out_token = None, self.tokens[0]
        words = self.slot // 8
        while True:
            n, done = op(self.info.fd, in_token, out_token, ctypes.addressof(self.keys),
                         ctypes.addressof(self.values), self.chunk)
            if n:
                keys = np.frombuffer(self.keys, dtype=self.key_dtype, count=n)
                if copy:
                    keys = keys.copy()
                vals = np.frombuffer(self.values, dtype=np.uint64, count=n * self.ncpu * words)
                yield keys, vals.reshape(n, self.ncpu, words)
            if done:
                return
            # the token we got is where the next call resumes; the other buffer receives the next one
            in_token = out_token
            out_token = self.tokens[1] if out_token is self.tokens[0] else self.tokens[0]

    def insert_zero(self, key: np.ndarray) -> None:
        """Create an entry at 0 unless it exists (a program may have created it a moment ago)."""
        libbpf.update_elem(self.info.fd, key.ctypes.data, ctypes.addressof(self.zero), libbpf.BPF_NOEXIST)


class XdpProgram:
    """stages.Program on a real kernel: the program loaded in the kernel with its maps, attached to any number of interfaces: XDP
    for what they receive, and (direction "egress") TC for what they send."""

    def __init__(self, compiled: Compiled, sampling: int = 1):
        self._c = compiled
        self.sampling = sampling
        self.ncpu = libbpf.possible_cpus()
        self.prog_ids = {name: libbpf.prog_info(fd).id for name, fd in compiled.programs.items()}
        maps = compiled.maps
        self._tables = [_Table(maps[name], self.ncpu) for name in TABLES]
        self._outer = maps["tables"]
        self._state = maps["state"]
        Owner.check(self._state)
        self._owner = Owner()
        self._reasons = {name: value for value, name in layout.UNTRACKED.items()
                         if name in layout.reasons(sampling)}
        self._registered: set[int] = set()  # ifindexes whose untracked entries we keep ready
        self._active = 0
        self._closed = False
        fields = {f.name: f for f in maps[TABLES[0]].value_fields}
        self._packets_word, self._bytes_word = fields["packets"].offset // 8, fields["bytes"].offset // 8
        self.links = Attachments(compiled.programs, self.prog_ids, ETH_PROG, IPOIB_PROG, on_attach=self.register)
        self.egress = EgressAttachments(compiled.programs, self.prog_ids, ETH_TX_PROG, IPOIB_TX_PROG,
                                        on_attach=lambda ifindex: self.register(ifindex | layout.EGRESS))
        self._install(self._active)

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, xdp) -> XdpProgram:
        """Compile and load in the child process (AgentFailure with one line on failure)."""
        compiled = compiler.compile_and_load(xdp.flow_table_size, xdp.sampling, extra=layout.defines())
        try:
            return cls(compiled, xdp.sampling)
        except (OSError, KeyError) as e:
            compiled.close()
            raise AgentFailure(f"the loaded XDP program is not usable: {e}") from None

    @property
    def headers(self) -> str:
        """The kernel headers the program was compiled against (headers.summary())."""
        return self._c.headers

    @property
    def programs(self) -> dict[str, int]:
        """Program fds by name (xtrace_eth, xtrace_ipoib)."""
        return dict(self._c.programs)

    @property
    def maps(self) -> dict[str, MapInfo]:
        return dict(self._c.maps)

    def prog_fd(self, infiniband: bool = False, egress: bool = False) -> int:
        names = (IPOIB_TX_PROG, ETH_TX_PROG) if egress else (IPOIB_PROG, ETH_PROG)
        return self._c.programs[names[0] if infiniband else names[1]]

    # ---- ownership and attachment ---------------------------------------------------------
    def claim(self, interval: float) -> None:
        """Record this process as the program's owner, so that another agent leaves it alone."""
        self._owner = Owner(pid=os.getpid(), pidns=pidns(), start_time=start_time() or 0,
                            heartbeat_ns=boottime_ns(), interval_ns=int(interval * 1e9), pod=pod_id())
        self._write_owner()

    def _write_owner(self) -> None:
        self._owner.heartbeat_ns = boottime_ns()
        key = ctypes.c_uint32(OWNER)
        libbpf.update_elem(self._state.fd, ctypes.byref(key), ctypes.byref(self._owner))

    def attach(self, ifname: str, ifindex: int, infiniband: bool, mode: str, direction: str = "ingress") -> str:
        """Attach for one direction; returns the mode (XDP: native, generic) or hook (egress: tcx, tc)."""
        if direction == "egress":
            return self.egress.attach(ifname, ifindex, infiniband)
        return self.links.attach(ifname, ifindex, infiniband, mode)

    def detach(self, ifindex: int, direction: str = "ingress") -> None:
        (self.egress if direction == "egress" else self.links).detach(ifindex)

    def attached(self, direction: str = "ingress") -> dict[int, str]:
        return (self.egress if direction == "egress" else self.links).attached()

    def register(self, ifindex: int) -> None:
        """Create the untracked entries of an interface (ifindex with layout.EGRESS: of its send
        side) in both tables, so that a full table still has a place for its packets."""
        self._registered.add(ifindex)
        for table in self._tables:
            self._prepare(table, (ifindex,))

    def _prepare(self, table: _Table, ifindexes) -> None:
        for ifindex in ifindexes:
            for reason in self._reasons.values():
                table.insert_zero(self._untracked_key(table, ifindex, reason))

    @staticmethod
    def _untracked_key(table: _Table, ifindex: int, reason: int) -> np.ndarray:
        key = np.zeros(1, dtype=table.key_dtype)
        key["ifindex"] = ifindex
        key["protocol"] = reason
        return key

    def _install(self, index: int) -> None:
        key, fd = ctypes.c_uint32(0), ctypes.c_uint32(self._tables[index].info.fd)
        libbpf.update_elem(self._outer.fd, ctypes.byref(key), ctypes.byref(fd))

    # ---- counters -------------------------------------------------------------------------
    def drain(self) -> Drained:
        """Swap the tables, then read and empty the one the program no longer writes to."""
        old = self._tables[self._active]
        fresh = 1 - self._active
        self._prepare(self._tables[fresh], self._registered)
        self._install(fresh)  # returns after an RCU grace period: nobody writes `old` any more
        self._active = fresh
        if self._owner.pid:
            self._write_owner()  # the heartbeat another agent looks at
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        untracked: dict[tuple[int, str], tuple[int, int]] = {}
        interfaces: dict[int, list[int]] = {}
        sampled = 0
        for keys, vals in old.take():
            sampled += self._decode(keys, vals, parts, untracked, interfaces)
        # one pass over a table nothing writes to any more: every entry comes once, deleted as read
        if len(parts) == 1:
            flows = FlowTable(*parts[0], one_pass=True)
        elif parts:
            flows = FlowTable(*(np.concatenate(column) for column in zip(*parts, strict=True)), one_pass=True)
        else:
            flows = FlowTable.empty(old.key_dtype)
        return Drained(flows, untracked, {k: (v[0], v[1]) for k, v in interfaces.items()},
                       sampled if self.sampling > 1 else 0)

    def unattributed(self) -> tuple[int, int]:
        """(packets, bytes) the program could put under no interface, since it was loaded."""
        rec = read_state(self._state.fd, UNATTRIBUTED)
        return rec.packets, rec.bytes

    def _decode(self, keys: np.ndarray, vals: np.ndarray, parts: list, untracked: dict, interfaces: dict) -> int:
        """Add one chunk of drained entries: its tracked flows as columns to `parts` (a FlowTable
        is made of them), the rest to the two dicts; returns the flow packets it held.

        Everything per flow is an array operation: no Python object per flow here (flowtable.py)."""
        sums = np.einsum("ecw->ew", vals)  # over CPUs; uint64 as sum() is, 2-8x faster at 2-256 CPUs
        packets, bytes_ = sums[:, self._packets_word], sums[:, self._bytes_word]
        ifindex, version = keys["ifindex"], keys["ip_version"]
        # per interface: every entry (one that moved nothing adds 0; untracked entries are created
        # at 0 and may stay there, so an interface with nothing moved gets no entry)
        uniq, inverse = grouped(ifindex)
        per_p = np.bincount(inverse, weights=packets, minlength=len(uniq))
        per_b = np.bincount(inverse, weights=bytes_, minlength=len(uniq))
        for i, p, b in zip(uniq.tolist(), per_p.tolist(), per_b.tolist(), strict=True):
            if p or b:
                cur = interfaces.setdefault(i, [0, 0])
                cur[0] += int(p)
                cur[1] += int(b)
        moved = packets > 0
        loose = moved & (version == 0)
        if loose.any():
            names = layout.UNTRACKED
            for i, r, p, b in zip(ifindex[loose].tolist(), keys["protocol"][loose].tolist(),
                                  packets[loose].tolist(), bytes_[loose].tolist(), strict=True):
                k = (i, names.get(r, f"reason{r}"))
                old = untracked.get(k, (0, 0))
                untracked[k] = (old[0] + p, old[1] + b)
        tracked = moved & ((version == 4) | (version == 6))
        # the keys copied out of the read buffer as whole records (a structured copy goes field by
        # field: several times slower)
        k = keys.view(np.dtype((np.void, keys.dtype.itemsize)))[tracked].view(keys.dtype)
        p, b = packets[tracked], bytes_[tracked]
        counted = int(p.sum())
        if len(k):
            n = self.sampling
            parts.append((k, p.astype(np.int64) * n, b.astype(np.int64) * n))
        return counted

    def close(self) -> None:
        """Detach everywhere and release the program and maps; idempotent."""
        if self._closed:
            return
        self.egress.close()
        self.links.close()
        self._c.close()
        self._closed = True

    def __enter__(self) -> XdpProgram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


