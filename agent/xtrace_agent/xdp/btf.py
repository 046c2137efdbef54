"""A small reader of the running kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets,
enum names and tracepoint signatures.

The drop and TCP programs read `struct sk_buff` and `struct sock` fields with
bpf_probe_read_kernel at offsets resolved here at start-up and handed to the compile as -D
defines, so the kernel headers the image carries (one Debian release's) never decide a layout:
only the kernel that runs does. The format is the kernel's (Documentation/bpf/btf.rst): a
header, a type section of variable-length records, a string section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from xtrace_agent import environ

# the running kernel's BTF; environ.BTF names another file (tests: a kernel without it)
VMLINUX = Path(environ.BTF.get())
MAGIC = 0xEB9F

# BTF_KIND_*
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# bytes that follow the 12-byte common record: (fixed, per vlen item)
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8), FUNC_PROTO: (0, 8),
          VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}


class BtfError(Exception):
    """The BTF is missing, malformed, or lacks what was asked for (one-line message)."""


@dataclass(frozen=True)
class Member:
    offset: int  # bytes from the start of the outermost struct
    size: int  # bytes (of the member's type, modifiers and typedefs resolved)
    bitfield: bool


class Btf:
    """Types of one BTF blob, decoded lazily: one pass indexes where each record starts."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BtfError("BTF too short for its header")
        for order in ("<", ">"):
            if struct.unpack_from(order + "H", data)[0] == MAGIC:
                break
        else:
            raise BtfError("not BTF (bad magic)")
        self._o = order
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "HBBIIIII", data)
        if version != 1:
            raise BtfError(f"BTF version {version} (this reader knows 1)")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise BtfError("BTF sections run past the end of the data")
        self._data = data
        self._strings = (s0, s0 + str_len)
        self._starts = [0]  # type id -> where its record starts (id 0 is void)
        self._names: dict[str, list[int]] = {}
        self._index(t0, t0 + type_len)

    @classmethod
    def load(cls, path: Path | str = VMLINUX) -> Btf:
        try:
            return cls(Path(path).read_bytes())
        except OSError as e:
            raise BtfError(f"cannot read the kernel's BTF at {path}: {e.strerror}") from None

    def _index(self, pos: int, end: int) -> None:
        data, unpack = self._data, struct.Struct(self._o + "III").unpack_from
        starts, names = self._starts, self._names
        while pos < end:
            if pos + 12 > end:
                raise BtfError(f"BTF type {len(starts)} cut short")
            name_off, info, _ = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _EXTRA.get(kind, (0, 0))
            if kind == 0 or kind > ENUM64:
                raise BtfError(f"BTF type {len(starts)} has unknown kind {kind}")
            if name_off:
                names.setdefault(self.string(name_off), []).append(len(starts))
            starts.append(pos)
            pos += 12 + fixed + per * vlen
        if pos != end:
            raise BtfError("BTF type section does not end on a record")

    def string(self, off: int) -> str:
        begin, end = self._strings
        if begin + off >= end:
            raise BtfError(f"BTF string offset {off} out of range")
        stop = self._data.index(b"\0", begin + off, end)
        return self._data[begin + off:stop].decode()

    def _record(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, position of what follows the record)."""
        if not 0 < type_id < len(self._starts):
            raise BtfError(f"BTF type id {type_id} out of range")
        pos = self._starts[type_id]
        _name, info, size_or_type = struct.unpack_from(self._o + "III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type, pos + 12

    def find(self, name: str, *kinds: int) -> int:
        """The id of the type named `name` of one of `kinds` (its first definition, not a FWD)."""
        for type_id in self._names.get(name, ()):
            kind = self._record(type_id)[0]
            if kind in kinds and not (kind in (STRUCT, UNION) and self._record(type_id)[1] == 0
                                      and self._record(type_id)[3] == 0):
                return type_id
        raise BtfError(f"the kernel's BTF has no {name}")

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        for _ in range(64):
            kind, _vlen, _kf, size_or_type, _pos = self._record(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = size_or_type
        raise BtfError("BTF typedef chain too long")

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        kind, _vlen, _kf, size_or_type, pos = self._record(type_id)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return size_or_type
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index_type, nelems = struct.unpack_from(self._o + "III", self._data, pos)
            return self.size(elem) * nelems
        raise BtfError(f"BTF type {type_id} (kind {kind}) has no size")

    def _members(self, type_id: int):
        """(name, type id, bit offset, bitfield size) of a struct's or union's direct members."""
        kind, vlen, kind_flag, _size, pos = self._record(self.resolve(type_id))
        if kind not in (STRUCT, UNION):
            raise BtfError(f"BTF type {type_id} is not a struct or union")
        for i in range(vlen):
            name_off, mtype, offset = struct.unpack_from(self._o + "III", self._data, pos + 12 * i)
            bits = offset >> 24 if kind_flag else 0
            yield (self.string(name_off) if name_off else ""), mtype, offset & 0xFFFFFF if kind_flag else offset, bits

    def _member(self, type_id: int, name: str) -> tuple[int, int, int] | None:
        """(type id, bit offset, bitfield bits) of `name`, looking inside anonymous members."""
        for mname, mtype, bit_off, bits in self._members(type_id):
            if mname == name:
                return mtype, bit_off, bits
            if not mname and self._record(self.resolve(mtype))[0] in (STRUCT, UNION):
                inner = self._member(mtype, name)
                if inner is not None:
                    return inner[0], bit_off + inner[1], inner[2]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Where `path` ("a.b.c", through named and anonymous members) lies in struct_name."""
        type_id = self.find(struct_name, STRUCT, UNION)
        total_bits, bits = 0, 0
        for part in path.split("."):
            found = self._member(type_id, part)
            if found is None:
                raise BtfError(f"the kernel's struct {struct_name} has no member {path}")
            type_id, bit_off, bits = found
            total_bits += bit_off
        if total_bits % 8 and not bits:
            raise BtfError(f"{struct_name}.{path} is not byte-aligned")
        return Member(total_bits // 8, self.size(type_id) if not bits else (bits + 7) // 8, bool(bits))

    def enum(self, name: str) -> dict[int, str]:
        """value -> name of every enumerator of enum `name`."""
        type_id = self.find(name, ENUM, ENUM64)
        kind, vlen, kind_flag, _size, pos = self._record(type_id)
        out = {}
        for i in range(vlen):
            if kind == ENUM:
                fmt = "Ii" if kind_flag else "II"  # kind_flag: signed values
                name_off, value = struct.unpack_from(self._o + fmt, self._data, pos + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from(self._o + "III", self._data, pos + 12 * i)
                value = lo | (hi << 32)
            out[value] = self.string(name_off)
        return out

    def tracepoint_args(self, event: str) -> tuple[str, ...]:
        """Type names of a raw tracepoint's arguments after the leading `void *` (its btf_trace_
        typedef): what a BPF_PROG_TYPE_RAW_TRACEPOINT program finds in ctx->args[]."""
        type_id = self.find(f"btf_trace_{event}", TYPEDEF)
        ptr = self._record(type_id)[3]
        kind, _vlen, _kf, proto, _pos = self._record(self.resolve(ptr))
        if kind != PTR:
            raise BtfError(f"btf_trace_{event} is not a function pointer")
        kind, vlen, _kf, _ret, pos = self._record(proto)
        if kind != FUNC_PROTO:
            raise BtfError(f"btf_trace_{event} is not a function pointer")
        params = [struct.unpack_from(self._o + "II", self._data, pos + 8 * i)[1] for i in range(vlen)]
        return tuple(self.type_name(t) for t in params[1:])

    def type_name(self, type_id: int) -> str:
        """A short C-like name: 'struct sk_buff *', 'enum skb_drop_reason', 'int'."""
        if type_id == 0:
            return "void"
        kind, _vlen, _kf, size_or_type, _pos = self._record(type_id)
        name_off = struct.unpack_from(self._o + "I", self._data, self._starts[type_id])[0]
        name = self.string(name_off) if name_off else ""
        if kind == PTR:
            return self.type_name(size_or_type) + " *"
        if kind in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.type_name(size_or_type)
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum "}.get(kind, "")
        return prefix + (name or "?")
