"""The agent binary with --drops and --tcp (and the same from --config) on a real veth: drops
under their flows with the kernel's reason and conservation per (interface, direction, reason)
at every report; TCP retransmits and the RTT histogram for a socket of this host whose traffic
crosses the watched interface; /readyz names the attached tracepoints; a kernel without BTF
refuses the features in one line (exit 2 on the command line, a not-ready reason from
--config while traffic is still counted)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers.bpf import bpf_prerequisites
from tests.helpers.netns import readyz, wait_for, xdp_prog
from tests.helpers.vm import free_port
from tests.kernel.test_agent import Agent, error_lines
from tests.kernel.test_drops import closed_port, send_udp

pytestmark = pytest.mark.kernel

DROP_METRICS = {"xtrace_drop_packets_total": 0, "xtrace_drop_bytes_total": 1}
IFACE_METRICS = {"xtrace_interface_drop_packets_total": 0, "xtrace_interface_drop_bytes_total": 1}


def check_drop_reports(reports: list[dict]) -> None:
    """flows + other == the interface total per (interface, direction, reason), at every report."""
    assert reports
    for n, report in enumerate(reports):
        flows: dict = {}
        totals: dict = {}
        for s in report["samples"]:
            where = (s["labels"].get("interface"), s["labels"].get("direction"), s["labels"].get("reason"))
            if s["name"] in DROP_METRICS:
                flows.setdefault(where, [0, 0])[DROP_METRICS[s["name"]]] += s["value"]
            elif s["name"] in IFACE_METRICS:
                totals.setdefault(where, [0, 0])[IFACE_METRICS[s["name"]]] = s["value"]
        assert flows == totals, f"report {n}"


def tcp_exchange(veth) -> int:
    """A TCP connection from this host to host a moving 1 MiB; returns the local port."""
    server = veth.socket("a", socket.AF_INET, socket.SOCK_STREAM)
    server.bind((veth.ip4_a, 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            while conn.recv(1 << 16):
                pass

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection((veth.ip4_a, server.getsockname()[1])) as c:
        c.sendall(b"q" * (1 << 20))
        port = c.getsockname()[1]
    t.join(10)
    server.close()
    return port


def test_agent_with_drops_and_tcp(veth):
    bpf_prerequisites()
    port = free_port()
    agent = Agent("-i", veth.dev_b, "--interval", "0.3", "--direction", "ingress,egress", "--drops", "--tcp",
                  "--http-listen", f"127.0.0.1:{port}")
    try:
        wait_for(lambda: xdp_prog(veth.dev_b) or agent.proc.poll() is not None, what="attach", timeout=60)
        wait_for(lambda: readyz(port)[0] == 200, what="ready", timeout=30)
        code, body = readyz(port)
        assert "# tracepoints: skb:kfree_skb, tcp:tcp_probe, tcp:tcp_retransmit_skb" in body, body
        dport = closed_port()
        sport = send_udp(veth, dport, 7)
        lport = tcp_exchange(veth)
        time.sleep(1.0)
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    check_drop_reports(agent.reports)
    drop = {"interface": veth.dev_b, "direction": "ingress", "src_ip": veth.ip4_a, "dst_ip": veth.ip4_b,
            "src_port": str(sport), "dst_port": str(dport), "protocol": "17", "traffic_type": "ethernet",
            "reason": "NO_SOCKET"}
    assert agent.latest("xtrace_drop_packets_total")[tuple(sorted(drop.items()))] == 7
    flow = {"interface": veth.dev_b, "direction": "egress", "src_ip": veth.ip4_b, "dst_ip": veth.ip4_a,
            "src_port": str(lport), "protocol": "6", "traffic_type": "ethernet"}
    retrans = [v for k, v in agent.latest("xtrace_tcp_retransmits_total").items() if flow.items() <= dict(k).items()]
    assert retrans == [0]  # no loss on this link: the series is there, at 0
    count = agent.latest("xtrace_tcp_rtt_seconds_count")[(("direction", "egress"), ("interface", veth.dev_b))]
    assert count > 0
    inf = agent.latest("xtrace_tcp_rtt_seconds_bucket")[(("direction", "egress"), ("interface", veth.dev_b),
                                                          ("le", "+Inf"))]
    assert inf == count


def test_no_btf_refused_in_one_line_on_the_command_line(veth):
    bpf_prerequisites()
    agent = Agent("-i", veth.dev_b, "--interval", "0.3", "--drops", "--count", "1", env={"XTRACE_BTF": "/nonexistent"})
    rc = agent.proc.wait(60)
    err = agent.proc.stderr.read()
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1 and "xdp.drops needs the running kernel's BTF" in lines[0], err


def test_no_btf_from_config_is_a_not_ready_reason_and_traffic_still_counts(veth, tmp_path):
    bpf_prerequisites()
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"mode: xdp\ninterfaces: [{veth.dev_b}]\ninterval: 0.3\nhttpListen: '127.0.0.1:{port}'\n"
                   "xdp:\n  tcp: true\n")
    agent = Agent("--config", str(cfg), env={"XTRACE_BTF": "/nonexistent"})
    try:
        wait_for(lambda: xdp_prog(veth.dev_b) or agent.proc.poll() is not None, what="attach", timeout=60)
        wait_for(lambda: readyz(port)[0] == 503, what="not ready", timeout=10)
        code, body = readyz(port)
        assert "xdp:events: xdp.tcp needs the running kernel's BTF" in body, body
        send_udp(veth, closed_port(), 3)
        time.sleep(0.8)
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    assert sum(agent.latest("xtrace_network_packets_total").values()) >= 3  # traffic is still counted
    assert not agent.latest("xtrace_tcp_retransmits_total")
