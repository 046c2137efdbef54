"""The real xtrace-agent binary on a real kernel: XDP on a veth, traffic from a test namespace.

Counts are asserted exactly. For kernel-generated TCP the expected numbers come from an
AF_PACKET capture on the same veth (it sees every frame XDP passed), not from guesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from tests.helpers.netns import AGENT, VethPair, ip, readyz, wait_for, xdp_prog
from tests.helpers.vm import free_port
from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm

pytestmark = pytest.mark.kernel

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Agent:
    """A running xtrace-agent with JSON output, its reports collected by a reader thread."""

    def __init__(self, *args: str, env: dict | None = None):
        http = [] if any(a == "--config" for a in args) else ["--http-listen", ""]
        self.proc = subprocess.Popen([AGENT, "--output", "json", *http, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.reports: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.reports.append(json.loads(line))

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc, self.proc.stderr.read()

    def latest(self, name: str) -> dict[tuple, float]:
        """Values of metric `name` in the newest report, keyed by sorted label items."""
        if not self.reports:
            return {}
        return {tuple(sorted(s["labels"].items())): s["value"]
                for s in self.reports[-1]["samples"] if s["name"] == name}


_PROGRESS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")


def error_lines(stderr: str) -> list[str]:
    """stderr without the agent's progress log (INFO: headers compiled against, attached...):
    what must be exactly one line when the agent refuses to run."""
    return [line for line in stderr.strip().splitlines() if not _PROGRESS.match(line)]


def flow_labels(dev, src, dst, sport, dport, proto, traffic_type="ethernet", **extra):
    labels = {"interface": dev, "src_ip": src, "dst_ip": dst, "src_port": str(sport), "dst_port": str(dport),
              "protocol": str(proto), "traffic_type": traffic_type, **{k: str(v) for k, v in extra.items()}}
    return tuple(sorted(labels.items()))


def start_attached(veth: VethPair, *args: str) -> Agent:
    agent = Agent("-i", veth.dev_b, "--interval", "0.3", *args)
    try:
        wait_for(lambda: xdp_prog(veth.dev_b) or agent.proc.poll() is not None, what="XDP attach")
    except AssertionError:
        agent.proc.kill()
        raise
    assert agent.proc.poll() is None, agent.proc.stderr.read()
    return agent


class Capture:
    """Frames arriving on the agent's veth end, as the kernel saw them after XDP passed them."""

    def __init__(self, dev: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((dev, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                return self.frames
            if addr[2] != PACKET_OUTGOING:
                self.frames.append(data)


def tcp_flows(frames: list[bytes]) -> dict[tuple, list[int]]:
    """(src, dst, sport, dport) -> [packets, bytes] for IPv4/TCP frames (untagged)."""
    out: dict[tuple, list[int]] = {}
    for f in frames:
        if len(f) < 34 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        ihl = (f[14] & 0xF) * 4
        sport, dport = struct.unpack("!HH", f[14 + ihl:18 + ihl])
        key = (socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34]), sport, dport)
        cur = out.setdefault(key, [0, 0])
        cur[0] += 1
        cur[1] += len(f)
    return out


def test_udp_v4_v6_and_tcp_counted_exactly(veth):
    agent = start_attached(veth)
    cap = Capture(veth.dev_b)
    try:
        s4 = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        s4.bind((veth.ip4_a, 40001))
        for _ in range(7):
            s4.sendto(b"u" * 100, (veth.ip4_b, 9999))
        s6 = veth.socket("a", socket.AF_INET6, socket.SOCK_DGRAM)
        s6.bind((veth.ip6_a, 40002))
        for _ in range(5):
            s6.sendto(b"v" * 200, (veth.ip6_b, 9998))
        # real kernel TCP: a connection, some data, a close
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind((veth.ip4_b, 9997))
        server.listen(1)
        client = veth.socket("a", socket.AF_INET, socket.SOCK_STREAM)
        client.bind((veth.ip4_a, 40003))
        client.connect((veth.ip4_b, 9997))
        conn, _ = server.accept()
        for _ in range(3):
            client.sendall(b"t" * 1000)
            conn.recv(4096)
        client.close()
        conn.recv(10)
        conn.close()
        server.close()
        time.sleep(0.3)
        truth = tcp_flows(cap.drain())
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    packets = agent.latest("xtrace_network_packets_total")
    bytes_ = agent.latest("xtrace_network_bytes_total")
    udp4 = flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 40001, 9999, 17)
    assert (packets[udp4], bytes_[udp4]) == (7, 7 * (14 + 20 + 8 + 100))
    udp6 = flow_labels(veth.dev_b, veth.ip6_a, veth.ip6_b, 40002, 9998, 17)
    assert (packets[udp6], bytes_[udp6]) == (5, 5 * (14 + 40 + 8 + 200))
    tcp = flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 40003, 9997, 6)
    want = truth[(veth.ip4_a, veth.ip4_b, 40003, 9997)]
    assert want[0] >= 5  # handshake, data, fin at least
    assert [packets[tcp], bytes_[tcp]] == want
    # interface totals hold at least every flow packet (plus anything not tracked per flow)
    iface = agent.latest("xtrace_interface_packets_total")[(("interface", veth.dev_b),)]
    assert iface >= 7 + 5 + want[0]
    assert xdp_prog(veth.dev_b) is None, "SIGTERM must detach"


