"""The XDP parser on crafted frames, through BPF_PROG_TEST_RUN: exact flow keys and counts.

Every frame goes through the real program and its real maps; counts are read back with the
agent's own drain. Addresses: 203.0.113.0/24 and 2001:db8:7::/48 (used by no other test).
"""

from __future__ import annotations

import pytest

from tests import frames as F
from tests.helpers.bpf import LO, Runner, stats
from xtrace_agent.stages import FlowKey

pytestmark = pytest.mark.kernel

XDP_PASS = 2
A4, B4 = "203.0.113.1", "203.0.113.2"
A6, B6 = "2001:db8:7::1", "2001:db8:7::2"
ETH = 14


def key(src, dst, sport, dport, proto, traffic_type="ethernet", opcode=0, qp=0) -> FlowKey:
    return FlowKey(LO, src, dst, sport, dport, proto, traffic_type, opcode, qp)


def eth(payload, **kw) -> bytes:
    return F.ethernet(F.MAC_B, F.MAC_A, payload, **kw)


def counted(xdp: Runner, frame: bytes, repeat: int = 3, ipoib: bool = False):
    assert xdp.run(frame, repeat, ipoib) == XDP_PASS
    return xdp.drain()


def assert_flow(xdp: Runner, frame: bytes, expected: FlowKey, repeat: int = 3, ipoib: bool = False):
    d = counted(xdp, frame, repeat, ipoib)
    assert d.flows == {expected: (repeat, repeat * len(frame))}
    assert d.interfaces[LO] == (repeat, repeat * len(frame))
    assert stats(d)["malformed"] == 0 and stats(d)["non_ip"] == 0 and stats(d)["table_full"] == 0
    assert d.untracked == {}


