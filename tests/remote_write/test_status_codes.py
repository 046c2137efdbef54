"""Retry policy by HTTP status, against a scripted local receiver (vmagent's policy)."""

from __future__ import annotations

import hashlib
import logging

from tests.remote_write.conftest import report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig

LABELS = {"target": "test"}


def _dropped(health, reason):
    return health.get(sm.RW_DROPPED, {**LABELS, "reason": reason})


def test_headers_and_body(receiver, make_sink):
    sink = make_sink(receiver.url + "/api/v1/write")
    sink.write(report(0, 3))
    sink.close(5)
    req = receiver.requests[0]
    assert req["path"] == "/api/v1/write"
    h = req["headers"]
    assert h["Content-Encoding"] == "snappy"
    assert h["Content-Type"] == "application/x-protobuf"
    assert h["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert h["User-Agent"].startswith("xtrace-agent/")
    assert len(receiver.accepted()) == 6


def test_cluster_tenant_url_forms(receiver, make_sink):
    for url in ("/insert/7/prometheus/api/v1/write", "/insert/7:3/prometheus"):
        sink = make_sink(receiver.url + url)
        sink.write(report(0, 1))
        sink.close(5)
    assert [r["path"] for r in receiver.requests] == [
        "/insert/7/prometheus/api/v1/write", "/insert/7:3/prometheus/api/v1/write"]


def test_400_drops_the_block_with_one_error_line_and_a_count(receiver, make_sink, health, caplog):
    receiver.script = [(400, {}, "cannot parse: bad label")]
    with caplog.at_level(logging.ERROR, logger="xtrace.remote_write"):
        sink = make_sink(receiver.url)
        sink.write(report(0, 5))
        assert wait_until(lambda: len(receiver.requests) == 1)
        sink.write(report(1, 5))
        sink.close(5)
    assert _dropped(health, "rejected") == 10
    assert [r["status"] for r in receiver.requests] == [400, 204]
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "bad label" in errors[0]
    assert {p[3] for p in receiver.accepted()} == {1_700_000_001_000}


def test_429_honours_retry_after(receiver, make_sink, health):
    receiver.script = [(429, {"Retry-After": "1"}, "slow down")]
    sink = make_sink(receiver.url)
    sink.write(report(0, 5))
    assert wait_until(lambda: len(receiver.requests) == 2, timeout=5)
    first, second = receiver.requests
    assert second["time"] - first["time"] >= 0.95  # not the 0.05 s backoff
    assert second["raw"] == first["raw"]
    assert health.get(sm.RW_RETRIES, LABELS) == 1
    sink.close(2)
    assert _dropped(health, "rejected") == 0


def test_503_and_network_errors_retry_with_backoff(receiver, make_sink, health):
    receiver.script = [(503, {}, "overloaded")] * 4
    sink = make_sink(receiver.url)
    sink.write(report(0, 5))
    assert wait_until(lambda: health.get(sm.RW_SENT, LABELS) == 10)
    gaps = [b["time"] - a["time"] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert len(gaps) == 4 and gaps[-1] > gaps[0]  # exponential, with jitter
    assert health.get(sm.RW_RETRIES, LABELS) == 4
    sink.close(2)


def test_401_keeps_data_and_retries_slowly(receiver, make_sink, health, caplog):
    receiver.script = [(401, {}, "unauthorized")] * 2
    with caplog.at_level(logging.ERROR, logger="xtrace.remote_write"):
        sink = make_sink(receiver.url, auth_retry=0.5)
        sink.write(report(0, 5))
        assert wait_until(lambda: health.get(sm.RW_SENT, LABELS) == 10)
    assert receiver.requests[1]["time"] - receiver.requests[0]["time"] >= 0.45
    assert sum("HTTP 401" in r.getMessage() for r in caplog.records) == 2
    assert _dropped(health, "rejected") == 0
    sink.close(2)


def _newest(points):
    latest = {}
    for name, labels, value, ts in points:
        key = (name, labels["src_port"])
        if key not in latest or ts >= latest[key][1]:
            latest[key] = (value, ts)
    return {k: v[0] for k, v in latest.items()}


def test_queue_full_drops_oldest_but_keeps_every_newest_value(receiver, make_sink, health):
    sink = make_sink(receiver.url, AgentConfig(node="test-node", queue_samples=1000))
    with sink._cond:  # hold the sender off (white-box) so the burst overflows the queue deterministically
        sink.write(report(0, 400))  # flows 200..399 stop after step 0: their only value must survive
        for step in range(1, 6):
            sink.write(report(step, 100))
    # 1800 written, 1000 kept: the 800 oldest (all of step 0) dropped from the queue, yet rescued
    assert _dropped(health, "queue_full") == 0  # every dropped point was the newest of its series so far
    assert wait_until(lambda: health.get(sm.RW_SENT, LABELS) == 1800, timeout=10)
    latest = _newest(receiver.accepted())
    assert len(latest) == 800
    assert latest[("xtrace_network_packets_total", "10000")] == 60.0  # step 5, flow 0
    assert latest[("xtrace_network_packets_total", "10399")] == 4000.0  # step 0 only, flow 399
    times = {}
    for name, labels, _v, ts in receiver.accepted():  # every series arrives in time order
        key = (name, labels["src_port"])
        assert ts >= times.get(key, 0)
        times[key] = ts


def test_spool_full_drops_oldest_counts_and_keeps_newest(receiver, make_sink, health):
    from xtrace_agent.config import SpoolConfig

    receiver.script = [(503, {}, "down")] * 10_000
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(max_bytes=3000))  # memory spool, tiny
    sink = make_sink(receiver.url, cfg, spill_interval=0.05)
    sink.write(report(0, 300))  # flows 100..299 appear only here
    for step in range(1, 8):
        assert wait_until(lambda n=step: health.get(sm.RW_RETRIES, LABELS) >= n)
        sink.write(report(step, 100))
    assert wait_until(lambda: _dropped(health, "spool_full") > 0)
    receiver.script.clear()
    assert wait_until(lambda: health.get(sm.RW_QUEUE, LABELS) == 0, timeout=10)
    latest = _newest(receiver.accepted())
    assert len(latest) == 600
    assert latest[("xtrace_network_packets_total", "10000")] == 80.0  # step 7, flow 0
    assert latest[("xtrace_network_bytes_total", "10299")] == 10 * 300 * 1500.0  # step 0, flow 299


def test_zstd_when_the_receiver_takes_it(make_sink):
    from tests.remote_write.conftest import ScriptedReceiver

    vm_like = ScriptedReceiver(zstd=True)
    try:
        sink = make_sink(vm_like.url + "/api/v1/write")
        sink.write(report(0, 3))
        sink.close(5)
        h = vm_like.requests[0]["headers"]
        assert h["Content-Encoding"] == "zstd" and h["X-VictoriaMetrics-Remote-Write-Version"] == "1"
        assert "X-Prometheus-Remote-Write-Version" not in h
        assert len(vm_like.accepted()) == 6
    finally:
        vm_like.close()


def test_a_snappy_only_receiver_costs_one_refusal_and_loses_nothing(receiver, make_sink, health, tmp_path):
    """Prometheus-like: zstd answered 415 once, the same block resent as snappy, snappy from then
    on; blocks spooled as zstd before the downgrade (an outage at start) are repacked, not dropped."""
    from xtrace_agent.config import SpoolConfig

    sink = make_sink(f"http://127.0.0.1:{_closed_port()}/api/v1/write",
                     AgentConfig(node="test-node", spool=SpoolConfig(path=str(tmp_path))))
    sink.write(report(0, 50))
    sink.close(0.2)  # spooled as zstd: nobody had refused it yet
    url = receiver.url + "/api/v1/write"
    (spooled,) = tmp_path.iterdir()  # hand the spool to the receiver's target, as a restart would
    spooled.rename(tmp_path / f"test-{hashlib.sha256(url.encode()).hexdigest()[:12]}")
    sink = make_sink(url, AgentConfig(node="test-node", spool=SpoolConfig(path=str(tmp_path))))
    for step in range(1, 4):
        sink.write(report(step, 50))
    assert wait_until(lambda: len(receiver.accepted()) == 400)
    assert receiver.zstd_refused == 1
    assert all(r["headers"]["Content-Encoding"] == "snappy" for r in receiver.requests)
    assert _dropped(health, "rejected") == 0


def _closed_port() -> int:
    from tests.helpers.vm import free_port

    return free_port()
