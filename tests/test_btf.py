"""The BTF reader: on a small blob built here field by field (every kind it decodes, both byte
orders, anonymous members, bitfields, broken input) and on the running kernel's own BTF, checked
against bpftool's independent decoder of the same file."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from xtrace_agent.xdp import btf as B
from xtrace_agent.xdp.btf import Btf, BtfError
from xtrace_agent.xdp.events import FIELDS, Unavailable, kernel_layout


class Blob:
    """A BTF blob written as the kernel lays it out (Documentation/bpf/btf.rst)."""

    def __init__(self, order: str = "<"):
        self.o = order
        self.types = b""
        self.strings = b"\0"
        self.next_id = 1

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kind_flag: int = 0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack(self.o + "III", self.s(name), info, size_or_type) + extra
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self.add(name, B.INT, 0, size, struct.pack(self.o + "I", size * 8))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]], kind=B.STRUCT, kind_flag=0) -> int:
        extra = b"".join(struct.pack(self.o + "III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), size, extra, kind_flag)

    def bytes(self) -> bytes:
        hdr = struct.pack(self.o + "HBBIIIII", B.MAGIC, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + self.types + self.strings


def sample_blob(order: str = "<") -> bytes:
    b = Blob(order)
    i32 = b.int_("int", 4)
    u16 = b.int_("unsigned short", 2)
    ptr_void = b.add("", B.PTR, 0, 0)
    inner = b.struct_("", 8, [("a", i32, 0), ("b", i32, 32)])  # anonymous
    uni = b.struct_("", 8, [("", inner, 0), ("alias", i32, 0)], kind=B.UNION)  # anonymous union
    typedef = b.add("u16_t", B.TYPEDEF, 0, u16)
    const_u16 = b.add("", B.CONST, 0, typedef)
    arr = b.add("", B.ARRAY, 0, 0, struct.pack(order + "III", i32, i32, 6))
    outer = b.struct_("outer", 64, [("x", i32, 0), ("", uni, 64), ("port", const_u16, 128), ("p", ptr_void, 192),
                                    ("cb", arr, 256), ("named", inner, 448)])
    b.struct_("outer", 0, [])  # a forward-like empty duplicate must not shadow the definition
    # bitfields: kind_flag set, offset = (bits << 24) | bit offset
    b.struct_("flags", 4, [("lo", i32, (3 << 24) | 0), ("hi", i32, (5 << 24) | 3)], kind_flag=1)
    enum = b"".join(struct.pack(order + "II", b.s(n), v) for n, v in
                    (("SKB_NOT_DROPPED_YET", 0), ("SKB_CONSUMED", 1), ("SKB_DROP_REASON_NO_SOCKET", 3)))
    b.add("skb_drop_reason", B.ENUM, 3, 4, enum)
    e64 = struct.pack(order + "III", b.s("BIG"), 5, 1)
    b.add("wide", B.ENUM64, 1, 8, e64)
    ptr_outer = b.add("", B.PTR, 0, outer)
    proto = b.add("", B.FUNC_PROTO, 3, 0, struct.pack(order + "IIIIII", 0, ptr_void, 0, ptr_outer, 0, i32))
    fptr = b.add("", B.PTR, 0, proto)
    b.add("btf_trace_sample", B.TYPEDEF, 0, fptr)
    return b.bytes()


@pytest.mark.parametrize("order", ["<", ">"])
def test_members_through_anonymous_unions_typedefs_and_arrays(order):
    btf = Btf(sample_blob(order))
    assert btf.member("outer", "x") == B.Member(0, 4, False)
    assert btf.member("outer", "a") == B.Member(8, 4, False)  # inside the anonymous union's anonymous struct
    assert btf.member("outer", "b") == B.Member(12, 4, False)
    assert btf.member("outer", "named.b") == B.Member(60, 4, False)  # a path through a named member
    assert btf.member("outer", "alias") == B.Member(8, 4, False)
    assert btf.member("outer", "port") == B.Member(16, 2, False)  # const -> typedef -> u16
    assert btf.member("outer", "p") == B.Member(24, 8, False)
    assert btf.member("outer", "cb") == B.Member(32, 24, False)
    assert btf.member("flags", "lo").bitfield
    with pytest.raises(BtfError, match="no member nope"):
        btf.member("outer", "nope")
    with pytest.raises(BtfError, match="has no missing"):
        btf.member("missing", "x")


@pytest.mark.parametrize("order", ["<", ">"])
def test_enums_and_tracepoint_signature(order):
    btf = Btf(sample_blob(order))
    assert btf.enum("skb_drop_reason") == {0: "SKB_NOT_DROPPED_YET", 1: "SKB_CONSUMED", 3: "SKB_DROP_REASON_NO_SOCKET"}
    assert btf.enum("wide") == {(1 << 32) | 5: "BIG"}
    assert btf.tracepoint_args("sample") == ("struct outer *", "int")
    with pytest.raises(BtfError, match="btf_trace_absent"):
        btf.tracepoint_args("absent")


@pytest.mark.parametrize("cut", [0, 10, 23, 40, -3])
def test_broken_blobs_are_one_line_errors(cut):
    """Cut short anywhere: in the header, in the type section, in the strings."""
    with pytest.raises(BtfError):
        Btf(sample_blob()[:cut])


def test_bad_magic_version_and_kind():
    data = bytearray(sample_blob())
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\0" * 64)
    data[2] = 2
    with pytest.raises(BtfError, match="version 2"):
        Btf(bytes(data))
    data = bytearray(sample_blob())
    data[24 + 7] = 31  # the first type's kind byte (info's top byte, little-endian)
    with pytest.raises(BtfError, match="unknown kind"):
        Btf(bytes(data))
    with pytest.raises(BtfError, match="cannot read"):
        Btf.load("/nonexistent/vmlinux")


def test_layout_refuses_a_kernel_without_what_the_programs_read(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(sample_blob())
    with pytest.raises(Unavailable, match="xdp.drops: the kernel's BTF has no sk_buff"):
        kernel_layout(("drops",), path=path)
    with pytest.raises(Unavailable, match="needs the running kernel's BTF"):
        kernel_layout(("drops",), path=tmp_path / "absent")


# ---- the running kernel ---------------------------------------------------------------------

needs_vmlinux = pytest.mark.skipif(not B.VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux here")


def bpftool_members(struct_name: str) -> dict[str, int]:
    """name -> bit offset of a struct's direct members, as bpftool decodes the kernel's BTF."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(B.VMLINUX), "format", "raw"], capture_output=True,
                         text=True, check=True).stdout
    block = re.search(rf"^\[\d+\] STRUCT '{struct_name}' size=\d+ vlen=\d+\n((?:\t.*\n)+)", out, re.M)
    assert block, struct_name
    return {m[0]: int(m[1]) for m in re.findall(r"\t'(\w+)' type_id=\d+ bits_offset=(\d+)", block.group(1))}