def test_text_output_is_the_old_format(veth):
    agent = subprocess.Popen([AGENT, "-i", veth.dev_b, "--interval", "0.3", "--http-listen", ""],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: xdp_prog(veth.dev_b), what="XDP attach")
        s4 = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        s4.bind((veth.ip4_a, 40011))
        for _ in range(3):
            s4.sendto(b"x" * 58, (veth.ip4_b, 9999))
        time.sleep(0.8)
    finally:
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert f"{veth.ip4_a}:40011 -> {veth.ip4_b}:9999 proto=17 packets=3 bytes=300" in out.splitlines()


def test_sigkill_leaves_program_that_next_agent_replaces(veth):
    agent = start_attached(veth)
    stale = xdp_prog(veth.dev_b)
    assert stale["name"].startswith("xtrace_")
    agent.proc.kill()
    agent.proc.wait(10)
    assert xdp_prog(veth.dev_b) == stale, "netlink XDP survives its process: the next agent must clean up"
    again = start_attached(veth)
    wait_for(lambda: (xdp_prog(veth.dev_b) or {}).get("id") not in (None, stale["id"]), what="replacement")
    rc, err = again.stop()
    assert rc == 0, err
    assert xdp_prog(veth.dev_b) is None


def test_foreign_program_is_never_replaced(veth):
    # a program of another tool, attached by a process that then exits (netlink keeps it attached)
    child = subprocess.run([os.path.join(os.path.dirname(AGENT), "python"), "-m", "tests.helpers.foreign_xdp",
                            veth.dev_b], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    foreign = xdp_prog(veth.dev_b)
    assert foreign and foreign["name"] == "foreign_tool"
    r = subprocess.run([AGENT, "-i", veth.dev_b, "--count", "1", "--interval", "0.1", "--http-listen", ""],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    err = error_lines(r.stderr)
    assert len(err) == 1 and str(foreign["id"]) in err[0] and "Traceback" not in r.stderr, r.stderr
    assert xdp_prog(veth.dev_b)["id"] == foreign["id"], "the foreign program must stay"


def test_interface_recreated_under_running_agent(veth):
    agent = start_attached(veth)
    try:
        def send(n, port):
            s = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((veth.ip4_a, port))
            for _ in range(n):
                s.sendto(b"r" * 100, (veth.ip4_b, 9999))
            s.close()

        send(4, 40021)
        time.sleep(0.5)
        veth.delete_link()
        time.sleep(0.7)
        assert agent.proc.poll() is None, "the agent never exits because a link vanished"
        veth.create_link()
        wait_for(lambda: xdp_prog(veth.dev_b), timeout=5, what="re-attach within an interval")
        send(6, 40021)
        time.sleep(0.6)
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    key = flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 40021, 9999, 17)
    assert agent.latest("xtrace_network_packets_total")[key] == 10, "counting goes on across the recreate"


def test_config_file_waits_for_a_missing_interface(veth, tmp_path):
    missing = f"xl{veth.tag}"
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"mode: xdp\ninterfaces: [{veth.dev_b}, {missing}]\ninterval: 0.3\n"
                   f"httpListen: '127.0.0.1:{port}'\n")
    agent = Agent("--config", str(cfg))
    try:
        wait_for(lambda: xdp_prog(veth.dev_b), what="attach to the present interface")
        time.sleep(0.5)
        assert agent.proc.poll() is None
        # reported: not ready, with the interface and the reason
        code, body = readyz(port)
        assert code == 503 and f"xdp:{missing}: interface not found" in body, body
        ip("link", "add", missing, "type", "veth", "peer", "name", f"xm{veth.tag}")
        try:
            wait_for(lambda: xdp_prog(missing), timeout=5, what="attach once the interface appears")
            code, body = readyz(port)  # attached, but its peer is down: still not ready, and why
            assert code == 503 and f"xdp:{missing}: link down" in body, body
            ip("link", "set", missing, "up")
            ip("link", "set", f"xm{veth.tag}", "up")
            wait_for(lambda: readyz(port)[0] == 200, timeout=5, what="ready once attached and up")
            # ready, and still naming the kernel headers the running program was compiled against
            code, body = readyz(port)
            assert code == 200 and body.startswith("ok\n# kernel headers: ") and "headers" in body[20:], body
        finally:
            rc, err = agent.stop()
            ip("link", "del", missing, check=False)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
    assert rc == 0
    assert "interface not found" in err


