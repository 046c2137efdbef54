"""Frame builders for tests, benchmarks and the demo: plain bytes, no scapy.

Compose from the inside out; each layer knows what it carries, so the outer layer fills in the
protocol number, the ethertype and the checksums:

    ethernet(dst_mac, src_mac, ipv4("198.18.0.1", "198.18.0.2", udp(1000, 2000, b"x" * 10)), vlans=[100])
    ipoib(ipv6("fd00::1", "fd00::2", tcp(1, 2), ext=[hop_by_hop(), fragment(offset=0, more=True)]))

UDP/TCP/ICMPv6 checksums are correct whenever the IP layer carries a whole datagram (so the frames
also work as real traffic on a veth); fragments keep whatever the payload holds.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
ROCE_PORT = 4791
BROADCAST = b"\xff" * 6
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


class Layer(bytes):
    """Bytes that remember what they are: `proto` (IP protocol / next header) or `ethertype`."""

    proto: int | None = None
    ethertype: int | None = None
    checksum_at: int | None = None  # offset of the L4 checksum that needs the IP pseudo header

    @classmethod
    def of(cls, data: bytes, **attrs) -> Layer:
        obj = cls(data)
        for k, v in attrs.items():
            setattr(obj, k, v)
        return obj


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(l4: Layer, pseudo: bytes) -> bytes:
    if l4.checksum_at is None or len(l4) < l4.checksum_at + 2:
        return bytes(l4)
    data = bytearray(l4)
    data[l4.checksum_at:l4.checksum_at + 2] = b"\0\0"
    csum = checksum(pseudo + bytes(data))
    if l4.proto == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF  # 0 means "no checksum" in UDP
    struct.pack_into("!H", data, l4.checksum_at, csum)
    return bytes(data)


# ---- link layer -----------------------------------------------------------------------------

def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def ethernet(dst: bytes = MAC_B, src: bytes = MAC_A, payload: bytes = b"", ethertype: int | None = None,
             vlans: Sequence[int | tuple[int, int]] = ()) -> bytes:
    """An Ethernet frame (no FCS). vlans: outer tag first, each a VLAN id or (TPID, VLAN id); plain ids
    get 802.1ad for the outer tag of a QinQ pair and 802.1Q otherwise."""
    ethertype = _ethertype(payload) if ethertype is None else ethertype
    tags = b""
    for i, tag in enumerate(vlans):
        tpid, vid = tag if isinstance(tag, tuple) else (ETH_P_8021AD if len(vlans) > 1 and i == 0 else ETH_P_8021Q,
                                                        tag)
        tags += struct.pack("!H", tpid) + struct.pack("!H", vid & 0xFFF)
    # tags sit between the source MAC and the ethertype; each tag's TPID stands where an ethertype would
    return dst + src + tags + struct.pack("!H", ethertype) + payload


def ipoib(payload: bytes, ethertype: int | None = None, hwaddr: bytes = b"\0" * 20) -> bytes:
    """An IPoIB frame as generic XDP sees it: 20-byte pseudo header, then {ethertype, reserved}."""
    ethertype = _ethertype(payload) if ethertype is None else ethertype
    return hwaddr[:20].ljust(20, b"\0") + struct.pack("!HH", ethertype, 0) + payload


def arp(sender_ip: str = "198.18.255.1", target_ip: str = "198.18.255.2", sender_mac: bytes = MAC_A) -> Layer:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, sender_mac,
                       ipaddress.IPv4Address(sender_ip).packed, b"\0" * 6, ipaddress.IPv4Address(target_ip).packed)
    return Layer.of(body, ethertype=ETH_P_ARP)


def _ethertype(payload: bytes) -> int:
    if getattr(payload, "ethertype", None):
        return payload.ethertype
    if payload[:1] and payload[0] >> 4 == 6:
        return ETH_P_IPV6
    return ETH_P_IP


# ---- IP -------------------------------------------------------------------------------------

def ipv4(src: str, dst: str, payload: bytes = b"", proto: int | None = None, ttl: int = 64,
         options: bytes = b"", frag_offset: int = 0, more_fragments: bool = False, ident: int = 0,
         dont_fragment: bool = False, tos: int = 0, ihl: int | None = None, version: int = 4,
         total_length: int | None = None) -> Layer:
    """An IPv4 packet. frag_offset is in bytes (a multiple of 8); ihl/version/total_length override
    the computed values to make malformed packets."""
    proto = getattr(payload, "proto", None) if proto is None else proto
    if proto is None:
        raise ValueError("ipv4: give proto= for a payload that is not a frames layer")
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    fragment = frag_offset or more_fragments
    if isinstance(payload, Layer) and not fragment:
        payload = _with_checksum(payload, s + d + struct.pack("!BBH", 0, proto, len(payload)))
    hl = ihl if ihl is not None else 5 + len(options) // 4
    length = total_length if total_length is not None else 20 + len(options) + len(payload)
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | ((frag_offset // 8) & 0x1FFF)
    header = struct.pack("!BBHHHBBH4s4s", (version << 4) | (hl & 0xF), tos, length, ident, flags, ttl, proto, 0,
                         s, d) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return Layer.of(header + bytes(payload), ethertype=ETH_P_IP)


def ipv6(src: str, dst: str, payload: bytes = b"", next_header: int | None = None, ext: Iterable[Layer] = (),
         hop_limit: int = 64, flow_label: int = 0, version: int = 6) -> Layer:
    """An IPv6 packet; ext: extension headers in order (hop_by_hop(), routing(), fragment(), ...)."""
    proto = getattr(payload, "proto", None) if next_header is None else next_header
    if proto is None:
        raise ValueError("ipv6: give next_header= for a payload that is not a frames layer")
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    ext = list(ext)
    fragmented = any(getattr(e, "fragment", False) for e in ext)
    if isinstance(payload, Layer) and not fragmented:
        payload = _with_checksum(payload, s + d + struct.pack("!I3xB", len(payload), proto))
    # chain: each extension header's first byte is the next header's number
    chain = b""
    nexts = ([e.proto for e in ext] + [proto])[1:]
    for e, nxt in zip(ext, nexts, strict=True):
        chain += bytes([nxt]) + bytes(e)[1:]
    first = ext[0].proto if ext else proto
    header = struct.pack("!IHBB16s16s", (version << 28) | (flow_label & 0xFFFFF), len(chain) + len(payload),
                         first, hop_limit, s, d)
    return Layer.of(header + chain + bytes(payload), ethertype=ETH_P_IPV6)


def _options_ext(number: int, data: bytes) -> Layer:
    """Hop-by-hop or destination options: padded with PadN to a multiple of 8 bytes."""
    body = data
    pad = (8 - (2 + len(body)) % 8) % 8
    if pad == 1:
        body += b"\0"  # Pad1
    elif pad:
        body += bytes([1, pad - 2]) + b"\0" * (pad - 2)
    total = 2 + len(body)
    return Layer.of(bytes([0, total // 8 - 1]) + body, proto=number)


def hop_by_hop(data: bytes = b"") -> Layer:
    return _options_ext(0, data)


def destination_options(data: bytes = b"") -> Layer:
    return _options_ext(60, data)


def routing(segments: Sequence[str] = (), routing_type: int = 4, segments_left: int = 0) -> Layer:
    """A routing header (default: an empty segment routing header) carrying 16-byte addresses."""
    addrs = b"".join(ipaddress.IPv6Address(a).packed for a in segments)
    body = struct.pack("!BBBBI", 0, len(addrs) // 8, routing_type, segments_left, 0) + addrs
    return Layer.of(body, proto=43)


def fragment(offset: int = 0, more: bool = False, ident: int = 1) -> Layer:
    """IPv6 fragment header; offset in bytes (a multiple of 8)."""
    e = Layer.of(struct.pack("!BBHI", 0, 0, (offset & 0xFFF8) | (1 if more else 0), ident), proto=44)
    e.fragment = True
    return e


# ---- transport ------------------------------------------------------------------------------

def udp(sport: int, dport: int, payload: bytes = b"") -> Layer:
    return Layer.of(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload, proto=IPPROTO_UDP,
                    checksum_at=6)


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x18, seq: int = 0, ack: int = 0,
        window: int = 65535) -> Layer:
    """A TCP segment without options (flags default PSH|ACK)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    return Layer.of(header + payload, proto=IPPROTO_TCP, checksum_at=16)


