"""RDMA series through remote write into a real VictoriaMetrics: right names, labels and values."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.rdma.util import FIXTURE, FIXTURES, make, write_counter
from xtrace_agent.config import AgentConfig, RemoteWriteTarget
from xtrace_agent.sinks.remote_write import RemoteWriteSink

from .test_e2e import BINARY

pytestmark = pytest.mark.vm


class StepClock:
    """Port readings 10 s apart, ending about now (VictoriaMetrics keeps recent samples only)."""

    def __init__(self):
        self.now = time.time() - 60

    def __call__(self):
        return self.now


def test_wrapped_and_saturated_counters_arrive_as_pushed(victoria_metrics, tree):
    clock = StepClock()
    collector, health = make(tree, clock=clock)
    collector.start()
    cfg = AgentConfig(node="node-a")
    sink = RemoteWriteSink(RemoteWriteTarget(url=victoria_metrics.write_url, name="vm"), cfg, health,
                           min_backoff=0.05, max_backoff=0.4, tick=0.05, timeout=5.0).start()
    sink.write(collector.collect(clock.now))
    clock.now += 10
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_wait", "200\n")  # 32-bit wrap
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_data", f"{250_000_000_000 + 1000}\n")
    sink.write(collector.collect(clock.now))
    sink.close(10)

    mlx5_0 = {"device": "mlx5_0", "port": "1", "node": "node-a"}

    def key(name, **labels):
        return (name, *sorted({**mlx5_0, **labels}.items()))

    want = {
        key("xtrace_rdma_port_counter_total", counter="port_xmit_wait"): 4_294_967_000 + 496,
        key("xtrace_rdma_port_counter_total", counter="port_xmit_data"): 250_000_001_000,
        key("xtrace_rdma_port_transmit_bytes_total"): 1_000_000_004_000,
        key("xtrace_rdma_port_rate_bytes_per_second"): 12.5e9,
    }
    got = victoria_metrics.wait_latest(want, '{device="mlx5_0",__name__=~"xtrace_rdma_port_(counter_total|'
                                             'transmit_bytes_total|rate_bytes_per_second)",'
                                             'counter=~"|port_xmit_wait|port_xmit_data"}')
    assert got == want
    wait = victoria_metrics.export('{__name__="xtrace_rdma_port_counter_total",device="mlx5_0",counter="port_xmit_wait"}')
    assert wait[0]["values"] == [4_294_967_000, 4_294_967_496]  # never backwards across the wrap
    # saturated: the flag arrives, the frozen counter does not
    flags = victoria_metrics.latest('{__name__="xtrace_rdma_counter_saturated",device="mlx4_0",port="1"}')
    assert {dict(k[1:])["counter"] for k, v in flags.items() if v == 1} == {
        "symbol_error", "link_error_recovery", "local_link_integrity_errors"}
    assert victoria_metrics.export('{__name__="xtrace_rdma_port_counter_total",device="mlx4_0",'
                                   'port="1",counter="symbol_error"}') == []
    assert victoria_metrics.export('{__name__="xtrace_rdma_port_counter_total",device="cxgb4_0"}') == []


def test_binary_pushes_exactly_the_golden_samples(victoria_metrics):
    if not os.path.exists(BINARY):
        pytest.skip(f"{BINARY} not installed")
    env = {**os.environ, "NODE_NAME": "node-b"}
    out = subprocess.run([BINARY, "-m", "nccl", "--sysfs", FIXTURE, "--count", "1", "--interval", "0.1",
                          "--output", "json", "--http-listen", "", "--remote-write-url", victoria_metrics.write_url],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(FIXTURES, "golden", "nccl.json")) as f:
        golden = json.load(f)["samples"]
    want = {(s["name"], *sorted({**s["labels"], "node": "node-b"}.items())): s["value"] for s in golden}
    # the agent's self-metrics travel too (they have no device label): checked elsewhere
    got = victoria_metrics.wait_latest(want, '{__name__=~"xtrace_rdma_.*", device!=""}')
    assert got == want
    assert len(want) == len(golden)  # no two samples of one report share a series
