"""Both directions, with the real agent on a real veth (issue "Both directions"): the agent on
host b counts what host a sends it as ingress (XDP) and what b sends as egress (TC, tcx or the
clsact hook), exactly, per flow; conservation holds per (interface, direction) at every report;
another tool's program on the egress hook keeps running, in its place; SIGTERM removes only ours.

Egress frames are crafted and sent from this namespace on an AF_PACKET socket bound to b's veth
end: they take the same path as the stack's own frames (dev_queue_xmit, then the egress hook).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from tests import frames
from tests.helpers.bpf import bpf_prerequisites
from tests.helpers.netns import AGENT, wait_for
from tests.kernel.test_agent import Agent, Capture, error_lines
from tests.kernel.test_conservation import quiet_baseline
from xtrace_agent.xdp import compiler, libbpf

pytestmark = pytest.mark.kernel

FLOW = {"xtrace_network_packets_total": 0, "xtrace_network_bytes_total": 1}
IFACE = {"xtrace_interface_packets_total": 0, "xtrace_interface_bytes_total": 1}
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (Python does not name it)


def check_directed_reports(reports: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """Conservation per (interface, direction) at every report, every series labelled with its
    direction, no counter going backwards; returns the last report's totals."""
    assert reports, "no report"
    last: dict[tuple, float] = {}
    totals: dict = {}
    for n, report in enumerate(reports):
        flows: dict[tuple[str, str], list[int]] = {}
        totals = {}
        for s in report["samples"]:
            name, labels, value = s["name"], s["labels"], s["value"]
            if name in FLOW or name in IFACE:
                assert labels.get("direction") in ("ingress", "egress"), (n, s)
                group = (labels["interface"], labels["direction"])
                if name in FLOW:
                    flows.setdefault(group, [0, 0])[FLOW[name]] += value
                else:
                    totals.setdefault(group, [0, 0])[IFACE[name]] = value
            if name.endswith("_total"):
                key = (name, *sorted(labels.items()))
                assert value >= last.get(key, 0), f"report {n}: {key} went back"
                last[key] = value
        assert flows == totals, f"report {n}: flows + other != interface totals per direction"
    return {k: tuple(v) for k, v in totals.items()}


def stopped(agent: Agent) -> tuple[dict, dict]:
    """Stop the agent, check its exit and every report; the last report's flow packets and bytes."""
    rc, err = agent.stop()
    assert rc == 0, err
    check_directed_reports(agent.reports)
    return agent.latest("xtrace_network_packets_total"), agent.latest("xtrace_network_bytes_total")