def sctp(sport: int, dport: int, payload: bytes = b"", vtag: int = 0) -> Layer:
    """An SCTP common header (checksum left 0) followed by `payload` (chunks)."""
    return Layer.of(struct.pack("!HHII", sport, dport, vtag, 0) + payload, proto=IPPROTO_SCTP)


def icmp(type_: int = 8, code: int = 0, payload: bytes = b"\0\0\0\0") -> Layer:
    body = struct.pack("!BBH", type_, code, 0) + payload
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return Layer.of(body, proto=IPPROTO_ICMP)


def icmpv6(type_: int = 128, code: int = 0, payload: bytes = b"\0\0\0\0") -> Layer:
    return Layer.of(struct.pack("!BBH", type_, code, 0) + payload, proto=IPPROTO_ICMPV6, checksum_at=2)


def roce_bth(opcode: int, dest_qp: int, psn: int = 0, pkey: int = 0xFFFF, ack_req: bool = False) -> bytes:
    """An InfiniBand Base Transport Header (12 bytes), as RoCEv2 carries it after UDP port 4791."""
    return struct.pack("!BBHI I", opcode & 0xFF, 0, pkey, dest_qp & 0xFFFFFF,
                       (0x80000000 if ack_req else 0) | (psn & 0xFFFFFF))


def roce(src: str, dst: str, opcode: int, dest_qp: int, payload: bytes = b"", sport: int = 49152) -> Layer:
    """A RoCEv2 packet (IPv4 or IPv6 by address): UDP to 4791, BTH, payload (no ICRC)."""
    l4 = udp(sport, ROCE_PORT, roce_bth(opcode, dest_qp) + payload)
    return ipv6(src, dst, l4) if ":" in src else ipv4(src, dst, l4)


def truncations(frame: bytes, start: int = 14) -> list[bytes]:
    """Every prefix of `frame` from `start` bytes up to one byte short (truncated frames)."""
    return [frame[:n] for n in range(start, len(frame))]