@needs_vmlinux
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_real_kernel_agrees_with_bpftool():
    btf = Btf.load()
    for struct_name in ("sk_buff", "net_device", "sock", "tcp_sock"):
        direct = bpftool_members(struct_name)
        for name, bits in direct.items():
            if name in ("skb_iif", "len", "dev", "sk_dst_cache", "srtt_us", "ifindex", "nd_net", "head", "data"):
                assert btf.member(struct_name, name).offset * 8 == bits, (struct_name, name)
    kl = kernel_layout(("drops", "tcp"))
    assert set(FIELDS) <= set(kl.defines)
    assert kl.reasons[3] == "NO_SOCKET" and kl.reasons[2] == "NOT_SPECIFIED"
    enum_count = int(re.search(r"ENUM 'skb_drop_reason' encoding=\w+ size=4 vlen=(\d+)", subprocess.run(
        ["bpftool", "btf", "dump", "file", str(B.VMLINUX), "format", "raw"], capture_output=True, text=True).stdout)[1])
    assert len(kl.reasons) == enum_count
    assert Path(B.VMLINUX).stat().st_size > 0


def btf_without(tmp_path, typedef: str) -> Path:
    """The running kernel's BTF with one tracepoint's btf_trace_ typedef renamed (same length): a
    kernel that lacks that tracepoint, everything else real."""
    data = B.VMLINUX.read_bytes()
    name = typedef.encode() + b"\0"
    assert data.count(name) == 1
    path = tmp_path / "vmlinux"
    path.write_bytes(data.replace(name, name[:-2] + b"X\0"))
    return path


@needs_vmlinux
@pytest.mark.parametrize(("feature", "typedef", "event"), [("drops", "btf_trace_kfree_skb", "skb:kfree_skb"),
                                                           ("tcp", "btf_trace_tcp_probe", "tcp:tcp_probe")])
def test_a_kernel_without_the_tracepoint_is_refused_in_one_line(tmp_path, feature, typedef, event):
    path = btf_without(tmp_path, typedef)
    with pytest.raises(Unavailable) as e:
        kernel_layout((feature,), path=path)
    assert str(e.value) == f"xdp.{feature}: this kernel has no tracepoint {event}"
    from xtrace_agent.xdp.events import support

    lines = support(path)
    assert f"xdp.{feature}: unavailable: this kernel has no tracepoint {event}" in lines
