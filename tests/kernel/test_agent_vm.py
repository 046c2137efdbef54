"""End to end: the agent binary on a veth pushes to a real VictoriaMetrics; exact values come back."""

import socket
import time

import pytest

from tests.kernel.test_agent import start_attached

pytestmark = [pytest.mark.kernel, pytest.mark.vm]


def test_flows_arrive_in_victoria_metrics_exactly(veth, victoria_metrics, monkeypatch):
    monkeypatch.setenv("NODE_NAME", "node-e2e")
    agent = start_attached(veth, "--remote-write-url", victoria_metrics.write_url)
    try:
        sent = {40101: 3, 40102: 5, 40103: 8}
        for port, n in sent.items():
            s = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((veth.ip4_a, port))
            for _ in range(n):
                s.sendto(b"e" * 100, (veth.ip4_b, 9999))
            s.close()
        time.sleep(0.6)
    finally:
        rc, err = agent.stop()
    assert rc == 0, err
    want = {}
    for port, n in sent.items():
        labels = {"interface": veth.dev_b, "src_ip": veth.ip4_a, "dst_ip": veth.ip4_b, "src_port": str(port),
                  "dst_port": "9999", "protocol": "17", "traffic_type": "ethernet", "node": "node-e2e"}
        for name, value in (("xtrace_network_packets_total", n), ("xtrace_network_bytes_total", n * 142)):
            want[(name, *sorted(labels.items()))] = value
    match = f'{{__name__=~"xtrace_network_(packets|bytes)_total", dst_port="9999", interface="{veth.dev_b}"}}'
    assert victoria_metrics.wait_latest(want, match) == want
    # every flow the agent reported is a series in the database, no more, no less
    reported = agent.latest("xtrace_network_packets_total")
    stored = victoria_metrics.wait_latest(
        {("xtrace_network_packets_total", *sorted({**dict(k), "node": "node-e2e"}.items())): v
         for k, v in reported.items()},
        f'{{__name__="xtrace_network_packets_total", interface="{veth.dev_b}"}}')
    assert len(stored) == len(reported)
