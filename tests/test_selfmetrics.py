"""Self-metrics are defined once (selfmetrics.py): a name string or an undeclared label is refused."""

from __future__ import annotations

import pytest

from xtrace_agent import selfmetrics as sm
from xtrace_agent.health import Health
from xtrace_agent.sinks.exposition import metrics_text


def test_a_name_string_is_refused():
    with pytest.raises(TypeError, match="selfmetrics"):
        Health().inc("xtrace_sink_errors_total")  # type: ignore[arg-type]


def test_a_label_the_metric_does_not_declare_is_refused():
    health = Health()
    health.inc(sm.SINK_ERRORS, labels={"sink": "StdoutSink"})
    with pytest.raises(ValueError, match="xtrace_sink_errors_total has no label \\['snik'\\]"):
        health.inc(sm.SINK_ERRORS, labels={"snik": "StdoutSink"})
    assert health.get(sm.SINK_ERRORS, {"sink": "StdoutSink"}) == 1


def test_definitions_are_consistent_and_unique():
    names = [m.name for m in vars(sm).values() if isinstance(m, sm.SelfMetric)]
    assert len(names) == len(set(names)) == len(sm.BY_NAME)
    for metric in sm.BY_NAME.values():
        assert metric.name.startswith("xtrace_") and metric.help.endswith(".")
        assert (metric.kind == "counter") == metric.name.endswith("_total")
        assert metric.source in sm.SOURCES and metric.name == str(metric)


def test_metrics_text_takes_type_and_help_from_the_definition():
    health = Health()
    health.set(sm.RW_QUEUE, 7, {"target": "vm"})
    text = metrics_text(health.samples(0.0))
    assert f"# HELP xtrace_remote_write_queue_samples {sm.RW_QUEUE.help}\n" in text
    assert "# TYPE xtrace_remote_write_queue_samples gauge\n" in text
    assert 'xtrace_remote_write_queue_samples{target="vm"} 7\n' in text
