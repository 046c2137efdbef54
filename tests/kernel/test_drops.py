"""Drops with the kernel's reason, on a real veth (issue "What went wrong with the packets"):
drops made on purpose, of known counts, each appear under their flow with the reason name the
running kernel gives them (its BTF enum skb_drop_reason), exactly; traffic that is not dropped
never appears; per (interface, direction) and reason the flows plus `other` equal the interface
total at every report.

The drop program runs for real (raw tracepoint skb:kfree_skb, loaded through the compile child)
and the accounting stage is the agent's; only the agent process around them is left out here
(tests/kernel/test_events_agent.py runs the binary). Host b (this namespace, the watched veth
end) receives what host a sends; each oracle is the kernel's own counter where it has one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests import frames
from tests.conftest import need
from tests.helpers.bpf import bpf_prerequisites
from tests.helpers.netns import wait_for
from xtrace_agent import drops
from xtrace_agent.xdp import layout

pytestmark = pytest.mark.kernel

ETH, IP4, UDP = 14, 20, 8


@pytest.fixture(scope="module")
def events():
    bpf_prerequisites()
    from xtrace_agent.xdp.btf import VMLINUX
    from xtrace_agent.xdp.events import EventsProgram

    need(VMLINUX.exists(), "the kernel has no BTF (/sys/kernel/btf/vmlinux)")
    with EventsProgram.load(("drops",)) as prog:
        prog.attach()
        yield prog


class Watch:
    """The drop program watching host b's veth end (both directions), with the agent's accounting."""

    def __init__(self, prog, dev: str):
        self.prog, self.dev = prog, dev
        self.ifindex = socket.if_nametoindex(dev)
        self.groups = ((dev, "ingress"), (dev, "egress"))
        self.acct = drops.DropAccounting(max_flows=1000, idle_timeout=3600, directed=True)
        self.reports: list[list] = []
        prog.drain_drops()  # whatever another test left in the table
        for place in (self.ifindex, self.ifindex | layout.EGRESS):
            prog.watch(place)

    def group_of(self, raw: int):
        ifindex, direction = layout.split_ifindex(raw)
        return (self.dev if ifindex == self.ifindex else f"ifindex{ifindex}", direction)

    def report(self) -> dict:
        """Drain, account, check conservation; returns {(metric, labels...): value}."""
        seen = drops.observe(self.prog.drain_drops(), self.group_of, self.prog.reason_name, self.groups)
        samples = self.acct.report(seen, time.time())
        self.reports.append(samples)
        check_conservation(samples)
        return {(s.name, *sorted(s.labels.items())): s.value for s in samples}

    def close(self) -> None:
        for place in (self.ifindex, self.ifindex | layout.EGRESS):
            self.prog.unwatch(place)


def check_conservation(samples) -> None:
    """Per (interface, direction, reason): flows + other == the interface total, packets and bytes."""
    flows: dict = {}
    totals: dict = {}
    for s in samples:
        where = (s.labels.get("interface"), s.labels.get("direction"), s.labels.get("reason"))
        if s.name in (drops.PACKETS, drops.BYTES):
            flows.setdefault(where, [0, 0])[s.name == drops.BYTES] += s.value
        elif s.name in (drops.IFACE_PACKETS, drops.IFACE_BYTES):
            totals.setdefault(where, [0, 0])[s.name == drops.IFACE_BYTES] = s.value
    assert flows == totals


@pytest.fixture
def watch(events, veth):
    w = Watch(events, veth.dev_b)
    yield w
    w.close()


def flow_of(dev, direction, src, dst, sport, dport, proto, reason) -> tuple:
    labels = {"interface": dev, "direction": direction, "src_ip": src, "dst_ip": dst, "src_port": str(sport),
              "dst_port": str(dport), "protocol": str(proto), "traffic_type": "ethernet", "reason": reason}
    return tuple(sorted(labels.items()))


def drop_flows(snapshot: dict, veth) -> dict:
    """(labels...) -> packets of every drop flow between the two hosts' IPv4 addresses (the link's
    own IPv6 start-up noise, a neighbour solicitation the kernel drops, is real but not ours)."""
    ours = {veth.ip4_a, veth.ip4_b}
    return {k[1:]: v for k, v in snapshot.items() if k[0] == drops.PACKETS and dict(k[1:])["src_ip"] in ours}


def send_udp(veth, dport: int, count: int, size: int = 10, side: str = "a", dst: str | None = None) -> int:
    """Send `count` datagrams from host a (or b) to host b's (a's) address; returns the source port."""
    s = veth.socket(side, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((veth.ip4_a if side == "a" else veth.ip4_b, 0))
        for _ in range(count):
            s.sendto(b"x" * size, (dst or (veth.ip4_b if side == "a" else veth.ip4_a), dport))
        return s.getsockname()[1]
    finally:
        s.close()


def closed_port() -> int:
    """A UDP port with no socket on this host (bound a moment ago, then closed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_udp_to_a_closed_port_and_traffic_that_is_not_dropped(watch, veth):
    """NO_SOCKET, exactly N, under its flow; a delivered flow beside it never appears."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((veth.ip4_b, 0))
    listener.settimeout(5)
    port = closed_port()
    sport = send_udp(veth, port, 7, size=10)
    good_sport = send_udp(veth, listener.getsockname()[1], 5, size=30)
    for _ in range(5):
        listener.recv(100)  # every one delivered: none dropped
    listener.close()
    time.sleep(0.1)
    snap = watch.report()
    got = drop_flows(snap, veth)
    key = flow_of(veth.dev_b, "ingress", veth.ip4_a, veth.ip4_b, sport, port, 17, "NO_SOCKET")
    assert got == {key: 7}, got
    assert snap[(drops.BYTES, *key)] == 7 * (ETH + IP4 + UDP + 10)
    assert all(("src_port", str(good_sport)) not in k for k in snap)
    # the reason's name is the running kernel's, from its BTF enum
    assert watch.prog.reasons[3] == "NO_SOCKET"


def test_full_socket_receive_buffer(watch, veth):
    """SOCKET_RCVBUFF: exactly the datagrams the socket did not get (its own drop counter agrees)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel rounds up to its minimum
    sink.bind((veth.ip4_b, 0))
    sent = 200
    sport = send_udp(veth, sink.getsockname()[1], sent, size=1000)
    time.sleep(0.2)
    sink.setblocking(False)
    delivered = 0
    while True:
        try:
            sink.recv(2000)
            delivered += 1
        except BlockingIOError:
            break
    port = sink.getsockname()[1]
    kernel_drops = udp_socket_drops(port)
    sink.close()
    snap = watch.report()
    got = {k: v for k, v in drop_flows(snap, veth).items() if ("reason", "SOCKET_RCVBUFF") in k}
    assert sent - delivered > 0, "the receive buffer never filled"
    assert list(got.values()) == [sent - delivered] == [kernel_drops], (got, delivered, kernel_drops)
    (labels,) = got
    assert dict(labels)["src_port"] == str(sport) and dict(labels)["src_ip"] == veth.ip4_a


def udp_socket_drops(port: int) -> int:
    """The `drops` column of /proc/net/udp for the socket on `port` (the kernel's own count)."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True, text=True)


def test_netfilter_drop_rule(watch, veth):
    """NETFILTER_DROP, exactly the packets the rule's own counter saw."""
    import shutil

    need(shutil.which("nft") is not None, "nft is not installed (apt-get install nftables)")
    table = f"xt{veth.tag}"
    port = 40000 + veth.n
    nft("add", "table", "inet", table)
    try:
        nft("add", "chain", "inet", table, "in", "{ type filter hook input priority 0 ; }")
        nft("add", "rule", "inet", table, "in", "iifname", veth.dev_b, "udp", "dport", str(port), "counter", "drop")
        sport = send_udp(veth, port, 9, size=20)
        time.sleep(0.1)
        out = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", table], capture_output=True,
                                        text=True, check=True).stdout)
        counted = next(e["counter"]["packets"] for item in out["nftables"] if "rule" in item
                       for e in item["rule"]["expr"] if "counter" in e)
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
    snap = watch.report()
    key = flow_of(veth.dev_b, "ingress", veth.ip4_a, veth.ip4_b, sport, port, 17, "NETFILTER_DROP")
    assert counted == 9
    assert drop_flows(snap, veth) == {key: 9}


