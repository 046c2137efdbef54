"""ctypes bindings to the few libbpf.so.1 calls the agent needs once the program is loaded.

Written against Debian's libbpf1 1.1.2. Every call raises OSError(errno) on failure; the batch
calls return how many entries they produced (ENOENT, "no more entries", is not an error there).
"""

from __future__ import annotations

import ctypes
import errno
import os
from ctypes import POINTER, byref, c_char, c_int, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

# bpf_xdp_query attach_mode values (enum XDP_ATTACHED_*)
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)
MODE_NAMES = {XDP_ATTACHED_DRV: "native", XDP_ATTACHED_SKB: "generic", XDP_ATTACHED_HW: "offload"}
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE, "offload": XDP_FLAGS_HW_MODE}


# enum bpf_attach_type: tcx (Linux 6.6+; libbpf 1.1 predates it, the kernel takes the number)
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
# enum bpf_tc_attach_point, and bpf_tc_attach's flags (libbpf's netlink clsact/cls_bpf helpers)
BPF_TC_INGRESS, BPF_TC_EGRESS = 1 << 0, 1 << 1
BPF_TC_F_REPLACE = 1 << 0


class TcHook(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class TcOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("prog_fd", c_int), ("flags", c_uint32), ("prog_id", c_uint32),
                ("handle", c_uint32), ("priority", c_uint32)]


class ProgQueryOpts(ctypes.Structure):
    """struct bpf_prog_query_opts as libbpf 1.1 has it (newer fields are optional)."""

    _fields_ = [("sz", c_size_t), ("query_flags", c_uint32), ("attach_flags", c_uint32),
                ("prog_ids", c_void_p), ("prog_cnt", c_uint32), ("prog_attach_flags", c_void_p)]


class XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("old_prog_fd", c_int)]


class XdpQueryOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("prog_id", c_uint32), ("drv_prog_id", c_uint32), ("hw_prog_id", c_uint32),
                ("skb_prog_id", c_uint32), ("attach_mode", c_uint8)]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to the name (the kernel accepts a shorter info_len)."""

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", c_uint8 * 8), ("jited_prog_len", c_uint32),
                ("xlated_prog_len", c_uint32), ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
                ("load_time", c_uint64), ("created_by_uid", c_uint32), ("nr_map_ids", c_uint32),
                ("map_ids", c_uint64), ("name", c_char * 16)]


class BpfMapInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_map_info, up to the name (compiler.MapInfo is our own
    description of a map, from the compile)."""

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("key_size", c_uint32), ("value_size", c_uint32),
                ("max_entries", c_uint32), ("map_flags", c_uint32), ("name", c_char * 16)]


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p), ("data_size_in", c_uint32),
                ("data_size_out", c_uint32), ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32), ("retval", c_uint32), ("repeat", c_int),
                ("duration", c_uint32), ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


class XdpMd(ctypes.Structure):
    _fields_ = [("data", c_uint32), ("data_end", c_uint32), ("data_meta", c_uint32),
                ("ingress_ifindex", c_uint32), ("rx_queue_index", c_uint32), ("egress_ifindex", c_uint32)]


