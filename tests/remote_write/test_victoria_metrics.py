"""The sink against a real VictoriaMetrics: exact values, labels and series counts."""

from __future__ import annotations

import logging

import pytest

from tests.helpers.vm import VictoriaMetrics, free_port
from tests.remote_write.conftest import expected_latest, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, BasicAuth, RemoteWriteTarget

pytestmark = pytest.mark.vm


def test_end_to_end_exact_values_labels_and_series(victoria_metrics, make_sink, health):
    cfg = AgentConfig(node="test-node", monitor="mon", namespace="ns", labels={"cluster": "c1"})
    sink = make_sink(victoria_metrics.write_url, cfg)
    for step in range(5):
        sink.write(report(step, 200))
    sink.close(10)
    want = expected_latest(4, 200, monitor="mon", namespace="ns", cluster="c1")
    assert victoria_metrics.wait_latest(want) == want
    assert len(want) == 400
    series = victoria_metrics.export('{__name__="xtrace_network_packets_total",src_port="10007"}')
    assert series[0]["values"] == [80, 160, 240, 320, 400]
    assert series[0]["timestamps"] == [1_700_000_000_000 + i * 1000 for i in range(5)]
    labels = {"target": "test"}
    assert health.get(sm.RW_SENT, labels) == 2000
    assert health.get(sm.RW_QUEUE, labels) == 0
    assert health.get(sm.RW_LAST_SUCCESS, labels) > 0


def test_large_report_is_split_into_requests(victoria_metrics, make_sink):
    sink = make_sink(victoria_metrics.write_url, max_samples_per_send=1000)
    sink.write(report(0, 5000))
    sink.close(10)
    want = expected_latest(0, 5000)
    assert victoria_metrics.wait_latest(want) == want


def test_legacy_import_endpoint_still_works(victoria_metrics, make_sink, caplog):
    with caplog.at_level(logging.WARNING, logger="xtrace.remote_write"):
        sink = make_sink(victoria_metrics.import_url)
    assert sum("legacy" in r.getMessage() for r in caplog.records) == 1
    for step in range(3):
        sink.write(report(step, 20))
    sink.close(10)
    want = expected_latest(2, 20)
    assert victoria_metrics.wait_latest(want) == want
    assert len(victoria_metrics.export('{src_port="10003"}')[0]["values"]) == 3


def test_vmauth_wrong_token_loses_nothing_once_fixed(vmauth, victoria_metrics, make_sink, health, tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("wrong-token\n")
    target = RemoteWriteTarget(url=vmauth.write_url, name="test", bearer_token_file=str(token))
    with caplog.at_level(logging.ERROR, logger="xtrace.remote_write"):
        # vmauth answers an unknown token after 2-3 s on purpose (against guessing): a longer timeout
        sink = make_sink(vmauth.write_url, target=target, timeout=8.0)
        for step in range(3):
            sink.write(report(step, 10))
        assert wait_until(lambda: health.get(sm.RW_RETRIES, {"target": "test"}) >= 2,
                          timeout=20)
    assert any("HTTP 401" in r.getMessage() or "credentials" in r.getMessage() for r in caplog.records)
    assert not any("wrong-token" in r.getMessage() for r in caplog.records), "a secret reached the log"
    assert victoria_metrics.latest() == {}
    token.write_text(vmauth.token + "\n")  # the Secret is rotated in place
    for step in range(3, 5):
        sink.write(report(step, 10))
    want = expected_latest(4, 10)
    assert victoria_metrics.wait_latest(want) == want
    for series in victoria_metrics.export('{__name__="xtrace_network_packets_total"}'):
        assert len(series["values"]) == 5
    assert health.get(sm.RW_DROPPED, {"target": "test", "reason": "rejected"}) == 0


def test_vm_basic_auth_from_files(tmp_path, make_sink):
    vm = VictoriaMetrics(str(tmp_path / "data"), free_port(), basic_auth=("u", "p4ss"))
    vm.start()
    try:
        (tmp_path / "user").write_text("u")
        (tmp_path / "pass").write_text("p4ss\n")
        auth = BasicAuth(username_file=str(tmp_path / "user"), password_file=str(tmp_path / "pass"))
        sink = make_sink(vm.write_url, target=RemoteWriteTarget(url=vm.write_url, name="test", basic_auth=auth))
        sink.write(report(0, 3))
        sink.close(5)
        want = expected_latest(0, 3)
        assert vm.wait_latest(want) == want
    finally:
        vm.stop()