def test_interface_down_is_a_usage_error(veth):
    ip("link", "set", veth.dev_b, "down")
    r = subprocess.run([AGENT, "-i", veth.dev_b, "--count", "1", "--http-listen", ""],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is down" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert xdp_prog(veth.dev_b) is None


def test_no_permission_is_one_line_and_nothing_attached(veth):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", AGENT,
                        "-i", veth.dev_b, "--count", "1", "--http-listen", ""],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert xdp_prog(veth.dev_b) is None


def test_vlan_qinq_roce_and_malformed_frames(veth):
    """Frames crafted on a raw socket (this kernel has no 802.1Q device) cross the veth to the agent."""
    from tests import frames

    agent = start_attached(veth)
    try:
        raw = veth.raw_socket()
        dst, src = veth.mac("b"), veth.mac("a")
        vlan = frames.ethernet(dst, src, frames.ipv4(veth.ip4_a, veth.ip4_b, frames.udp(41001, 9999, b"v" * 50)),
                               vlans=[100])
        qinq = frames.ethernet(dst, src, frames.ipv6(veth.ip6_a, veth.ip6_b, frames.udp(41002, 9999, b"q" * 30)),
                               vlans=[200, 100])
        roce = frames.ethernet(dst, src, frames.roce(veth.ip4_a, veth.ip4_b, opcode=0x04, dest_qp=0x1234,
                                                     payload=b"r" * 64, sport=41003))
        ipv4 = frames.ethernet(dst, src, frames.ipv4(veth.ip4_a, veth.ip4_b, frames.udp(41004, 9999, b"m" * 20)))
        cut = ipv4[:14 + 10]  # IPv4 header cut short
        bad_ihl = bytearray(ipv4)
        bad_ihl[14] = 0x43  # IHL 3 (< 5): invalid
        sent = [(vlan, 3), (qinq, 2), (roce, 4), (cut, 5), (bytes(bad_ihl), 2)]
        for frame, n in sent:
            for _ in range(n):
                raw.send(frame)
        time.sleep(0.6)
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    packets = agent.latest("xtrace_network_packets_total")
    bytes_ = agent.latest("xtrace_network_bytes_total")
    k = flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 41001, 9999, 17)
    assert (packets[k], bytes_[k]) == (3, 3 * len(vlan)) and len(vlan) == 14 + 4 + 20 + 8 + 50
    k = flow_labels(veth.dev_b, veth.ip6_a, veth.ip6_b, 41002, 9999, 17)
    assert (packets[k], bytes_[k]) == (2, 2 * len(qinq)) and len(qinq) == 14 + 8 + 40 + 8 + 30
    k = flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 41003, 4791, 17, "roce", rdma_opcode=4, dest_qp=0x1234)
    assert (packets[k], bytes_[k]) == (4, 4 * len(roce))
    malformed = agent.latest("xtrace_xdp_malformed_packets_total")[()]
    assert malformed == 7
    iface_packets = agent.latest("xtrace_interface_packets_total")[(("interface", veth.dev_b),)]
    iface_bytes = agent.latest("xtrace_interface_bytes_total")[(("interface", veth.dev_b),)]
    assert iface_packets >= sum(n for _, n in sent)
    assert iface_bytes >= sum(len(f) * n for f, n in sent)
    assert not any(41004 == int(dict(k)["src_port"]) for k in packets), "malformed frames make no flow"