def qdisc_stats(dev: str, what: str) -> int:
    out = json.loads(subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True,
                                    check=True).stdout)
    return sum(q.get(what, 0) for q in out)


def test_qdisc_drop_on_egress(watch, veth):
    """A tbf queue of one packet on host b's egress drops what it cannot hold: the qdisc's own
    drop counter and the drops under the flow (direction egress) agree exactly."""
    subprocess.run(["tc", "qdisc", "add", "dev", veth.dev_b, "root", "tbf", "rate", "400kbit", "burst", "1600",
                    "limit", "1600"], check=True, capture_output=True)
    try:
        port = 9
        sport = send_udp(veth, port, 50, size=1000, side="b")
        # what is still queued when the qdisc goes is freed then, as a drop of another reason
        wait_for(lambda: qdisc_stats(veth.dev_b, "qlen") == 0, what="the tbf queue to empty", timeout=10)
        dropped = qdisc_stats(veth.dev_b, "drops")
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", veth.dev_b, "root"], capture_output=True)
    snap = watch.report()
    got = {k: v for k, v in drop_flows(snap, veth).items() if ("direction", "egress") in k}
    assert dropped > 0
    assert len(got) == 1, got
    (labels, packets), = got.items()
    labels = dict(labels)
    assert packets == dropped
    assert (labels["src_ip"], labels["dst_ip"], labels["src_port"], labels["dst_port"]) == (
        veth.ip4_b, veth.ip4_a, str(sport), str(port))
    assert labels["reason"] in watch.prog.reasons.values() and labels["reason"].startswith("QDISC"), labels


