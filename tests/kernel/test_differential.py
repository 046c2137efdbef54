"""Differential test: thousands of mutated frames through the real program vs an independent parser.

Frames start from well-formed ones (every shape the parser knows) and are mutated with a seeded
random generator: cut at any length, bytes flipped in the headers, tags and next-headers swapped.
Every frame must come back XDP_PASS; the flows the program counts (BPF_PROG_TEST_RUN, drained)
must equal the truth computed by tests/helpers/heldout_pcap.py's parser, which shares no code with the
agent, on every key where the contract is unambiguous; and the interface totals must hold every
frame and every byte.
"""

import errno
import random

import pytest

from tests import frames as F
from tests.helpers import heldout_pcap

pytestmark = pytest.mark.kernel

XDP_PASS = 2
A4, B4 = "203.0.113.77", "203.0.113.78"  # addresses no other kernel test uses
A6, B6 = "2001:db8:7::77", "2001:db8:7::78"


def seeds() -> list[bytes]:
    udp = F.udp(40000, 9999, b"d" * 40)
    return [
        F.ethernet(payload=F.ipv4(A4, B4, udp)),
        F.ethernet(payload=F.ipv4(A4, B4, F.tcp(40001, 80, b"t" * 30))),
        F.ethernet(payload=F.ipv6(A6, B6, F.udp(40002, 9999, b"x" * 20))),
        F.ethernet(payload=F.ipv6(A6, B6, F.tcp(40003, 443), ext=[F.hop_by_hop(), F.destination_options()])),
        F.ethernet(payload=F.ipv6(A6, B6, F.udp(40004, 53), ext=[F.routing(), F.fragment(offset=0, more=True)])),
        F.ethernet(payload=F.ipv4(A4, B4, udp), vlans=[100]),
        F.ethernet(payload=F.ipv6(A6, B6, F.udp(40005, 9999)), vlans=[200, 300]),
        F.ethernet(payload=F.roce(A4, B4, opcode=4, dest_qp=0x77, payload=b"r" * 16)),
        F.ethernet(payload=F.ipv4(A4, B4, F.sctp(40006, 5000))),
        F.ethernet(payload=F.ipv4(A4, B4, F.icmp())),
    ]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(0, 3)):
        choice = rng.random()
        if choice < 0.5:  # flip a byte where the headers are
            i = rng.randrange(12, min(len(data), 90))
            data[i] = rng.randrange(256)
        elif choice < 0.7:  # a well-known value where a parser branches
            i = rng.randrange(12, min(len(data), 90))
            data[i:i + 2] = rng.choice([b"\x81\x00", b"\x88\xa8", b"\x08\x00", b"\x86\xdd", b"\x00\x2c", b"\x11\x06"])
        else:  # a different IHL / version nibble
            off = 14 + 4 * rng.randint(0, 2)
            if off < len(data):
                data[off] = rng.choice([0x45, 0x46, 0x4F, 0x44, 0x60, 0x65])
    if rng.random() < 0.4:
        del data[rng.randint(14, len(data)):]
    return bytes(data[:1514])


def test_program_matches_an_independent_parser_on_mutated_frames(xdp):
    rng = random.Random(20261127)
    base = seeds()
    batch = [mutate(rng, rng.choice(base)) for _ in range(3000)] + base
    for frame in batch:
        assert xdp.run(frame) == XDP_PASS
    drained = xdp.drain()

    expected, unchecked = heldout_pcap.truth(batch)
    got: dict[tuple, list[int]] = {}
    for fk, (packets, bytes_) in drained.flows.items():
        if fk.protocol in (6, 17):
            cur = got.setdefault((fk.src_ip, fk.dst_ip, fk.src_port, fk.dst_port, fk.protocol), [0, 0])
            cur[0] += packets
            cur[1] += bytes_
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not wrong, f"{len(wrong)} flows differ (agent, truth): {list(wrong.items())[:5]}"
    extra = [k for k in set(got) - set(expected) - unchecked if k[2] or k[3]]
    assert not extra, f"flows the truth does not know: {extra[:5]}"
    assert len(expected) > 10  # the mutations left plenty of well-defined flows to compare
    assert drained.interfaces[1] == (len(batch), sum(map(len, batch)))


def test_egress_entry_point_counts_exactly_what_the_ingress_one_does(xdp):
    """One parser for both hooks: the same mutated frames through the TC (egress) entry point give
    the same flows, untracked entries and totals as through XDP, under the egress half of the key."""
    from tests.helpers.bpf import test_run
    from xtrace_agent.xdp.layout import EGRESS

    rng = random.Random(20261202)
    base = seeds()
    batch = []
    for frame in [mutate(rng, rng.choice(base)) for _ in range(1000)] + base:
        try:
            action, _ = test_run(xdp.program.prog_fd(egress=True), frame, egress=True)
        except OSError as e:  # the skb harness refuses IP frames shorter than their IP header
            assert e.errno == errno.EINVAL
            continue
        assert action == 0xFFFFFFFF  # TC_ACT_UNSPEC: the next program decides
        assert xdp.run(frame) == XDP_PASS
        batch.append(frame)
    assert len(batch) > 700
    drained = xdp.drain()
    rx = {fk: c for fk, c in drained.flows.items() if not fk.ifindex & EGRESS}
    tx = {fk._replace(ifindex=fk.ifindex & ~EGRESS): c for fk, c in drained.flows.items() if fk.ifindex & EGRESS}
    assert rx == tx and len(rx) > 10
    untracked = {(i & ~EGRESS, r): c for (i, r), c in drained.untracked.items() if i & EGRESS}
    assert untracked == {k: c for k, c in drained.untracked.items() if not k[0] & EGRESS}
    assert drained.interfaces[1] == drained.interfaces[1 | EGRESS] == (len(batch), sum(map(len, batch)))


def test_ipoib_egress_entry_point_matches_the_ingress_one(xdp):
    from tests.helpers.bpf import test_run
    from xtrace_agent.xdp.layout import EGRESS

    frames = [F.ipoib(F.ipv4(A4, B4, F.udp(40100, 9999, b"i" * 40))),
              F.ipoib(F.ipv6(A6, B6, F.tcp(40101, 443, b"j" * 10))),
              F.ipoib(F.ipv4(A4, B4, F.udp(40102, 9999))[:10])]
    for frame in frames:
        assert xdp.run(frame, ipoib=True) == XDP_PASS
        assert test_run(xdp.program.prog_fd(infiniband=True, egress=True), frame, egress=True)[0] == 0xFFFFFFFF
    drained = xdp.drain()
    rx = {fk: c for fk, c in drained.flows.items() if not fk.ifindex & EGRESS}
    tx = {fk._replace(ifindex=fk.ifindex & ~EGRESS): c for fk, c in drained.flows.items() if fk.ifindex & EGRESS}
    assert rx == tx and {fk.traffic_type for fk in rx} == {"infiniband"} and len(rx) == 2
    assert drained.untracked[(1 | EGRESS, "malformed")] == drained.untracked[(1, "malformed")] == (1, len(frames[2]))
