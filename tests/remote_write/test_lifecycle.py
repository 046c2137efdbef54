"""The sink's life: built idle, its thread started by `start()` (the pipeline's wiring), closed once;
the spool says itself whether what it holds outlives the process."""

from __future__ import annotations

import time

from tests.remote_write.conftest import FAST, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget, SpoolConfig
from xtrace_agent.sinks.remote_write import RemoteWriteSink
from xtrace_agent.sinks.spool import DiskSpool, MemorySpool

DOWN = "http://127.0.0.1:9/api/v1/write"  # discard port: nothing listens


def test_nothing_is_sent_before_start(receiver, health):
    sink = RemoteWriteSink(RemoteWriteTarget(url=receiver.url, name="test"), AgentConfig(node="test-node"),
                           health, **FAST)
    try:
        sink.write(report(0, 5))
        time.sleep(0.3)  # six sender ticks, had a thread been running
        assert receiver.requests == []
        assert sink.start() is sink and sink.start() is sink  # idempotent: one thread
        assert wait_until(lambda: len(receiver.accepted()) == 10)
        assert health.get(sm.RW_SENT, {"target": "test"}) == 10
    finally:
        sink.close(1)


def test_closing_a_sink_that_never_started_spools_its_queue(tmp_path, health):
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(tmp_path)))
    target = RemoteWriteTarget(url=DOWN, name="down")
    sink = RemoteWriteSink(target, cfg, health, **FAST)
    assert sink.spool.persistent
    sink.write(report(0, 5))
    sink.close(1)
    sink.write(report(1, 5))  # after close: refused, as ever
    again = RemoteWriteSink(target, cfg, health, **FAST)
    assert again.spool.samples == 10  # a restarted agent replays it
    again.close(0.1)


def test_a_memory_spool_is_not_persistent_and_its_leftovers_count_as_shutdown_drops(health):
    sink = RemoteWriteSink(RemoteWriteTarget(url=DOWN, name="down"), AgentConfig(node="test-node"), health, **FAST)
    assert not sink.spool.persistent
    sink.write(report(0, 5))
    sink.close(1)
    assert health.get(sm.RW_DROPPED, {"target": "down", "reason": "shutdown"}) == 10


def test_persistent_is_a_property_of_the_spool_kind(tmp_path):
    assert not MemorySpool(1000).persistent
    assert DiskSpool(str(tmp_path / "s"), 1000).persistent
