"""TCP retransmits and RTT on a lossy link (issue "What went wrong with the packets").

A TCP transfer from host a to host b, with a netfilter rule on b's receiving veth end dropping
every Nth segment (nft `numgen inc mod N`): the receiver side loses them, so every retransmit
leaves the sender's stack (no local queue drop, whose retransmit would have failed). The
watched interface is a's veth end in a's namespace, where the socket lives: the programs
attribute by (network namespace, ifindex), and a's namespace holds no other TCP socket, so its
TcpRetransSegs delta is this socket's. The oracle is the kernel: that delta, the socket's own
total_retrans and srtt as `ss -ti` prints them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import need
from tests.helpers.bpf import bpf_prerequisites
from tests.helpers.netns import run_in_netns
from xtrace_agent import tcp
from xtrace_agent.xdp import layout

pytestmark = pytest.mark.kernel

LOSS_EVERY = 25
PAYLOAD = 3 << 20


@pytest.fixture(scope="module")
def events():
    bpf_prerequisites()
    from xtrace_agent.xdp.btf import VMLINUX
    from xtrace_agent.xdp.events import EventsProgram

    need(VMLINUX.exists(), "the kernel has no BTF (/sys/kernel/btf/vmlinux)")
    with EventsProgram.load(("tcp",)) as prog:
        prog.attach()
        yield prog


def snmp(ns: str, counter: str) -> int:
    """A Tcp: counter of namespace `ns` (/proc/net/snmp, as nstat reads it)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                         check=True).stdout
    names, values = [ln.split() for ln in out.splitlines() if ln.startswith("Tcp:")][:2]
    return int(values[names.index(counter)])


