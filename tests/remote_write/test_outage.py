"""Outages of a real VictoriaMetrics: every series reaches its exact final value afterwards."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.remote_write.conftest import FAST, expected_latest, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget, SpoolConfig
from xtrace_agent.sinks import prompb
from xtrace_agent.sinks.remote_write import RemoteWriteSink

pytestmark = pytest.mark.vm
LABELS = {"target": "test"}
FLOWS = 100


def _all_points_once(vm, steps):
    for series in vm.export('{__name__=~"xtrace_network_.*"}'):
        assert series["timestamps"] == sorted(series["timestamps"])
        assert len(series["values"]) == steps, series["metric"]


def test_database_down_at_start_up_10s_later(victoria_metrics, make_sink, health):
    victoria_metrics.stop()
    sink = make_sink(victoria_metrics.write_url, max_backoff=1.0)
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < 10:
        sink.write(report(step, FLOWS))
        step += 1
        time.sleep(0.5)
    assert health.get(sm.RW_SENT, LABELS) == 0
    assert health.get(sm.RW_RETRIES, LABELS) > 3
    victoria_metrics.start()
    for _ in range(3):
        sink.write(report(step, FLOWS))
        step += 1
    want = expected_latest(step - 1, FLOWS)
    assert victoria_metrics.wait_latest(want) == want
    _all_points_once(victoria_metrics, step)


def test_database_killed_mid_run_and_restarted(victoria_metrics, make_sink, health):
    sink = make_sink(victoria_metrics.write_url)
    for step in range(3):
        sink.write(report(step, FLOWS))
    assert wait_until(lambda: health.get(sm.RW_SENT, LABELS) == 3 * 2 * FLOWS)
    # SIGTERM, not SIGKILL: VictoriaMetrics keeps freshly accepted rows in memory for a few
    # seconds, so a SIGKILL loses rows it already answered 204 to. That is the database's
    # durability, not ours; this test is about the agent's side.
    victoria_metrics.stop()
    for step in range(3, 8):
        sink.write(report(step, FLOWS))
        time.sleep(0.2)
    victoria_metrics.start()
    sink.write(report(8, FLOWS))
    want = expected_latest(8, FLOWS)
    assert victoria_metrics.wait_latest(want) == want
    _all_points_once(victoria_metrics, 9)


def test_agent_restart_during_outage_replays_the_spool(victoria_metrics, vmauth, health, tmp_path):
    """Through vmauth, which lets only the bearer token in: the data arriving proves the token was
    sent; the spool, read back decompressed, holds neither the token nor an Authorization header."""
    spool = tmp_path / "spool"
    token = tmp_path / "token"
    token.write_text(vmauth.token + "\n")
    target = RemoteWriteTarget(url=vmauth.write_url, name="test", bearer_token_file=str(token))
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(spool)))
    victoria_metrics.stop()  # vmauth stays up and answers 502: the outage is behind it
    first = RemoteWriteSink(target, cfg, health, **FAST).start()
    for step in range(4):
        first.write(report(step, FLOWS))
    first.close(0.5)
    files = [spool / d / f for d in os.listdir(spool) for f in os.listdir(spool / d)]
    assert files and all(f.name.endswith(".sz") for f in files)
    for f in files:
        raw = f.read_bytes()
        plain = prompb.decompress(raw)
        assert b"xtrace_network_packets_total" in plain  # really decompressed
        for secret in (vmauth.token.encode(), b"Bearer", b"Authorization"):
            assert secret not in raw and secret not in plain, f"{secret!r} in {f.name}"
    victoria_metrics.start()
    second = RemoteWriteSink(target, cfg, health, **FAST).start()
    second.write(report(4, FLOWS))
    want = expected_latest(4, FLOWS)
    try:
        assert victoria_metrics.wait_latest(want) == want
        _all_points_once(victoria_metrics, 5)
        assert wait_until(lambda: not [f for d in os.listdir(spool) for f in os.listdir(spool / d)])
    finally:
        second.close(2)


def test_readyz_reason_when_the_database_is_unreachable_too_long(victoria_metrics, make_sink, health):
    sink = make_sink(victoria_metrics.write_url, AgentConfig(node="test-node", max_push_age=1.0))
    sink.write(report(0, 5))
    assert wait_until(lambda: health.get(sm.RW_SENT, LABELS) == 10)
    assert "remote_write:test" not in health.reasons()
    victoria_metrics.stop()
    stop = threading.Event()

    def collect():  # the agent keeps collecting every 0.2 s
        step = 1
        while not stop.is_set():
            sink.write(report(step, 5))
            step += 1
            time.sleep(0.2)

    writer = threading.Thread(target=collect, daemon=True)
    writer.start()
    try:
        assert wait_until(lambda: "remote_write:test" in health.reasons(), timeout=5)
        assert "no successful push" in health.reasons()["remote_write:test"]
        victoria_metrics.start()
        assert wait_until(lambda: "remote_write:test" not in health.reasons(), timeout=10)
    finally:
        stop.set()
        writer.join()