def test_tcp_bad_checksum(watch, veth):
    """TCP_CSUM: segments with a broken checksum, sent as raw frames from host a; the kernel's
    TcpInCsumErrors agrees."""
    before = nstat("TcpInCsumErrors")
    raw = veth.raw_socket()
    try:
        for i in range(4):
            seg = bytearray(frames.ethernet(veth.mac("b"), veth.mac("a"),
                                            frames.ipv4(veth.ip4_a, veth.ip4_b, frames.tcp(33000, 33001, b"y" * 8,
                                                                                           flags=0x02, seq=i))))
            seg[ETH + IP4 + 16] ^= 0xFF  # the TCP checksum
            raw.send(bytes(seg))
    finally:
        raw.close()
    time.sleep(0.1)
    snap = watch.report()
    key = flow_of(veth.dev_b, "ingress", veth.ip4_a, veth.ip4_b, 33000, 33001, 6, "TCP_CSUM")
    assert drop_flows(snap, veth) == {key: 4}
    assert snap[(drops.BYTES, *key)] == 4 * (ETH + IP4 + 20 + 8)
    assert nstat("TcpInCsumErrors") - before == 4


def nstat(counter: str) -> int:
    """One of this namespace's SNMP counters (/proc/net/snmp), as nstat reads it."""
    proto = counter[:3]
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith(proto[0].upper() + proto[1:].lower() + ":")]
    names, values = lines[0], lines[1]
    return int(values[names.index(counter[3:])])


def test_cumulative_across_reports_and_nothing_between_drains(watch, veth):
    """Drops sent while drains run are all counted, each once: the totals over many reports equal
    what was sent, and no counter goes back."""
    port = closed_port()
    total = 0
    for _ in range(5):
        sport = send_udp(veth, port, 20)
        total += 20
        snap = watch.report()
    last = {}
    for samples in watch.reports:
        for s in samples:
            key = (s.name, *sorted(s.labels.items()))
            assert s.value >= last.get(key, 0)
            last[key] = s.value
    per_reason = {k: v for k, v in snap.items() if k[0] == drops.IFACE_PACKETS and ("reason", "NO_SOCKET") in k
                  and ("direction", "ingress") in k}
    assert list(per_reason.values()) == [total]
    assert sport


def test_ipv6_drop_under_its_flow(watch, veth):
    """IPv6: a datagram to a closed port is NO_SOCKET under its IPv6 flow, its bytes the whole frame."""
    port = closed_port()
    s = veth.socket("a", socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.bind((veth.ip6_a, 0))
        for _ in range(3):
            s.sendto(b"v" * 12, (veth.ip6_b, port))
        sport = s.getsockname()[1]
    finally:
        s.close()
    time.sleep(0.1)
    snap = watch.report()
    key = flow_of(veth.dev_b, "ingress", veth.ip6_a, veth.ip6_b, sport, port, 17, "NO_SOCKET")
    assert snap[(drops.PACKETS, *key)] == 3
    assert snap[(drops.BYTES, *key)] == 3 * (ETH + 40 + UDP + 12)