def ss_info(ns: str, dport: int) -> dict[str, float]:
    """srtt and rttvar (ms) and total retransmits of the socket to dport, as `ss -ti` prints them."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tinH", "dst", f":{dport}"], capture_output=True,
                         text=True, check=True).stdout
    info: dict[str, float] = {}
    m = re.search(r"\brtt:([\d.]+)/([\d.]+)", out)
    if m:
        info["rtt"], info["rttvar"] = float(m[1]), float(m[2])
    m = re.search(r"\bretrans:\d+/(\d+)", out)
    info["retrans"] = int(m[1]) if m else 0
    return info


def lose_every_nth(veth, port: int) -> None:
    """An nft table xt<tag> on host b dropping every LOSS_EVERY-th TCP segment to `port` from a."""
    table = f"xt{veth.tag}"
    subprocess.run(["nft", "add", "table", "inet", table], check=True)
    subprocess.run(["nft", "add", "chain", "inet", table, "in", "{ type filter hook input priority 0 ; }"], check=True)
    subprocess.run(["nft", "add", "rule", "inet", table, "in", "iifname", veth.dev_b, "tcp", "dport", str(port),
                    "numgen", "inc", "mod", str(LOSS_EVERY), "==", "0", "drop"], check=True)


def test_retransmits_and_rtt_match_the_kernel(events, veth):
    need(shutil.which("nft") is not None, "nft is not installed (apt-get install nftables)")
    need(shutil.which("ss") is not None, "ss (iproute2) is not installed")
    netns = os.stat(f"/run/netns/{veth.ns_a}").st_ino
    ifindex = run_in_netns(veth.ns_a, socket.if_nametoindex, veth.dev_a)
    for place in (ifindex, ifindex | layout.EGRESS):
        events.watch(place, netns=netns)
    events.drain_tcp()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((veth.ip4_b, 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        lose_every_nth(veth, port)
        received = []
        reader = threading.Thread(target=receive_all, args=(server, received))
        reader.start()
        before = snmp(veth.ns_a, "RetransSegs")
        client, samples = transfer(veth, port)
        reader.join(30)
        assert received == [PAYLOAD]
        kernel = snmp(veth.ns_a, "RetransSegs") - before
        final = total_retrans(client)
        cport = client.getsockname()[1]
        client.close()
    finally:
        subprocess.run(["nft", "delete", "table", "inet", f"xt{veth.tag}"], capture_output=True)
        server.close()
        for place in (ifindex, ifindex | layout.EGRESS):
            events.unwatch(place)

    def group_of(raw):
        i, direction = layout.split_ifindex(raw)
        return (veth.dev_a if i == ifindex else f"ifindex{i}", direction)

    acct = tcp.TcpAccounting(max_flows=100, idle_timeout=3600, directed=True)
    seen = tcp.observe(events.drain_tcp(), group_of, ((veth.dev_a, "ingress"), (veth.dev_a, "egress")))
    snap = {(s.name, *sorted(s.labels.items())): s.value for s in acct.report(seen, time.time())}
    flow = {"interface": veth.dev_a, "direction": "egress", "src_ip": veth.ip4_a, "dst_ip": veth.ip4_b,
            "src_port": str(cport), "dst_port": str(port), "protocol": "6", "traffic_type": "ethernet"}
    key = tuple(sorted(flow.items()))
    ours = snap[(tcp.RETRANS, *key)]
    assert kernel > 0, "the lossy link made no retransmit"
    assert ours == kernel == final, (ours, kernel, final)
    assert max(s["retrans"] for s in samples) <= ours  # what ss showed on the way
    group = (("direction", "egress"), ("interface", veth.dev_a))
    assert snap[(tcp.IFACE_RETRANS, *group)] == ours
    # RTT: the flow's mean srtt lies within what ss saw (srtt +- rttvar over the transfer)
    count, total = snap[(tcp.FLOW_RTT + "_count", *key)], snap[(tcp.FLOW_RTT + "_sum", *key)]
    assert count > 0
    low = min(s["rtt"] - s["rttvar"] for s in samples) / 1e3
    high = max(s["rtt"] + s["rttvar"] for s in samples) / 1e3
    assert low <= total / count <= high, (total / count, low, high, samples[:3])
    # the histogram: cumulative, its +Inf bucket the count, and every observation at or below
    # the bucket that holds the largest srtt ss saw
    buckets = {dict(k[1:])["le"]: v for k, v in snap.items() if k[0] == tcp.RTT + "_bucket"
               and dict(k[1:]).get("direction") == "egress"}
    assert buckets["+Inf"] == snap[(tcp.RTT + "_count", *group)] == count
    values = [buckets[tcp.le_text(b)] for b in tcp.BUCKETS]
    assert values == sorted(values)
    # ss samples the socket now and then, the tracepoint sees every srtt update: the largest srtt can
    # fall between two samples (after a retransmit), so the bound is ss's largest srtt + rttvar, one
    # power-of-two bucket up (the full CI run once saw 11 of 67 observations above ss's largest srtt)
    bound = 2 * max(s["rtt"] + s["rttvar"] for s in samples) / 1e3
    top = next((tcp.le_text(b) for b in tcp.BUCKETS if b >= bound), "+Inf")
    assert buckets[top] == count


def total_retrans(sock: socket.socket) -> int:
    """tcpi_total_retrans of struct tcp_info (linux/tcp.h: the u32 at byte 100), the socket's own
    count; ss prints it as retrans:x/<total>, but no longer once the connection is in TIME_WAIT."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[100:104], "little")


def receive_all(server: socket.socket, out: list) -> None:
    conn, _ = server.accept()
    n = 0
    with conn:
        while chunk := conn.recv(1 << 16):
            n += len(chunk)
    out.append(n)


def transfer(veth, port: int):
    """Send PAYLOAD from host a, asking `ss -ti` on the way; returns the (open) socket and what ss said."""
    client = veth.socket("a", socket.AF_INET, socket.SOCK_STREAM)
    run_in_netns(veth.ns_a, client.connect, (veth.ip4_b, port))
    samples: list[dict] = []
    data = b"z" * (1 << 16)
    for i in range(PAYLOAD // len(data)):
        client.sendall(data)
        if i % 4 == 3:  # what ss says of the socket while it sends
            samples.append(ss_info(veth.ns_a, port))
    client.shutdown(socket.SHUT_WR)
    client.settimeout(30)
    assert client.recv(1) == b""  # the receiver read everything and closed
    return client, [s for s in samples if "rtt" in s]