_lib = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1, with argument types declared (loaded on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        so = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise OSError(errno.ENOENT, f"libbpf.so.1 not found (install libbpf1): {e}") from None
    u32p = POINTER(c_uint32)
    for name in ("bpf_map_lookup_and_delete_batch", "bpf_map_lookup_batch"):
        getattr(so, name).argtypes = [c_int, c_void_p, c_void_p, c_void_p, c_void_p, u32p, c_void_p]
    so.bpf_map_update_batch.argtypes = [c_int, c_void_p, c_void_p, u32p, c_void_p]
    so.bpf_map_lookup_elem.argtypes = [c_int, c_void_p, c_void_p]
    so.bpf_map_delete_elem.argtypes = [c_int, c_void_p]
    so.bpf_map_update_elem.argtypes = [c_int, c_void_p, c_void_p, c_uint64]
    so.bpf_map_get_fd_by_id.argtypes = [c_uint32]
    so.bpf_xdp_attach.argtypes = [c_int, c_int, c_uint32, c_void_p]
    so.bpf_xdp_detach.argtypes = [c_int, c_uint32, c_void_p]
    so.bpf_xdp_query.argtypes = [c_int, c_int, c_void_p]
    so.bpf_prog_get_fd_by_id.argtypes = [c_uint32]
    so.bpf_obj_get_info_by_fd.argtypes = [c_int, c_void_p, u32p]
    so.bpf_prog_test_run_opts.argtypes = [c_int, c_void_p]
    so.libbpf_num_possible_cpus.argtypes = []
    so.bpf_link_create.argtypes = [c_int, c_int, c_int, c_void_p]
    so.bpf_prog_query_opts.argtypes = [c_int, c_int, c_void_p]
    for name in ("bpf_tc_attach", "bpf_tc_detach", "bpf_tc_query"):
        getattr(so, name).argtypes = [c_void_p, c_void_p]
    so.bpf_tc_hook_create.argtypes = [c_void_p]
    so.bpf_raw_tracepoint_open.argtypes = [ctypes.c_char_p, c_int]
    _lib = so
    return so


def _check(ret: int, what: str) -> int:
    if ret < 0:
        code = -ret  # libbpf 1.x returns -errno (and sets errno to the same)
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return ret


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def _batch_step(fn, name: str, fd: int, in_token, out_token, keys, values, count: int) -> tuple[int, bool]:
    """One batch call: (entries produced, True when the map has no more entries after them)."""
    n = c_uint32(count)
    ret = fn(fd, in_token, out_token, keys, values, byref(n), None)
    if ret < 0:
        if -ret == errno.ENOENT:
            return n.value, True
        raise OSError(-ret, f"{name}: {os.strerror(-ret)}")
    return n.value, False


def lookup_and_delete_batch(fd: int, in_token, out_token, keys, values, count: int) -> tuple[int, bool]:
    """Read and delete up to `count` entries (each hash bucket under its lock), resuming after
    `in_token` (None: from the start); the kernel stores where to resume in `out_token`.

    `values` receives, per entry, what user space sees of a value (per-CPU maps: one
    round_up(value_size, 8) slot per possible CPU). Returns (entries, no more entries).
    """
    return _batch_step(lib().bpf_map_lookup_and_delete_batch, "bpf_map_lookup_and_delete_batch", fd,
                       in_token, out_token, keys, values, count)


def lookup_batch(fd: int, in_token, out_token, keys, values, count: int) -> tuple[int, bool]:
    """As lookup_and_delete_batch, without deleting (the drop program's cumulative drops_full)."""
    return _batch_step(lib().bpf_map_lookup_batch, "bpf_map_lookup_batch", fd, in_token, out_token, keys, values,
                       count)


def update_batch(fd: int, keys, values, count: int) -> int:
    n = c_uint32(count)
    _check(lib().bpf_map_update_batch(fd, keys, values, byref(n), None), "bpf_map_update_batch")
    return n.value


def lookup_elem(fd: int, key, value) -> bool:
    """Fill `value` for `key`; False when the key is absent."""
    ret = lib().bpf_map_lookup_elem(fd, key, value)
    if ret < 0:
        err = -ret
        if err == errno.ENOENT:
            return False
        raise OSError(err, f"bpf_map_lookup_elem: {os.strerror(err)}")
    return True


BPF_ANY, BPF_NOEXIST = 0, 1


def delete_elem(fd: int, key) -> bool:
    """Delete one entry; False when it was absent."""
    ret = lib().bpf_map_delete_elem(fd, key)
    if ret < 0 and -ret == errno.ENOENT:
        return False
    _check(ret, "bpf_map_delete_elem")
    return True


def update_elem(fd: int, key, value, flags: int = BPF_ANY) -> bool:
    """Write one entry; False when flags is BPF_NOEXIST and the key exists already.

    On a map-in-map the kernel returns only after every program run that could still see the
    previous inner map has finished (an RCU grace period): the swap of the flow tables rests on it."""
    ret = lib().bpf_map_update_elem(fd, key, value, flags)
    if ret < 0 and -ret == errno.EEXIST and flags == BPF_NOEXIST:
        return False
    _check(ret, "bpf_map_update_elem")
    return True


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id({map_id})")


def _obj_info(fd: int, info):
    """Fill `info` (the head of a bpf_*_info struct, optionally with pointers set) for fd."""
    size = c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, byref(info), byref(size)), "bpf_obj_get_info_by_fd")
    return info


def map_info(fd: int) -> BpfMapInfo:
    return _obj_info(fd, BpfMapInfo())


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps a loaded program uses."""
    first = prog_info(fd)
    ids = (c_uint32 * max(1, first.nr_map_ids))()
    info = _obj_info(fd, ProgInfo(nr_map_ids=first.nr_map_ids, map_ids=ctypes.addressof(ids)))
    return list(ids[:min(first.nr_map_ids, info.nr_map_ids)])


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int | None = None) -> None:
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd or 0)
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, byref(opts)), f"bpf_xdp_attach(ifindex {ifindex})")


def xdp_detach(ifindex: int, flags: int, old_prog_fd: int | None = None) -> None:
    """Detach; with old_prog_fd only if that program is still the one attached (else EEXIST)."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd or 0)
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    _check(lib().bpf_xdp_detach(ifindex, flags, byref(opts)), f"bpf_xdp_detach(ifindex {ifindex})")


def xdp_query(ifindex: int) -> tuple[int, str | None]:
    """(program id, 'native'|'generic'|'offload') of the XDP program on ifindex; (0, None) when none."""
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    _check(lib().bpf_xdp_query(ifindex, 0, byref(opts)), f"bpf_xdp_query(ifindex {ifindex})")
    if opts.attach_mode == XDP_ATTACHED_NONE:
        return 0, None
    if opts.attach_mode == XDP_ATTACHED_MULTI:
        for pid, mode in ((opts.drv_prog_id, "native"), (opts.skb_prog_id, "generic"), (opts.hw_prog_id, "offload")):
            if pid:
                return pid, mode
    return opts.prog_id, MODE_NAMES.get(opts.attach_mode)