CASES = {
    "ipv4_udp": (eth(F.ipv4(A4, B4, F.udp(1111, 2222, b"x" * 30))), key(A4, B4, 1111, 2222, 17)),
    "ipv6_udp": (eth(F.ipv6(A6, B6, F.udp(1112, 2223, b"x" * 30))), key(A6, B6, 1112, 2223, 17)),
    "ipv4_tcp": (eth(F.ipv4(A4, B4, F.tcp(40000, 443, b"GET /"))), key(A4, B4, 40000, 443, 6)),
    "ipv6_tcp": (eth(F.ipv6(B6, A6, F.tcp(443, 40001))), key(B6, A6, 443, 40001, 6)),
    "vlan_8021q": (eth(F.ipv4(A4, B4, F.udp(1, 2)), vlans=[100]), key(A4, B4, 1, 2, 17)),
    "vlan_8021ad": (eth(F.ipv4(A4, B4, F.udp(3, 4)), vlans=[(F.ETH_P_8021AD, 7)]), key(A4, B4, 3, 4, 17)),
    "qinq": (eth(F.ipv6(A6, B6, F.udp(5, 6)), vlans=[10, 20]), key(A6, B6, 5, 6, 17)),
    "qinq_two_8021q": (eth(F.ipv4(A4, B4, F.tcp(7, 8)), vlans=[(F.ETH_P_8021Q, 1), (F.ETH_P_8021Q, 2)]),
                       key(A4, B4, 7, 8, 6)),
    "roce_v4": (eth(F.roce(A4, B4, opcode=0x0A, dest_qp=0xABCDEF, payload=b"r" * 64)),
                key(A4, B4, 49152, 4791, 17, "roce", 0x0A, 0xABCDEF)),
    "roce_v6_vlan": (eth(F.roce(A6, B6, opcode=0x11, dest_qp=0x000102, sport=50000), vlans=[3]),
                     key(A6, B6, 50000, 4791, 17, "roce", 0x11, 0x000102)),
    "ipv4_options": (eth(F.ipv4(A4, B4, F.udp(9, 10), options=b"\x94\x04\x00\x00" + b"\x01" * 8)),
                     key(A4, B4, 9, 10, 17)),
    "ipv4_max_options": (eth(F.ipv4(A4, B4, F.tcp(11, 12), options=b"\x01" * 40)), key(A4, B4, 11, 12, 6)),
    "ipv4_first_fragment": (eth(F.ipv4(A4, B4, F.udp(13, 14, b"f" * 64), more_fragments=True, ident=9)),
                            key(A4, B4, 13, 14, 17)),
    "ipv4_later_fragment": (eth(F.ipv4(A4, B4, b"\x00\x0f\x00\x10" + b"f" * 60, proto=17, frag_offset=1480,
                                       ident=9)), key(A4, B4, 0, 0, 17)),
    "ipv4_last_fragment_offset8": (eth(F.ipv4(A4, B4, b"\x00\x0f\x00\x10", proto=6, frag_offset=8)),
                                   key(A4, B4, 0, 0, 6)),
    "ipv6_ext_headers": (eth(F.ipv6(A6, B6, F.tcp(15, 16), ext=[F.hop_by_hop(), F.routing([B6]),
                                                                F.destination_options(b"\x01\x0c" + b"\0" * 12)])),
                         key(A6, B6, 15, 16, 6)),
    "ipv6_first_fragment": (eth(F.ipv6(A6, B6, F.udp(17, 18, b"z" * 16), ext=[F.fragment(0, more=True)])),
                            key(A6, B6, 17, 18, 17)),
    "ipv6_later_fragment": (eth(F.ipv6(A6, B6, b"\x00\x11\x00\x12" + b"z" * 20, next_header=17,
                                       ext=[F.fragment(1232)])), key(A6, B6, 0, 0, 17)),
    "ipv6_four_ext": (eth(F.ipv6(A6, B6, F.udp(19, 20), ext=[F.hop_by_hop(), F.destination_options(),
                                                           F.routing(), F.fragment(0, more=True)])),
                      key(A6, B6, 19, 20, 17)),
    # beyond the bound of 4 extension headers the program gives up: protocol = the 5th header, no ports
    "ipv6_five_ext": (eth(F.ipv6(A6, B6, F.udp(21, 22), ext=[F.hop_by_hop(), F.destination_options(),
                                                           F.routing(), F.routing(), F.destination_options()])),
                      key(A6, B6, 0, 0, 60)),
    "sctp": (eth(F.ipv4(A4, B4, F.sctp(36412, 38412, b"\x00" * 16))), key(A4, B4, 36412, 38412, 132)),
    "sctp_v6": (eth(F.ipv6(A6, B6, F.sctp(2905, 2906))), key(A6, B6, 2905, 2906, 132)),
    "icmp": (eth(F.ipv4(A4, B4, F.icmp(8, 0, b"\0\1\0\1ping"))), key(A4, B4, 0, 0, 1)),
    "icmpv6": (eth(F.ipv6(A6, B6, F.icmpv6(128, 0, b"\0\1\0\1"))), key(A6, B6, 0, 0, 58)),
    "gre_no_ports": (eth(F.ipv4(A4, B4, b"\x00\x00\x08\x00", proto=47)), key(A4, B4, 0, 0, 47)),
    "udp_empty_payload": (eth(F.ipv4(A4, B4, F.udp(23, 24))), key(A4, B4, 23, 24, 17)),
    "ipv4_mapped_text": (eth(F.ipv4("0.0.0.1", "255.255.255.255", F.udp(25, 26))),
                         key("0.0.0.1", "255.255.255.255", 25, 26, 17)),
    "ipv6_compressed_text": (eth(F.ipv6("2001:db8:7:0:1:0:0:1", "2001:db8:7::ffff:0:2", F.udp(27, 28))),
                             key("2001:db8:7:0:1::1", "2001:db8:7::ffff:0:2", 27, 28, 17)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flow_key_and_counts(xdp, name):
    frame, expected = CASES[name]
    assert_flow(xdp, frame, expected)


IPOIB_CASES = {
    "ipoib_v4_udp": (F.ipoib(F.ipv4(A4, B4, F.udp(31, 32, b"ib" * 10))), key(A4, B4, 31, 32, 17, "infiniband")),
    "ipoib_v6_tcp": (F.ipoib(F.ipv6(A6, B6, F.tcp(33, 34))), key(A6, B6, 33, 34, 6, "infiniband")),
    # RoCE rides on Ethernet; on an IPoIB link port 4791 is plain UDP
    "ipoib_udp_4791": (F.ipoib(F.ipv4(A4, B4, F.udp(35, 4791, F.roce_bth(4, 5)))),
                       key(A4, B4, 35, 4791, 17, "infiniband")),
}


@pytest.mark.parametrize("name", list(IPOIB_CASES))
def test_ipoib(xdp, name):
    frame, expected = IPOIB_CASES[name]
    assert_flow(xdp, frame, expected, ipoib=True)


def test_flows_are_separate_and_summed(xdp):
    a = eth(F.ipv4(A4, B4, F.udp(41, 42, b"a")))
    b = eth(F.ipv4(A4, B4, F.udp(41, 43, b"bb")))
    assert xdp.run(a, 5) == XDP_PASS and xdp.run(b, 2) == XDP_PASS and xdp.run(a, 1) == XDP_PASS
    d = xdp.drain()
    assert d.flows == {key(A4, B4, 41, 42, 17): (6, 6 * len(a)), key(A4, B4, 41, 43, 17): (2, 2 * len(b))}
    assert d.interfaces[LO] == (8, 6 * len(a) + 2 * len(b))
    assert d.untracked == {}
    # read and reset: the next drain starts from zero
    d2 = xdp.drain()
    assert d2.flows == {} and d2.interfaces.get(LO, (0, 0)) == (0, 0)


def test_non_ip_counts_only_in_interface_totals(xdp):
    frame = eth(F.arp())
    d = counted(xdp, frame, 4)
    assert d.flows == {}
    assert stats(d)["non_ip"] == 4 and stats(d)["malformed"] == 0
    assert d.interfaces[LO] == (4, 4 * len(frame))


# Frames cut at every byte inside their headers: (frame, length of all headers it must parse, ipoib)
HEADERS = {
    "ipv4_udp": (eth(F.ipv4(A4, B4, F.udp(51, 52, b"p" * 8))), ETH + 20 + 8, False),
    "ipv4_tcp_options": (eth(F.ipv4(A4, B4, F.tcp(51, 53), options=b"\x01" * 8)), ETH + 28 + 20, False),
    "qinq_ipv4_sctp": (eth(F.ipv4(A4, B4, F.sctp(51, 54)), vlans=[1, 2]), ETH + 8 + 20 + 12, False),
    "ipv6_ext_udp": (eth(F.ipv6(A6, B6, F.udp(51, 55), ext=[F.hop_by_hop(b"\x01\x04\0\0\0\0"), F.fragment()])),
                     ETH + 40 + 8 + 8 + 8, False),
    "ipv4_icmp": (eth(F.ipv4(A4, B4, F.icmp())), ETH + 20 + 4, False),
    "ipv6_icmpv6": (eth(F.ipv6(A6, B6, F.icmpv6())), ETH + 40 + 4, False),
    "roce": (eth(F.roce(A4, B4, 1, 2, b"payload")), ETH + 20 + 8 + 12, False),
    "vlan_roce_v6": (eth(F.roce(A6, B6, 1, 2), vlans=[9]), ETH + 4 + 40 + 8 + 12, False),
    "ipoib_ipv4_udp": (F.ipoib(F.ipv4(A4, B4, F.udp(51, 56))), 24 + 20 + 8, True),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_truncated_at_every_header_byte(xdp, name):
    frame, header_len, ipoib = HEADERS[name]
    # BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as does every real link
    cuts = [frame[:n] for n in range(ETH, header_len)]
    for cut in cuts:
        assert xdp.run(cut, 1, ipoib) == XDP_PASS
    d = xdp.drain()
    assert d.flows == {}
    assert stats(d)["malformed"] == len(cuts)
    assert d.interfaces[LO] == (len(cuts), sum(map(len, cuts)))
    # the full header set parses: the boundary is exactly where the test says
    d = counted(xdp, frame[:header_len], 1, ipoib)
    assert stats(d)["malformed"] == 0 and len(d.flows) == 1


MALFORMED = {
    "ipv4_version_5": eth(F.ipv4(A4, B4, F.udp(61, 62), version=5)),
    "ipv4_ihl_4": eth(F.ipv4(A4, B4, F.udp(61, 63), ihl=4)),
    "ipv4_ihl_0": eth(F.ipv4(A4, B4, F.udp(61, 64), ihl=0)),
    "ipv4_options_beyond_frame": eth(F.ipv4(A4, B4, b"", proto=17, ihl=15)),
    "ipv6_version_4": eth(F.ipv6(A6, B6, F.udp(61, 65), version=4), ethertype=F.ETH_P_IPV6),
    "ipv6_ext_len_beyond_frame": eth(F.ipv6(A6, B6, b"\x11\xff" + b"\0" * 6, next_header=0)),
    "vlan_tag_cut": eth(b"", ethertype=F.ETH_P_8021Q),
    "ipoib_short": F.ipoib(b"")[:20],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(xdp, name):
    frame = MALFORMED[name]
    d = counted(xdp, frame, 2, ipoib=name.startswith("ipoib"))
    assert d.flows == {}
    assert stats(d)["malformed"] == 2
    assert d.interfaces[LO] == (2, 2 * len(frame))


def test_sampling_scales_counts(sampled_program):
    runner = Runner(sampled_program)
    frame = eth(F.ipv4(A4, B4, F.udp(71, 72, b"s" * 10)))
    assert runner.run(frame, 4000) == XDP_PASS
    d = runner.drain()
    sampled = stats(d)["sampled"]
    assert 0 < sampled < 4000
    assert d.flows == {key(A4, B4, 71, 72, 17): (4 * sampled, 4 * sampled * len(frame))}
    assert d.interfaces[LO] == (4000, 4000 * len(frame))  # interface totals are never sampled
    # the packets not sampled are in the interface's `unsampled` entry: every packet is somewhere
    assert d.untracked == {(LO, "unsampled"): (4000 - sampled, (4000 - sampled) * len(frame))}
    # 1-in-4 of 4000: the mean is 1000, the standard deviation 27; 8 sigma either side
    assert 780 < sampled < 1220


def test_unsampled_program_has_no_sampler(xdp):
    frame = eth(F.ipv4(A4, B4, F.udp(73, 74)))
    d = counted(xdp, frame, 50)
    assert stats(d)["sampled"] == 0 and d.flows[key(A4, B4, 73, 74, 17)] == (50, 50 * len(frame))
