"""Every packet accounted for, with the real agent binary on a real veth (issue "Every packet
accounted for"): at every report, per interface, the flows plus the `other` flow equal the
interface total, and the interface total equals what the receiving veth counted.

Also: two agents on one interface (the second is refused while the first lives).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.netns import AGENT, wait_for, xdp_prog
from tests.kernel.test_agent import Agent, error_lines

pytestmark = pytest.mark.kernel

ETH_HLEN = 14  # veth counts rx_bytes after the Ethernet header; XDP sees the whole frame
FLOW_METRICS = {"xtrace_network_packets_total": 0, "xtrace_network_bytes_total": 1}
IFACE_METRICS = {"xtrace_interface_packets_total": 0, "xtrace_interface_bytes_total": 1}


def link_stats(dev: str, netns: str | None = None) -> dict:
    out = subprocess.run(["ip", *(["-n", netns] if netns else []), "-s", "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]


def rx(dev: str) -> tuple[int, int]:
    """(packets, bytes) the interface's driver counted as received."""
    stats = link_stats(dev)["rx"]
    return stats["packets"], stats["bytes"]


def veth_drops(veth) -> int:
    """Frames a veth dropped before the receiving end (and its XDP program) saw them."""
    return link_stats(veth.dev_a, veth.ns_a)["tx"]["dropped"] + link_stats(veth.dev_b)["rx"]["dropped"]


def check_reports(reports: list[dict]) -> dict[str, tuple[int, int]]:
    """Assert conservation at every report and that no counter ever goes backwards; returns the
    last report's interface totals."""
    assert reports, "no report"
    last: dict[tuple, float] = {}
    totals: dict[str, tuple[int, int]] = {}
    for n, report in enumerate(reports):
        flows: dict[str, list[int]] = {}
        totals = {}
        for s in report["samples"]:
            name, labels, value = s["name"], s["labels"], s["value"]
            if name in FLOW_METRICS:
                flows.setdefault(labels["interface"], [0, 0])[FLOW_METRICS[name]] += value
            elif name in IFACE_METRICS:
                cur = list(totals.get(labels["interface"], (0, 0)))
                cur[IFACE_METRICS[name]] = value
                totals[labels["interface"]] = tuple(cur)
            if name.endswith("_total"):
                key = (name, *sorted(labels.items()))
                assert value >= last.get(key, 0), f"report {n}: {key} went back from {last[key]} to {value}"
                last[key] = value
        assert {k: tuple(v) for k, v in flows.items()} == totals, f"report {n}: flows + other != interface totals"
    return totals


def quiet_baseline(agent: Agent, counter):
    """(counter value, report) that start from the same packet: the driver counter read, then the
    first report whose collection began after that read, then the counter again; equal readings
    mean no frame arrived in between, so the report's table held every frame the counter had
    counted (a driver counts a frame after our program ran on it) and none after. The link's own
    chatter (IPv6 MLD after the veth came up) otherwise lands between a report and the reading."""
    for _ in range(100):
        c0 = counter()
        after = time.time() + 0.001  # report timestamps are printed rounded to the millisecond
        report = wait_for(lambda after=after: next((r for r in agent.reports if r["timestamp"] > after), None),
                          timeout=10, what="a report after the counter was read")
        if counter() == c0:
            return c0, report
    raise AssertionError("the link never stayed quiet for one report")


def finish(agent: Agent) -> dict[str, tuple[int, int]]:
    """Stop the agent (one last report), check it exited 0, and check every report."""
    rc, err = agent.stop()
    assert rc == 0, err
    return check_reports(agent.reports)


def latest(reports: list[dict], name: str) -> dict[tuple, float]:
    return {tuple(sorted(s["labels"].items())): s["value"] for s in reports[-1]["samples"] if s["name"] == name}


SENDER = """
import socket, sys
n, first_port, flows, dst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
addrs = [(dst, first_port + i) for i in range(flows)]
payload = b"c" * 18
for i in range(n):
    s.sendto(payload, addrs[i % flows])
"""