def directed(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


def flow(dev, direction, src, dst, sport, dport, proto=17, traffic_type="ethernet", **extra) -> tuple:
    return directed({"interface": dev, "direction": direction, "src_ip": src, "dst_ip": dst, "src_port": str(sport),
                     "dst_port": str(dport), "protocol": str(proto), "traffic_type": traffic_type,
                     **{k: str(v) for k, v in extra.items()}})


def egress_prog_ids(dev: str) -> list[int]:
    return libbpf.tcx_query(socket.if_nametoindex(dev))


def start(veth, *args: str, env: dict | None = None) -> Agent:
    agent = Agent("-i", veth.dev_b, "--direction", "ingress,egress", *args, env=env)
    try:
        wait_for(lambda: agent.reports or agent.proc.poll() is not None, what="the first report")
    except AssertionError:
        agent.proc.kill()
        raise
    assert agent.proc.poll() is None, agent.proc.stderr.read()
    return agent


def crafted(veth, sport_base: int, src_mac: bytes, dst_mac: bytes, src4: str, dst4: str, src6: str, dst6: str):
    """IPv4, IPv6, VLAN-tagged and RoCEv2 frames, with the number of times each is sent."""
    return [
        (frames.ethernet(dst_mac, src_mac, frames.ipv4(src4, dst4, frames.udp(sport_base, 9999, b"4" * 60))), 5,
         (src4, dst4, sport_base, 9999, 17, "ethernet", {})),
        (frames.ethernet(dst_mac, src_mac, frames.ipv6(src6, dst6, frames.udp(sport_base + 1, 9999, b"6" * 90))), 4,
         (src6, dst6, sport_base + 1, 9999, 17, "ethernet", {})),
        (frames.ethernet(dst_mac, src_mac, frames.ipv4(src4, dst4, frames.udp(sport_base + 2, 9999, b"v" * 40)),
                         vlans=[100]), 3, (src4, dst4, sport_base + 2, 9999, 17, "ethernet", {})),
        (frames.ethernet(dst_mac, src_mac, frames.roce(src4, dst4, opcode=0x04, dest_qp=0x2345, payload=b"r" * 64,
                                                       sport=sport_base + 3)), 6,
         (src4, dst4, sport_base + 3, 4791, 17, "roce", {"rdma_opcode": 4, "dest_qp": 0x2345})),
    ]


def test_each_end_counted_in_its_direction_exactly_ipv4_ipv6_vlan_roce(veth):
    bpf_prerequisites()
    agent = start(veth, "--interval", "0.05")
    try:
        mac_a, mac_b = veth.mac("a"), veth.mac("b")
        inbound = crafted(veth, 42001, mac_a, mac_b, veth.ip4_a, veth.ip4_b, veth.ip6_a, veth.ip6_b)
        outbound = crafted(veth, 43001, mac_b, mac_a, veth.ip4_b, veth.ip4_a, veth.ip6_b, veth.ip6_a)
        raw_a = veth.raw_socket()
        raw_b = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        raw_b.bind((veth.dev_b, 0))
        for _ in range(3):  # across several reports at the fastest interval
            for sock, sent in ((raw_a, inbound), (raw_b, outbound)):
                for frame, n, _ in sent:
                    for _ in range(n):
                        sock.send(frame)
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        packets, bytes_ = stopped(agent)
    for direction, sent in (("ingress", inbound), ("egress", outbound)):
        for frame, n, (src, dst, sport, dport, proto, ttype, extra) in sent:
            k = flow(veth.dev_b, direction, src, dst, sport, dport, proto, ttype, **extra)
            assert (packets.get(k), bytes_.get(k)) == (3 * n, 3 * n * len(frame)), (direction, k)
    # nothing of one direction leaked into the other
    ingress_ports = {dict(k)["src_port"] for k in packets if dict(k)["direction"] == "ingress"}
    assert not {str(43001 + i) for i in range(4)} & ingress_ports


def tcp_truth(frames_: list[tuple[bytes, int]], client: tuple, server: tuple) -> dict[str, list[int]]:
    """[packets, bytes] per direction (as seen on b: outgoing = egress) of one IPv4 TCP connection."""
    out = {"egress": [0, 0], "ingress": [0, 0]}
    for f, pkttype in frames_:
        if len(f) < 34 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        ihl = (f[14] & 0xF) * 4
        ends = ((socket.inet_ntoa(f[26:30]), *struct.unpack("!H", f[14 + ihl:16 + ihl])),
                (socket.inet_ntoa(f[30:34]), *struct.unpack("!H", f[16 + ihl:18 + ihl])))
        if set(ends) != {client, server}:
            continue
        side = out["egress" if pkttype == PACKET_OUTGOING else "ingress"]
        side[0] += 1
        side[1] += len(f)
    return out


class BothWays(Capture):
    """Every frame b's veth end sends and receives, with its packet type."""

    def __init__(self, dev: str):
        super().__init__(dev)
        # room for every frame of the test: a GSO frame is up to 64 KiB, the default buffer ~200 KiB
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)

    def drain(self) -> list[tuple[bytes, int]]:
        got = []
        while True:
            try:
                data, addr = self.sock.recvfrom(1 << 18)
            except TimeoutError:
                return got
            got.append((data, addr[2]))