def tcx_attach(prog_fd: int, ifindex: int, attach_type: int = BPF_TCX_EGRESS) -> int:
    """A tcx link (after the programs already there); returns the link's fd. The program stays
    attached while the fd is open: closing it (or the process ending) detaches exactly it."""
    return _check(lib().bpf_link_create(prog_fd, ifindex, attach_type, None),
                  f"bpf_link_create(ifindex {ifindex}, tcx)")


def tcx_query(ifindex: int, attach_type: int = BPF_TCX_EGRESS) -> list[int]:
    """Ids of the programs on the interface's tcx hook, in the order they run (EINVAL: no tcx)."""
    ids = (c_uint32 * 64)()
    opts = ProgQueryOpts(sz=ctypes.sizeof(ProgQueryOpts), prog_ids=ctypes.addressof(ids), prog_cnt=64)
    _check(lib().bpf_prog_query_opts(ifindex, attach_type, byref(opts)), f"bpf_prog_query(ifindex {ifindex}, tcx)")
    return list(ids[:min(opts.prog_cnt, 64)])


def _tc_hook(ifindex: int) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=BPF_TC_EGRESS)


def tc_attach(prog_fd: int, ifindex: int, handle: int, priority: int, replace: bool = False) -> None:
    """A direct-action cls_bpf filter on the clsact egress hook (clsact created if missing)."""
    hook = _tc_hook(ifindex)
    ret = lib().bpf_tc_hook_create(byref(hook))
    if ret < 0 and -ret != errno.EEXIST:
        _check(ret, f"clsact qdisc on ifindex {ifindex}")
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, handle=handle, priority=priority,
                  flags=BPF_TC_F_REPLACE if replace else 0)
    _check(lib().bpf_tc_attach(byref(hook), byref(opts)), f"bpf_tc_attach(ifindex {ifindex})")


def tc_query(ifindex: int, handle: int, priority: int) -> int:
    """Id of the program in the egress filter (handle, priority); 0 when there is none."""
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=handle, priority=priority)
    ret = lib().bpf_tc_query(byref(_tc_hook(ifindex)), byref(opts))
    if ret < 0 and -ret in (errno.ENOENT, errno.EINVAL):
        return 0
    _check(ret, f"bpf_tc_query(ifindex {ifindex})")
    return opts.prog_id


def tc_detach(ifindex: int, handle: int, priority: int) -> None:
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=handle, priority=priority)
    _check(lib().bpf_tc_detach(byref(_tc_hook(ifindex)), byref(opts)), f"bpf_tc_detach(ifindex {ifindex})")


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attach a raw tracepoint program; returns the attachment's fd (closing it detaches)."""
    return _check(lib().bpf_raw_tracepoint_open(name.encode(), prog_fd), f"bpf_raw_tracepoint_open({name})")


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


def prog_info(fd: int) -> ProgInfo:
    return _obj_info(fd, ProgInfo())


def prog_name_by_id(prog_id: int) -> str:
    """The name of any loaded program, by id ('' if it vanished meanwhile)."""
    try:
        fd = prog_fd_by_id(prog_id)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return ""
        raise
    try:
        return prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def raw_tp_test_run(prog_fd: int, args: tuple[int, ...]) -> int:
    """Run a raw tracepoint program once with ctx->args = args (BPF_PROG_TEST_RUN runs those on the
    calling CPU and takes no repeat); returns its return value."""
    ctx = (c_uint64 * len(args))(*args)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), ctx_in=ctypes.addressof(ctx), ctx_size_in=ctypes.sizeof(ctx))
    _check(lib().bpf_prog_test_run_opts(prog_fd, byref(opts)), "bpf_prog_test_run_opts")
    return opts.retval


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, ifindex: int | None = None,
                  skb_ifindex: int | None = None) -> tuple[int, int]:
    """(return value, mean duration in ns) of running the program `repeat` times on `data`
    (ifindex: an XDP program's ingress interface; skb_ifindex: a TC program's device)."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(buf), data_size_in=len(data),
                       repeat=repeat)
    if ifindex is not None:
        md = XdpMd(data_end=len(data), ingress_ifindex=ifindex)
        opts.ctx_in = ctypes.addressof(md)
        opts.ctx_size_in = ctypes.sizeof(md)
    elif skb_ifindex is not None:
        # struct __sk_buff up to ifindex: the kernel takes the device from ifindex for sched_cls
        skb = (c_uint32 * 11)()
        skb[10] = skb_ifindex
        opts.ctx_in = ctypes.addressof(skb)
        opts.ctx_size_in = ctypes.sizeof(skb)
    _check(lib().bpf_prog_test_run_opts(prog_fd, byref(opts)), "bpf_prog_test_run_opts")
    return opts.retval, opts.duration