def test_several_interfaces_at_once(veth):
    second = VethPair(tag=veth.tag[:4] + "s2", n=(veth.n + 100) % 250 + 1)
    second.create()
    try:
        agent = Agent("-i", f"{veth.dev_b},{second.dev_b}", "--interval", "0.3")
        try:
            wait_for(lambda: xdp_prog(veth.dev_b) and xdp_prog(second.dev_b), what="attach to both")
            for pair, n in ((veth, 2), (second, 3)):
                s = pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((pair.ip4_a, 40031))
                for _ in range(n):
                    s.sendto(b"m" * 100, (pair.ip4_b, 9999))
            time.sleep(0.6)
        finally:
            rc, err = agent.stop()
        assert rc == 0, err
        packets = agent.latest("xtrace_network_packets_total")
        assert packets[flow_labels(veth.dev_b, veth.ip4_a, veth.ip4_b, 40031, 9999, 17)] == 2
        assert packets[flow_labels(second.dev_b, second.ip4_a, second.ip4_b, 40031, 9999, 17)] == 3
        assert xdp_prog(veth.dev_b) is None and xdp_prog(second.dev_b) is None
    finally:
        second.destroy()


def test_every_self_metric_of_its_stages_is_in_the_first_report(veth):
    """At 0, before anything went wrong: alert rules can be written against them from the start."""
    r = subprocess.run([AGENT, "-i", veth.dev_b, "--count", "1", "--interval", "0.1", "--output", "json",
                        "--http-listen", "", "--remote-write-url", "http://127.0.0.1:9/api/v1/write"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    samples = json.loads(r.stdout.splitlines()[0])["samples"]
    values = {(s["name"], s["labels"].get("reason", "")): s["value"] for s in samples}
    # every self-metric this agent's stages record (the registry says which), and every data metric
    # of its source, exists from the start; no self-metric counter has counted anything yet
    stages = ("pipeline", "xdp", "remote_write")
    expected = [m for m in sm.BY_NAME.values() if m.source in stages and m.at_start]
    expected += [m for m in dm.BY_NAME.values() if m.source == "xdp" and m.at_start]
    assert len(expected) >= 29  # a filter gone wrong would make this test vacuous
    have = {s["name"] for s in samples}
    assert sorted(m.name for m in expected if m.name not in have) == []
    # (data counters may have counted a stray frame of the fresh veth; xtrace_reports_total counts this report)
    counters = {m.name for m in expected if m.kind == "counter" and m.name in sm.BY_NAME} - {sm.REPORTS.name}
    assert [s for s in samples if s["name"] in counters and s["value"] != 0] == []
    assert values[("xtrace_remote_write_queue_samples", "")] == 0
    for reason in ("malformed", "non_ip", "table_full"):
        assert values[("xtrace_xdp_untracked_packets_total", reason)] == 0
    assert ("xtrace_remote_write_samples_dropped_total", "queue_full") in values
    assert ("xtrace_flows_tracked", "") in values and ("xtrace_interface_packets_total", "") in values