def test_tcp_connection_both_directions_match_the_kernel(veth):
    """b connects to a: b's data and acks are egress, a's are ingress. The kernel's own view is
    an AF_PACKET tap on b's end (it sees each frame, incoming and outgoing, as the driver does;
    an outgoing GSO packet is one frame there, as in the egress hook and the tx counters)."""
    bpf_prerequisites()
    agent = start(veth, "--interval", "0.2")
    cap = BothWays(veth.dev_b)
    try:
        server = veth.socket("a", socket.AF_INET, socket.SOCK_STREAM)
        server.bind((veth.ip4_a, 9300))
        server.listen(1)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.bind((veth.ip4_b, 45001))
        client.connect((veth.ip4_a, 9300))
        conn, _ = server.accept()
        for size in (100, 20000, 150000):
            client.sendall(b"t" * size)
            got = 0
            while got < size:
                got += len(conn.recv(1 << 20))
            conn.sendall(b"r" * (size // 10))
            got = 0
            while got < size // 10:
                got += len(client.recv(1 << 20))
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        client.close()
        conn.recv(10)
        conn.close()
        server.close()
        time.sleep(0.5)
        truth = tcp_truth(cap.drain(), (veth.ip4_b, 45001), (veth.ip4_a, 9300))
    finally:
        packets, bytes_ = stopped(agent)
    out = flow(veth.dev_b, "egress", veth.ip4_b, veth.ip4_a, 45001, 9300, 6)
    back = flow(veth.dev_b, "ingress", veth.ip4_a, veth.ip4_b, 9300, 45001, 6)
    assert [packets[out], bytes_[out]] == truth["egress"]
    assert [packets[back], bytes_[back]] == truth["ingress"]
    # and the payload the socket says it sent (tcpi_bytes_acked) is all inside the egress bytes
    bytes_acked = struct.unpack_from("Q", info, 120)[0]
    assert 170100 <= bytes_acked <= 170101  # (+1: the SYN, on some kernels)
    assert bytes_[out] > bytes_acked


OTHER_TOOL = r"""
#include <uapi/linux/bpf.h>
BPF_ARRAY(seen, __u64, 1);
int other_tool(struct __sk_buff *skb)
{
    int zero = 0;
    __u64 *n = seen.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return -1;   /* TCX_NEXT: let the next program run */
}
"""


def seen_count(loaded) -> int:
    """The other tool's packet counter (its map, reached through its program)."""
    import ctypes

    (map_id,) = libbpf.prog_map_ids(loaded.programs["other_tool"])
    fd = libbpf.map_fd_by_id(map_id)
    try:
        value, key = ctypes.c_uint64(), ctypes.c_uint32(0)
        libbpf.lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
        return value.value
    finally:
        os.close(fd)


def send_out(veth, n: int, sport: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((veth.ip4_b, sport))
    for _ in range(n):
        s.sendto(b"o" * 64, (veth.ip4_a, 9999))
    s.close()


@pytest.fixture(scope="module")
def other_tool(tmp_path_factory):
    """Another tool's TC program (not ours: its name has no xtrace_ prefix), loaded, not attached."""
    bpf_prerequisites()
    src = tmp_path_factory.mktemp("other") / "other.c"
    src.write_text(OTHER_TOOL)
    loaded = compiler.compile_and_load(16, 1, source=str(src), programs=("other_tool",), tc=("other_tool",))
    yield loaded
    loaded.close()


def test_another_tools_tcx_program_keeps_working_and_its_place(veth, other_tool):
    other = other_tool
    ifindex = socket.if_nametoindex(veth.dev_b)
    link = libbpf.tcx_attach(other.programs["other_tool"], ifindex)
    other_id = libbpf.prog_info(other.programs["other_tool"]).id
    try:
        agent = start(veth, "--interval", "0.2")
        try:
            ids = egress_prog_ids(veth.dev_b)
            assert ids[0] == other_id and len(ids) == 2, ids  # ours after theirs
            assert libbpf.prog_name_by_id(ids[1]) == "xtrace_eth_tx"
            listed = subprocess.run([AGENT, "-l"], capture_output=True, text=True, timeout=60).stdout
            line = next(x for x in listed.splitlines() if x.split()[0] == veth.dev_b)
            assert f"tcx-egress=other_tool(id {other_id}),xtrace_eth_tx(id {ids[1]})" in line, line
            before = seen_count(other)
            send_out(veth, 25, 46001)
            time.sleep(0.5)
            assert seen_count(other) - before >= 25  # theirs still sees every packet
        finally:
            rc, err = agent.stop()
        assert rc == 0, err
        packets = agent.latest("xtrace_network_packets_total")
        assert packets[flow(veth.dev_b, "egress", veth.ip4_b, veth.ip4_a, 46001, 9999)] == 25
        assert egress_prog_ids(veth.dev_b) == [other_id]  # SIGTERM took only ours away
        before = seen_count(other)
        send_out(veth, 5, 46002)
        assert seen_count(other) - before >= 5
    finally:
        os.close(link)


def tc_filters(dev: str) -> list[tuple[int, str]]:
    """(priority, program name) of every bpf filter on the egress hook, in the order they run."""
    out = subprocess.run(["tc", "-j", "filter", "show", "dev", dev, "egress"], capture_output=True, text=True,
                         check=True).stdout
    return [(f["pref"], f["options"].get("bpf_name", "")) for f in json.loads(out or "[]")
            if f.get("kind") == "bpf" and "options" in f]


def test_clsact_hook_without_tcx_keeps_another_filter_and_removes_only_ours(veth, other_tool):
    """The hook of kernels before 6.6, forced here (XTRACE_EGRESS_HOOK=tc): a cls_bpf filter on
    clsact egress, after another tool's filter, which keeps running and stays after we leave."""
    ifindex = socket.if_nametoindex(veth.dev_b)
    libbpf.tc_attach(other_tool.programs["other_tool"], ifindex, handle=1, priority=1)
    agent = start(veth, "--interval", "0.2", env={"XTRACE_EGRESS_HOOK": "tc"})
    try:
        filters = tc_filters(veth.dev_b)
        assert [p for p, _ in filters] == [1, 0xC0DE] and "xtrace_eth_tx" in filters[1][1], filters
        assert egress_prog_ids(veth.dev_b) == []  # tc, not tcx
        before = seen_count(other_tool)
        send_out(veth, 12, 47001)
        time.sleep(0.5)
        assert seen_count(other_tool) - before >= 12
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    check_directed_reports(agent.reports)
    packets = agent.latest("xtrace_network_packets_total")
    assert packets[flow(veth.dev_b, "egress", veth.ip4_b, veth.ip4_a, 47001, 9999)] == 12
    assert [p for p, _ in tc_filters(veth.dev_b)] == [1]


def test_ingress_only_keeps_series_without_direction_label(veth):
    """The default: no TC program anywhere, and series exactly as before egress existed."""
    bpf_prerequisites()
    agent = Agent("-i", veth.dev_b, "--interval", "0.1")
    try:
        wait_for(lambda: agent.reports, what="the first report")
        assert egress_prog_ids(veth.dev_b) == []
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    for s in agent.reports[-1]["samples"]:
        assert "direction" not in s["labels"], s


def test_a_killed_agent_leaves_no_egress_program_and_a_second_live_one_is_refused(veth):
    """A tcx link lives as long as the agent's fd: SIGKILL takes it away with the process. While an
    agent lives, another one asked to count the same interface's egress exits 1 naming it."""
    bpf_prerequisites()
    first = Agent("-i", veth.dev_b, "--direction", "egress", "--interval", "0.2")
    try:
        wait_for(lambda: first.reports or first.proc.poll() is not None, what="the first report")
        assert len(egress_prog_ids(veth.dev_b)) == 1
        second = subprocess.run([AGENT, "-i", veth.dev_b, "--direction", "egress", "--count", "1",
                                 "--http-listen", ""], capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stderr
        errors = error_lines(second.stderr)
        assert len(errors) == 1 and f"pid {first.proc.pid}" in errors[0], second.stderr
    finally:
        first.proc.kill()
        first.proc.wait(30)
    assert egress_prog_ids(veth.dev_b) == []


def test_the_daemonsets_capabilities_are_enough_for_both_directions(veth):
    """The agent as the rendered DaemonSet runs it: root with only CAPABILITIES in its bounding set."""
    from xtrace_operator.render import CAPABILITIES

    bpf_prerequisites()
    caps = ",".join(f"+{c.lower()}" for c in CAPABILITIES)
    r = subprocess.run(["setpriv", f"--bounding-set=-all,{caps}", AGENT, "-i", veth.dev_b, "--direction",
                        "ingress,egress", "--count", "2", "--interval", "0.2", "--http-listen", "", "--output", "json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    attached = {tuple(sorted(s["labels"].items())): s["value"] for s in json.loads(r.stdout.splitlines()[-1])["samples"]
                if s["name"] == "xtrace_xdp_attached"}
    assert attached[(("direction", "egress"), ("interface", veth.dev_b), ("mode", "tcx"))] == 1
    assert attached[(("direction", "ingress"), ("interface", veth.dev_b), ("mode", "native"))] == 1


EGRESS_SENDER = """
import socket, sys
n, first_port, flows, src, dst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
addrs = [(dst, first_port + i) for i in range(flows)]
sent = 0
for i in range(n):
    sent += s.sendto(b"e" * 18, addrs[i % flows]) > 0
print(sent)
"""


def tx(dev: str) -> int:
    """Frames the veth transmitted or dropped on the way to its peer: every one passed the egress hook."""
    stats = json.loads(subprocess.run(["ip", "-s", "-j", "link", "show", "dev", dev], capture_output=True, text=True,
                                      check=True).stdout)[0]["stats64"]["tx"]
    return stats["packets"] + stats["dropped"]


def test_egress_under_load_on_two_cpus_every_packet_in_its_flow(veth):
    """Two senders on this host, pinned to two CPUs, 300k datagrams over 100 flows, drained every
    0.05 s: every datagram the kernel accepted is in its egress flow, conservation holds at every
    report, and the egress total is what the veth transmitted (or dropped after the hook)."""
    import sys

    bpf_prerequisites()
    cpus = sorted(os.sched_getaffinity(0))[:2]
    agent = start(veth, "--interval", "0.05")
    try:
        before, first = quiet_baseline(agent, lambda: tx(veth.dev_b))
        senders = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", EGRESS_SENDER, "150000",
                                     str(30000 + 50 * i), "50", veth.ip4_b, veth.ip4_a], stdout=subprocess.PIPE,
                                    text=True) for i, cpu in enumerate(cpus)]
        accepted = sum(int(s.communicate(timeout=120)[0]) for s in senders)
        time.sleep(0.2)
        sent_by_veth = tx(veth.dev_b) - before
    except BaseException:
        agent.proc.kill()
        raise
    rc, err = agent.stop()
    assert rc == 0, err
    totals = check_directed_reports(agent.reports)
    assert accepted == 150000 * len(cpus)
    base = {(s["labels"]["interface"], s["labels"]["direction"]): s["value"] for s in first["samples"]
            if s["name"] == "xtrace_interface_packets_total"}
    group = (veth.dev_b, "egress")
    assert totals[group][0] - base.get(group, 0) == sent_by_veth
    packets = agent.latest("xtrace_network_packets_total")
    ours = {k: v for k, v in packets.items()
            if dict(k)["direction"] == "egress" and dict(k)["src_ip"] == veth.ip4_b and dict(k)["protocol"] == "17"}
    assert len(ours) == 50 * len(cpus) and sum(ours.values()) == accepted
    assert len(agent.reports) > 5, "the tables were swapped while the senders ran"


def test_egress_follows_an_interface_recreated_under_the_agent(veth):
    """The veth deleted and made again (new ifindex): egress is attached again within an interval
    and the flow's series goes on; the link on the deleted device is let go."""
    bpf_prerequisites()
    agent = start(veth, "--interval", "0.2")
    try:
        send_out(veth, 4, 48001)
        time.sleep(0.5)
        veth.delete_link()
        time.sleep(0.5)
        assert agent.proc.poll() is None
        veth.create_link()
        wait_for(lambda: len(egress_prog_ids(veth.dev_b)) == 1, timeout=5, what="egress attached again")
        send_out(veth, 6, 48001)
        time.sleep(0.5)
    finally:
        packets, _ = stopped(agent)
    assert packets[flow(veth.dev_b, "egress", veth.ip4_b, veth.ip4_a, 48001, 9999)] == 10
    assert egress_prog_ids(veth.dev_b) == []
