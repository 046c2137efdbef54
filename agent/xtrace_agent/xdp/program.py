"""The loaded XDP program: attach/detach on interfaces, and the drain of its counters.

This is what the collector uses. The program and maps come from the compile child as fds; the
agent process never imports bcc. Map layouts come from the child's report (as BCC's ctypes saw the
C structs), names of traffic types and stats from bpf/xtrace.h, so no layout is declared twice.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import ipaddress
import logging
import os
import re
import socket
from functools import partial
from typing import NamedTuple

import numpy as np

from xtrace_agent.errors import AgentFailure
from xtrace_agent.xdp import compiler, libbpf
from xtrace_agent.xdp.compiler import Compiled, Field, MapInfo

log = logging.getLogger("xtrace.xdp")

PROG_PREFIX = "xtrace_"  # names of our programs: how a crashed agent's leftover is recognised
ETH_PROG, IPOIB_PROG = compiler.PROGRAMS
# Per-CPU value buffers of one drain step are capped at this size (at 64 CPUs, a whole 65536-flow
# table would need 64 MiB at once; chunks keep the agent's RSS flat).
DRAIN_CHUNK_BYTES = 8 << 20


class FlowKey(NamedTuple):
    """A decoded flow key; src_ip/dst_ip in canonical text (RFC 5952, as the ipaddress module prints)."""

    ifindex: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    traffic_type: str  # "ethernet" | "roce" | "infiniband"
    rdma_opcode: int
    dest_qp: int


class Drained(NamedTuple):
    """Everything counted since the previous drain."""

    flows: dict[FlowKey, tuple[int, int]]  # (packets, bytes), summed over CPUs
    interfaces: dict[int, tuple[int, int]]  # ifindex -> (packets, bytes)
    stats: dict[str, int]  # enum xt_stat names in lower case, plus "evicted"


class AttachError(AgentFailure):
    """The program could not be attached to one interface (one-line message)."""


# ---- what xtrace.h says -------------------------------------------------------------------------

def header_constants(path: str | None = None) -> tuple[dict[int, str], list[str]]:
    """(traffic_type value -> label, stat names by enum xt_stat index) parsed from xtrace.h."""
    text = open(path or compiler.bpf_dir() / "xtrace.h").read()
    types = {int(v): n.lower() for n, v in re.findall(r"#define\s+XT_TRAFFIC_(\w+)\s+(\d+)", text)}
    enum = re.search(r"enum\s+xt_stat\s*\{(.*?)\}", text, re.S)
    if not types or not enum:
        raise AgentFailure(f"{path or 'bpf/xtrace.h'}: traffic types or enum xt_stat not found")
    body = re.sub(r"/\*.*?\*/", "", enum.group(1), flags=re.S)
    names, index = [], 0
    for item in (i.strip() for i in body.split(",")):
        m = re.match(r"XT_STAT_(\w+)(?:\s*=\s*(\d+))?$", item)
        if not m or m.group(1) == "MAX":
            continue
        index = int(m.group(2)) if m.group(2) else index
        names.extend([""] * (index + 1 - len(names)))
        names[index] = m.group(1).lower()
        index += 1
    return types, names


def dtype_of(fields: tuple[Field, ...], itemsize: int) -> np.dtype:
    """A numpy structured dtype for a C struct as the compile child reported it.

    Arrays (addresses) become raw bytes ('V<n>'): numpy's tolist() turns a column of them into
    Python bytes objects in one C loop."""
    formats = [f"V{f.size}" if f.count > 1 else f"=u{f.size}" for f in fields]
    return np.dtype({"names": [f.name for f in fields], "formats": formats,
                     "offsets": [f.offset for f in fields], "itemsize": itemsize})


class _Buffers:
    """Reusable key/value buffers for batch reads of one map."""

    def __init__(self, info: MapInfo, ncpu: int, per_cpu: bool):
        self.info = info
        self.slot = (info.value_size + 7) // 8 * 8  # the kernel rounds each CPU's value up to 8 bytes
        self.value_bytes = self.slot * (ncpu if per_cpu else 1)
        self.chunk = max(1, min(info.max_entries, DRAIN_CHUNK_BYTES // self.value_bytes))
        self.keys = ctypes.create_string_buffer(self.chunk * info.key_size)
        self.values = ctypes.create_string_buffer(self.chunk * self.value_bytes)
        self.tokens = (ctypes.create_string_buffer(max(8, info.key_size)),
                       ctypes.create_string_buffer(max(8, info.key_size)))
        self.key_dtype = dtype_of(info.key_fields, info.key_size)
        self.ncpu = ncpu if per_cpu else 1

    def read(self, delete: bool):
        """Yield (keys structured array, values uint64 array [n, cpus, words]) chunk by chunk."""
        step = libbpf.lookup_and_delete_batch if delete else libbpf.lookup_batch
        in_token, out_token = None, self.tokens[0]
        words = self.slot // 8
        while True:
            n, done = step(self.info.fd, in_token, out_token, ctypes.addressof(self.keys),
                           ctypes.addressof(self.values), self.chunk)
            if n:
                keys = np.frombuffer(self.keys, dtype=self.key_dtype, count=n).copy()
                vals = np.frombuffer(self.values, dtype=np.uint64, count=n * self.ncpu * words)
                yield keys, vals.reshape(n, self.ncpu, words)
            if done:
                return
            # the token we got is where the next call resumes; the other buffer receives the next one
            in_token = out_token
            out_token = self.tokens[1] if out_token is self.tokens[0] else self.tokens[0]


class _Cumulative:
    """Deltas of counters the kernel only ever increases (entries may vanish and come back at 0)."""

    def __init__(self):
        self.prev: dict = {}

    def deltas(self, current: dict) -> dict:
        out = {}
        for k, v in current.items():
            old = self.prev.get(k)
            if old is None or any(a < b for a, b in zip(v, old, strict=True)):
                out[k] = v
            else:
                out[k] = tuple(a - b for a, b in zip(v, old, strict=True))
        self.prev = current
        return out


class XdpProgram:
    """The XDP program loaded in the kernel with its maps, attached to any number of interfaces."""

    def __init__(self, compiled: Compiled, sampling: int = 1):
        self._c = compiled
        self.sampling = sampling
        self.traffic_types, self.stat_names = header_constants()
        self.ncpu = libbpf.possible_cpus()
        self.prog_ids = {name: libbpf.prog_info(fd).id for name, fd in compiled.programs.items()}
        self._attached: dict[int, tuple[str, str, int]] = {}  # ifindex -> (mode, ifname, prog fd)
        maps = compiled.maps
        self._flows = _Buffers(maps["flows"], self.ncpu, per_cpu=True)
        self._ifaces = [_Buffers(maps[n], self.ncpu, per_cpu=True) for n in ("iface_slots", "ifaces") if n in maps]
        self._stats = maps["stats"]
        self._stat_buf = (ctypes.c_uint64 * self.ncpu)()
        self._iface_cum = _Cumulative()
        self._stat_prev = [0] * len(self.stat_names)
        self._drained_total = 0
        self._evicted_total = 0
        self._closed = False
        fields = {f.name: f for f in maps["flows"].value_fields}
        self._packets_word, self._bytes_word = fields["packets"].offset // 8, fields["bytes"].offset // 8

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, xdp) -> XdpProgram:
        """Compile and load in the child process (AgentFailure with one line on failure)."""
        compiled = compiler.compile_and_load(xdp.flow_table_size, xdp.sampling)
        try:
            return cls(compiled, xdp.sampling)
        except (OSError, KeyError) as e:
            compiled.close()
            raise AgentFailure(f"the loaded XDP program is not usable: {e}") from None

    @property
    def programs(self) -> dict[str, int]:
        """Program fds by name (xtrace_eth, xtrace_ipoib)."""
        return dict(self._c.programs)

    @property
    def maps(self) -> dict[str, MapInfo]:
        return dict(self._c.maps)

    def prog_fd(self, infiniband: bool = False) -> int:
        return self._c.programs[IPOIB_PROG if infiniband else ETH_PROG]

    # ---- attachment -----------------------------------------------------------------------
    def attach(self, ifname: str, ifindex: int, infiniband: bool, mode: str) -> str:
        """Attach to one interface; returns the mode used ('native' or 'generic').

        Never replaces another tool's program; replaces (atomically) one left by a dead agent."""
        if mode not in ("auto", "native", "generic"):
            raise AttachError(f"{ifname}: unknown XDP attach mode {mode!r} (auto, native or generic)")
        fd = self.prog_fd(infiniband)
        our_id = self.prog_ids[IPOIB_PROG if infiniband else ETH_PROG]
        try:
            cur_id, cur_mode = libbpf.xdp_query(ifindex)
        except OSError as e:
            raise AttachError(f"{ifname}: cannot query its XDP program: {e.strerror}") from None
        stale_fd = None
        if cur_id == our_id and cur_mode in ("native", "generic"):
            self._attached[ifindex] = (cur_mode, ifname, fd)
            return cur_mode
        if cur_id:
            name = libbpf.prog_name_by_id(cur_id)
            if not name.startswith(PROG_PREFIX) or cur_id in self.prog_ids.values():
                raise AttachError(
                    f"{ifname} already has another tool's XDP program (id {cur_id}, name {name or '?'}): "
                    f"XTrace never replaces it; detach it first (ip link set dev {ifname} xdp off)")
            try:
                stale_fd = libbpf.prog_fd_by_id(cur_id)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise AttachError(f"{ifname}: cannot open the leftover XDP program {cur_id}: {e.strerror}") \
                        from None
        try:
            used = self._attach(ifname, ifindex, fd, mode, stale_fd, cur_mode if stale_fd is not None else None)
        finally:
            if stale_fd is not None:
                os.close(stale_fd)
        if stale_fd is not None:
            log.warning("%s: replaced XDP program %d (%s) left by a previous XTrace agent", ifname, cur_id, name)
        self._attached[ifindex] = (used, ifname, fd)
        return used

    def _attach(self, ifname: str, ifindex: int, fd: int, mode: str, stale_fd: int | None,
                stale_mode: str | None) -> str:
        if stale_fd is not None and stale_mode not in (mode, None) and mode != "auto":
            # the leftover runs in the other mode: remove exactly it, then attach fresh
            self._detach_exact(ifname, ifindex, stale_fd, stale_mode)
            stale_fd = None
        if stale_fd is not None:
            tries = [stale_mode]
        else:
            tries = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        for m in tries:
            flags = libbpf.MODE_FLAGS[m] | (0 if stale_fd is not None else libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
            try:
                libbpf.xdp_attach(ifindex, fd, flags, stale_fd)
            except OSError as e:
                errors.append((m, e))
                if e.errno in (errno.ENODEV, errno.EBUSY, errno.EEXIST, errno.EPERM, errno.EACCES):
                    break  # not a matter of mode: falling back would not help
                continue
            if m == "generic" and mode == "auto" and errors:
                log.warning("%s: native XDP unavailable (%s); attached in generic mode, slower",
                            ifname, errors[0][1].strerror)
            return m
        m, e = errors[-1]
        if e.errno == errno.ENODEV:
            raise AttachError(f"{ifname}: interface not found (ifindex {ifindex})")
        if e.errno in (errno.EBUSY, errno.EEXIST):
            raise AttachError(f"{ifname}: another XDP program was attached meanwhile; XTrace never replaces it")
        if e.errno in (errno.EPERM, errno.EACCES):
            raise AttachError(f"{ifname}: no permission to attach XDP (needs CAP_NET_ADMIN and CAP_BPF)")
        raise AttachError(f"{ifname}: cannot attach XDP in {m} mode: {e.strerror}")

    def _detach_exact(self, ifname: str, ifindex: int, fd: int, mode: str | None) -> None:
        try:
            libbpf.xdp_detach(ifindex, libbpf.MODE_FLAGS.get(mode or "", 0), fd)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EEXIST, errno.ENOENT, errno.EINVAL):
                return  # the link is gone, or the program attached is no longer this one
            raise AttachError(f"{ifname}: cannot detach XDP: {e.strerror}") from None

    def detach(self, ifindex: int) -> None:
        """Detach from ifindex if our program is still the one attached there; never raises for a
        link that is gone."""
        entry = self._attached.pop(ifindex, None)
        if entry is None:
            return
        mode, ifname, fd = entry
        try:
            cur_id, cur_mode = libbpf.xdp_query(ifindex)
        except OSError:
            return
        if cur_id not in self.prog_ids.values():
            return
        try:
            self._detach_exact(ifname, ifindex, fd, cur_mode or mode)
        except AttachError as e:
            log.warning("%s", e)

    def attached(self) -> dict[int, str]:
        """ifindex -> mode, for links where our program is still attached (checked in the kernel)."""
        for ifindex in list(self._attached):
            try:
                cur_id, cur_mode = libbpf.xdp_query(ifindex)
            except OSError:
                cur_id, cur_mode = 0, None
            if cur_id not in self.prog_ids.values():
                del self._attached[ifindex]
            elif cur_mode and cur_mode != self._attached[ifindex][0]:
                self._attached[ifindex] = (cur_mode, *self._attached[ifindex][1:])
        return {ifindex: entry[0] for ifindex, entry in self._attached.items()}

    # ---- counters -------------------------------------------------------------------------
    def drain(self) -> Drained:
        """Read and reset the flow table, and the deltas of interface totals and stats.

        Flows: batch lookup-and-delete, which copies and deletes each hash bucket under the bucket
        lock, so a packet is counted either in this drain or in a fresh entry for the next one.
        (The one residual window: a packet whose program already holds a pointer to the entry on
        another CPU while the bucket is deleted, a few ns; double-buffered tables have the same
        window at the switch and cost a second table.) Interface totals and stats are never reset:
        the kernel counters only grow and the deltas are taken here, which is exact."""
        stats = self._read_stats()
        flows: dict[FlowKey, tuple[int, int]] = {}
        drained = 0
        # 100k new tuples would trigger many collections that each walk the growing dict (2x slower)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for keys, vals in self._flows.read(delete=True):
                drained += len(keys)
                self._decode(keys, vals, flows)
        finally:
            if gc_was_enabled:
                gc.enable()
        self._drained_total += drained
        out = {name: stats[i] - self._stat_prev[i] for i, name in enumerate(self.stat_names) if name}
        self._stat_prev = stats
        # inserts read before the drain, so this is a lower bound that never over-reports
        inserts = stats[self.stat_names.index("flow_inserts")]
        evicted_total = max(self._evicted_total, inserts - self._drained_total)
        out["evicted"] = evicted_total - self._evicted_total
        self._evicted_total = evicted_total
        return Drained(flows, self._iface_cum.deltas(self._read_ifaces()), out)

    def _read_stats(self) -> list[int]:
        values = []
        for i in range(len(self.stat_names)):
            key = ctypes.c_uint32(i)
            found = libbpf.lookup_elem(self._stats.fd, ctypes.byref(key), self._stat_buf)
            values.append(sum(self._stat_buf) if found else 0)
        return values

    def _read_ifaces(self) -> dict[int, tuple[int, int]]:
        current: dict[int, tuple[int, int]] = {}
        for buf in self._ifaces:
            fields = {f.name: f for f in buf.info.value_fields}
            pw, bw = fields["packets"].offset // 8, fields["bytes"].offset // 8
            for keys, vals in buf.read(delete=False):
                sums = vals.sum(axis=1)
                idx = keys[keys.dtype.names[0]].tolist()
                for k, p, b in zip(idx, sums[:, pw].tolist(), sums[:, bw].tolist(), strict=True):
                    if p:
                        current[k] = (p, b)
        return current

    def _decode(self, keys: np.ndarray, vals: np.ndarray, out: dict) -> None:
        """Add one chunk of drained entries to `out`, as FlowKey -> (packets, bytes).

        Everything per flow runs in C loops (numpy, map, zip, dict): at 100k flows a Python-level
        loop alone costs about 200 ms, beyond the whole drain budget."""
        sums = vals.sum(axis=1)
        pw, bw = self._packets_word, self._bytes_word
        version = keys["ip_version"]
        for part in (version == 4, version != 4):
            if not part.any():
                continue
            k, s = keys[part], sums[part]
            texts = _v4_texts if version[part][0] == 4 else _v6_texts
            flow_keys = map(_new_flow_key, zip(
                k["ifindex"].tolist(), texts(k["src"]), texts(k["dst"]), k["src_port"].tolist(),
                k["dst_port"].tolist(), k["protocol"].tolist(),
                map(self.traffic_types.get, k["traffic_type"].tolist()),
                k["rdma_opcode"].tolist(), k["dest_qp"].tolist(), strict=True))
            chunk = dict(zip(flow_keys, zip(s[:, pw].tolist(), s[:, bw].tolist(), strict=True), strict=False))
            if out and not out.keys().isdisjoint(chunk):
                # a key seen in an earlier chunk (not expected from one pass of a hash map): add up
                for fk, (p, b) in chunk.items():
                    old = out.get(fk, (0, 0))
                    out[fk] = (old[0] + p, old[1] + b)
            else:
                out.update(chunk)

    def reset(self) -> None:
        """Forget all counts (tests, benchmarks): empties the flow table and re-bases the deltas."""
        for _ in self._flows.read(delete=True):
            pass
        self._stat_prev = self._read_stats()
        self._drained_total = self._stat_prev[self.stat_names.index("flow_inserts")]
        self._evicted_total = 0
        self._iface_cum.prev = self._read_ifaces()

    def close(self) -> None:
        """Detach everywhere and release the program and maps; idempotent."""
        if self._closed:
            return
        for ifindex in list(self._attached):
            try:
                self.detach(ifindex)
            except Exception as e:  # close runs on the way out: report, keep going
                log.warning("detach from ifindex %d failed: %s", ifindex, e)
        self._c.close()
        self._closed = True

    def __enter__(self) -> XdpProgram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_new_flow_key = partial(tuple.__new__, FlowKey)
