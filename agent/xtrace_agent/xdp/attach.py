"""Which XDP program may sit on an interface: attach, detach, and what we find already there.

The policy (docs/architecture.md, "One XDP program per interface"):
- another tool's program is never replaced;
- a program of a live XTrace agent is never replaced either: the second agent is told the
  interface and the owner's pid (AgentConflict, exit 1);
- a program left by an XTrace agent that died (netlink XDP outlives its process) is replaced
  atomically, and the agent says so.

Ownership lives in the program's own `state` map (struct xt_state, bpf/xtrace.h): the agent that
loaded it writes its pid, pid namespace, process start time and, every interval, a heartbeat.
Another agent reaches that map from the attached program's id, so nothing needs pinning.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable

from xtrace_agent import environ
from xtrace_agent.errors import AgentFailure
from xtrace_agent.xdp import libbpf
from xtrace_agent.xdp.compiler import MapInfo

log = logging.getLogger("xtrace.xdp")

PROG_PREFIX = "xtrace_"  # names of our programs: how an XTrace agent's program is recognised
STATE_MAP = "state"
OWNER, UNATTRIBUTED = 0, 1  # XT_STATE_OWNER, XT_STATE_UNATTRIBUTED (bpf/xtrace.h)
# An owner in another pid namespace (another pod) cannot be looked up in /proc: it is alive while
# its heartbeat is younger than this many of its intervals (plus a fixed grace for a slow one).
HEARTBEAT_INTERVALS = 3
HEARTBEAT_GRACE_NS = 10 * 10**9


class AttachError(AgentFailure):
    """The program could not be attached to one interface (one-line message)."""


class AgentConflict(AttachError):
    """A live XTrace agent watches the interface already."""


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def pod_id(env=None) -> int:
    """A 64-bit id of the pod this process runs in (POD_NAMESPACE/POD_NAME), 0 outside a pod."""
    env = os.environ if env is None else env
    name, namespace = environ.POD_NAME.raw(env), environ.POD_NAMESPACE.raw(env)
    if not name:
        return 0
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def pidns(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def start_time(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return int(stat[stat.rindex(b")") + 2:].split()[19])


class Owner(ctypes.Structure):
    """struct xt_state as the agent writes its element OWNER (the layout is checked against the
    compile child's report before use)."""

    _fields_ = [("pid", ctypes.c_uint64), ("pidns", ctypes.c_uint64), ("start_time", ctypes.c_uint64),
                ("heartbeat_ns", ctypes.c_uint64), ("interval_ns", ctypes.c_uint64), ("pod", ctypes.c_uint64),
                ("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]

    @classmethod
    def check(cls, info: MapInfo) -> None:
        reported = {f.name: (f.offset, f.size) for f in info.value_fields}
        ours = {name: (getattr(cls, name).offset, getattr(cls, name).size) for name, _ in cls._fields_}
        if reported != ours or info.value_size != ctypes.sizeof(cls):
            raise AgentFailure(f"struct xt_state in bpf/xtrace.h is {reported}, the agent expects {ours}")

    def who(self) -> str:
        """The owner as a user can find it: a pid from another pid namespace (another container) says so."""
        try:
            mine = pidns() == self.pidns
        except OSError:
            mine = False
        return f"pid {self.pid}" if mine else f"pid {self.pid} in another pid namespace, e.g. another container"

    def alive(self, now_ns: int) -> bool:
        """Whether the agent this record names is running."""
        if not self.pid:
            return False  # loaded but never claimed: nobody to ask
        try:
            same_namespace = pidns() == self.pidns
        except OSError:
            same_namespace = False
        if same_namespace:
            return start_time(self.pid) == self.start_time  # a reused pid has another start time
        if self.pod and self.pod == pod_id():
            return False  # this pod's previous container (a restart gets a new pid namespace)
        return now_ns - self.heartbeat_ns < HEARTBEAT_INTERVALS * self.interval_ns + HEARTBEAT_GRACE_NS


def read_state(map_fd: int, index: int) -> Owner:
    rec = Owner()
    key = ctypes.c_uint32(index)
    libbpf.lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(rec))
    return rec


def owner_of(prog_id: int) -> Owner | None:
    """The owner record of another loaded XTrace program (None if it has no `state` map)."""
    try:
        prog_fd = libbpf.prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        for map_id in libbpf.prog_map_ids(prog_fd):
            try:
                fd = libbpf.map_fd_by_id(map_id)
            except OSError:
                continue
            try:
                info = libbpf.map_info(fd)
                if info.name.decode(errors="replace") == STATE_MAP and info.value_size == ctypes.sizeof(Owner):
                    return read_state(fd, OWNER)
            finally:
                os.close(fd)
    finally:
        os.close(prog_fd)
    return None


class Attachments:
    """Our program on the interfaces it watches, by ifindex."""

    def __init__(self, prog_fds: dict[str, int], prog_ids: dict[str, int], eth: str, ipoib: str,
                 on_attach: Callable[[int], None] = lambda ifindex: None):
        self._fds = prog_fds
        self.prog_ids = prog_ids
        self._names = (eth, ipoib)
        self._on_attach = on_attach
        self._attached: dict[int, tuple[str, str, int]] = {}  # ifindex -> (mode, ifname, prog fd)

    def attach(self, ifname: str, ifindex: int, infiniband: bool, mode: str) -> str:
        """Attach to one interface; returns the mode used ('native' or 'generic')."""
        if mode not in ("auto", "native", "generic"):
            raise AttachError(f"{ifname}: unknown XDP attach mode {mode!r} (auto, native or generic)")
        name = self._names[1 if infiniband else 0]
        fd, our_id = self._fds[name], self.prog_ids[name]
        try:
            cur_id, cur_mode = libbpf.xdp_query(ifindex)
        except OSError as e:
            raise AttachError(f"{ifname}: cannot query its XDP program: {e.strerror}") from None
        if cur_id == our_id and cur_mode in ("native", "generic"):
            self._attached[ifindex] = (cur_mode, ifname, fd)
            self._on_attach(ifindex)
            return cur_mode
        stale_fd, cur_name = None, ""
        if cur_id:
            cur_name = libbpf.prog_name_by_id(cur_id)
            if not cur_name.startswith(PROG_PREFIX) or cur_id in self.prog_ids.values():
                raise AttachError(
                    f"{ifname} already has another tool's XDP program (id {cur_id}, name {cur_name or '?'}): "
                    f"XTrace never replaces it; detach it first (ip link set dev {ifname} xdp off)")
            owner = owner_of(cur_id)
            if owner is not None and owner.alive(boottime_ns()):
                raise AgentConflict(
                    f"{ifname} is watched by another XTrace agent ({owner.who()}, XDP program {cur_id}): "
                    "one agent per interface; stop that agent or choose another interface")
            try:
                stale_fd = libbpf.prog_fd_by_id(cur_id)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise AttachError(f"{ifname}: cannot open the leftover XDP program {cur_id}: {e.strerror}") \
                        from None
        # the untracked entries first: a packet in the first instant must find them
        self._on_attach(ifindex)
        try:
            used = self._attach(ifname, ifindex, fd, mode, stale_fd, cur_mode if stale_fd is not None else None)
        finally:
            if stale_fd is not None:
                os.close(stale_fd)
        if stale_fd is not None:
            log.warning("%s: replaced XDP program %d (%s) left by a previous XTrace agent that is gone",
                        ifname, cur_id, cur_name)
        self._attached[ifindex] = (used, ifname, fd)
        return used

    def _attach(self, ifname: str, ifindex: int, fd: int, mode: str, stale_fd: int | None,
                stale_mode: str | None) -> str:
        if stale_fd is not None and stale_mode not in (mode, None) and mode != "auto":
            # the leftover runs in the other mode: remove exactly it, then attach fresh
            self._detach_exact(ifname, ifindex, stale_fd, stale_mode)
            stale_fd = None
        tries = [stale_mode] if stale_fd is not None else (["native", "generic"] if mode == "auto" else [mode])
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

    def close(self) -> None:
        detach_all(self.detach, self._attached, "XDP")


def detach_all(detach: Callable[[int], None], ifindexes, what: str) -> None:
    """Detach from every interface; on the way out, so a failure is reported and the rest go on."""
    for ifindex in list(ifindexes):
        try:
            detach(ifindex)
        except Exception as e:
            log.warning("%s detach from ifindex %d failed: %s", what, ifindex, e)