@pytest.mark.parametrize("run", range(3))
def test_two_senders_on_two_cpus_every_packet_in_a_flow(veth, run):
    """1M packets of 200 flows from two senders pinned to CPUs 0 and 1, drained every 0.05 s."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert len(cpus) == 2, "needs two CPUs"
    agent = Agent("-i", veth.dev_b, "--interval", "0.05")
    try:
        wait_for(lambda: agent.reports or agent.proc.poll() is not None, what="first report")
        before, first_report = quiet_baseline(agent, lambda: rx(veth.dev_b))
        dropped = veth_drops(veth)
        senders = [subprocess.Popen(["ip", "netns", "exec", veth.ns_a, "taskset", "-c", str(cpu), sys.executable,
                                     "-c", SENDER, "500000", str(20000 + 100 * i), "100", veth.ip4_b])
                   for i, cpu in enumerate(cpus)]
        for s in senders:
            assert s.wait(120) == 0
        time.sleep(0.2)
        after, dropped = rx(veth.dev_b), veth_drops(veth) - dropped
    except BaseException:
        agent.proc.kill()
        raise
    totals = finish(agent)
    first = {s["labels"]["interface"]: s["value"] for s in first_report["samples"]
             if s["name"] == "xtrace_interface_packets_total"}
    # a veth under this load drops some frames before XDP runs (its ring is full): those reach
    # neither the driver's rx counters nor us. Everything the driver received, we counted.
    received = after[0] - before[0]
    assert received > 900_000
    # the interface total (= flows + other, checked at every report) is what the driver received
    assert totals[veth.dev_b][0] - first.get(veth.dev_b, 0) == received
    packets = latest(agent.reports, "xtrace_network_packets_total")
    ours = [v for k, v in packets.items() if dict(k)["src_ip"] == veth.ip4_a and dict(k)["protocol"] == "17"]
    # the test's frames: all sent but those the veth dropped (the link's own chatter, if any, is
    # in other flows, and may be what a drop hit)
    assert len(ours) == 200 and 1_000_000 - dropped <= sum(ours) <= min(1_000_000, received)
    assert len(agent.reports) > 5, "the tables were swapped while the senders ran"


def burst(veth, ports_and_counts: dict[int, int], payload: int = 32) -> tuple[int, int]:
    """Send `count` UDP datagrams to each port from host a; returns (packets, frame bytes)."""
    s = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for port, count in ports_and_counts.items():
            for _ in range(count):
                s.sendto(b"b" * payload, (veth.ip4_b, port))
    finally:
        s.close()
    packets = sum(ports_and_counts.values())
    return packets, packets * (ETH_HLEN + 20 + 8 + payload)


def config_agent(veth, tmp_path, xdp: str, interval: float) -> Agent:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"mode: xdp\ninterfaces: [{veth.dev_b}]\ninterval: {interval}\nhttpListen: ''\n"
                   f"output: json\nxdp: {xdp}\n")
    agent = Agent("--config", str(cfg))
    wait_for(lambda: agent.reports or agent.proc.poll() is not None, what="first report")
    assert agent.proc.poll() is None, agent.proc.stderr.read()
    return agent


def test_full_kernel_table_overflow_is_visible_and_conserved(veth, tmp_path):
    """flowTableSize 1024 and 5,000 flows x 10 packets: the flows that found no room are in
    `other`, as table_full packets and bytes of the interface."""
    # No IPv6 on the sending end: a late MLD report from it would be one more frame on the link and,
    # with the table full, one more table_full packet than the test sent.
    subprocess.run(["ip", "netns", "exec", veth.ns_a, "sysctl", "-qw",
                    f"net.ipv6.conf.{veth.dev_a}.disable_ipv6=1"], check=True, capture_output=True)
    time.sleep(0.3)
    agent = config_agent(veth, tmp_path, "{flowTableSize: 1024, maxFlows: 100000}", 1.0)
    try:
        before = rx(veth.dev_b)
        sent = burst(veth, {10000 + i: 10 for i in range(5000)})
        time.sleep(0.3)
        after = rx(veth.dev_b)
    except BaseException:
        agent.proc.kill()
        raise
    totals = finish(agent)
    assert after[0] - before[0] == sent[0] and after[1] - before[1] == sent[1] - ETH_HLEN * sent[0]
    assert totals[veth.dev_b][0] >= sent[0]
    full = latest(agent.reports, "xtrace_xdp_untracked_packets_total")[
        (("interface", veth.dev_b), ("reason", "table_full"))]
    full_bytes = latest(agent.reports, "xtrace_xdp_untracked_bytes_total")[
        (("interface", veth.dev_b), ("reason", "table_full"))]
    tracked = sum(v for k, v in latest(agent.reports, "xtrace_network_packets_total").items()
                  if dict(k)["src_ip"] == veth.ip4_a)
    assert full > 0 and full_bytes == full * (sent[1] // sent[0])
    assert tracked + full == sent[0], "every packet of the test is in its flow or in table_full"
    assert latest(agent.reports, "xtrace_xdp_table_full_packets_total")[()] == full


def test_budget_folding_idle_expiry_and_returning_flows(veth, tmp_path):
    """maxFlows 100, 1,000 flows of 1-5 packets in three bursts; flows go idle (idleTimeout 1 s)
    and come back: conservation at every report, and no exported counter ever goes backwards."""
    agent = config_agent(veth, tmp_path, "{maxFlows: 100, idleTimeout: 1}", 0.2)
    sizes = {20000 + i: 1 + i * 7 % 5 for i in range(1000)}
    sent = [0, 0]
    try:
        for ports in (range(20000, 20600), range(20300, 21000), range(20000, 21000, 3)):
            p, b = burst(veth, {port: sizes[port] for port in ports})
            sent[0] += p
            sent[1] += b
            time.sleep(1.5)  # longer than idleTimeout: the burst's flows expire, some come back
    except BaseException:
        agent.proc.kill()
        raise
    finish(agent)
    packets = latest(agent.reports, "xtrace_network_packets_total")
    ours = sum(v for k, v in packets.items() if dict(k)["src_ip"] in (veth.ip4_a, "other"))
    assert ours >= sent[0]  # `other` may also hold the link's own chatter
    assert sum(1 for k in packets if dict(k)["src_ip"] == veth.ip4_a) <= 100
    assert latest(agent.reports, "xtrace_flows_expired_total")[()] > 0
    assert latest(agent.reports, "xtrace_flows_folded_total")[()] > 0


def test_a_second_agent_on_a_watched_interface_is_refused(veth):
    first = Agent("-i", veth.dev_b, "--interval", "0.2")
    try:
        wait_for(lambda: first.reports or first.proc.poll() is not None, what="first report")
        prog = xdp_prog(veth.dev_b)
        second = subprocess.run([AGENT, "-i", veth.dev_b, "--count", "1", "--http-listen", ""],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and veth.dev_b in lines[0] and f"pid {first.proc.pid}" in lines[0], second.stderr
        time.sleep(0.5)
        assert xdp_prog(veth.dev_b)["id"] == prog["id"] and first.proc.poll() is None
    finally:
        first.proc.send_signal(signal.SIGKILL)  # a crash: its program stays attached
        first.proc.wait(10)
    assert xdp_prog(veth.dev_b)["id"] == prog["id"]
    third = subprocess.run([AGENT, "-i", veth.dev_b, "--count", "1", "--interval", "0.1", "--http-listen", "",
                            "--output", "none"], capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert "left by a previous XTrace agent" in third.stderr and "replaced" not in first.proc.stderr.read()
    assert xdp_prog(veth.dev_b) is None