_ZERO10 = b"\0" * 10


def ip_text(addr: bytes, version: int) -> str:
    """Canonical text of a 16-byte key address (IPv4 keys are IPv4-mapped)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    if addr[:10] == _ZERO10:
        # ::ffff:x and ::x forms: glibc prints them dotted, the ipaddress module does not
        return ipaddress.IPv6Address(addr).compressed
    return socket.inet_ntop(socket.AF_INET6, addr)


def _as_bytes(column: np.ndarray) -> np.ndarray:
    """A column of 16-byte addresses as an (n, 16) uint8 array."""
    return np.frombuffer(np.ascontiguousarray(column).tobytes(), dtype=np.uint8).reshape(len(column), -1)


class _TextCache(dict):
    """Packed address -> text; flows share few addresses, so most lookups are C-level dict hits."""

    LIMIT = 1 << 20

    def __init__(self, convert):
        super().__init__()
        self.convert = convert

    def __missing__(self, packed: bytes) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[packed] = self.convert(packed)
        return text


_V4_TEXT = _TextCache(socket.inet_ntoa)
_V6_TEXT = _TextCache(lambda packed: ip_text(packed, 6))


def _v4_texts(column: np.ndarray) -> list[str]:
    last4 = np.ascontiguousarray(_as_bytes(column)[:, 12:16]).view("V4").ravel().tolist()
    return list(map(_V4_TEXT.__getitem__, last4))


def _v6_texts(column: np.ndarray) -> list[str]:
    return list(map(_V6_TEXT.__getitem__, column.tolist()))


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, ifindex: int | None = None) -> tuple[int, int]:
    """(XDP action, mean duration in ns) of the program on `frame`, through BPF_PROG_TEST_RUN.

    Without ifindex the kernel presents the frame as received on the loopback device (ifindex 1)."""
    return libbpf.prog_test_run(prog_fd, frame, repeat, ifindex)


test_run.__test__ = False  # not a pytest test, despite the name
