"""spool.maxBytes holds on disk at every instant, rescued values and the state after SIGTERM included.

The size is what the spool directory holds (the sum of its files' sizes, temporary files included),
sampled by a thread that re-reads the directory in a tight loop, several thousand times a second,
while the sink spills, evicts, rescues and shuts down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from tests.remote_write.conftest import FAST, expected_latest, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget, SpoolConfig
from xtrace_agent.health import Health
from xtrace_agent.sinks.remote_write import RemoteWriteSink

LABELS = {"target": "test"}


def _size(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed between listing and stat
                pass
    return total


class SizeWatch:
    """The largest size the directory had, sampled continuously from a thread."""

    def __init__(self, root: str):
        self.root, self.peak, self.samples = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _size(self.root))
            self.samples += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _dropped(health: Health, reason: str) -> float:
    return health.get(sm.RW_DROPPED, {**LABELS, "reason": reason})


@pytest.mark.vm
def test_long_outage_and_sigterm_never_exceed_max_bytes_and_lose_no_newest_value(victoria_metrics, tmp_path):
    """2,000 flows through a long outage with a 64 KiB spool: the limit holds while spilling, evicting
    and after shutdown (blocks + rescued.sz), and the restarted sink delivers every newest value."""
    limit, flows = 65536, 2000
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = AgentConfig(node="test-node", queue_samples=4000, spool=SpoolConfig(path=str(spool), max_bytes=limit))
    target = RemoteWriteTarget(url=victoria_metrics.write_url, name="test")
    victoria_metrics.stop()
    health = Health()
    watch = SizeWatch(str(spool))
    first = RemoteWriteSink(target, cfg, health, **{**FAST, "spill_interval": 0.05}).start()
    steps = 25
    for step in range(steps):
        first.write(report(step, flows))
        time.sleep(0.06)
    assert wait_until(lambda: _dropped(health, "spool_full") > 0, timeout=10), "the outage never filled the spool"
    first.close(0.5)  # what SIGTERM does: spill the queue, write rescued.sz
    peak = watch.stop()
    assert watch.samples > 1000, "the watcher did not sample continuously"
    assert 0 < _size(str(spool)) <= limit
    assert peak <= limit, f"the spool held {peak} bytes, more than spool.maxBytes={limit}"
    assert health.get(sm.RW_SPOOL_BYTES, LABELS) == _size(str(spool))
    assert _dropped(health, "shutdown") == 0

    victoria_metrics.start()
    second = RemoteWriteSink(target, cfg, health, **FAST).start()
    try:
        want = expected_latest(steps - 1, flows)
        assert victoria_metrics.wait_latest(want, timeout=30) == want
    finally:
        second.close(5)


def test_newest_values_that_cannot_fit_are_counted_in_samples(receiver, tmp_path):
    """A spool too small for the newest value of every series: on disk it stays within the limit,
    the series given up are counted (reason spool_full) and exactly the others arrive after restart."""
    limit, flows = 8192, 1000
    spool = tmp_path / "spool"
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(spool), max_bytes=limit))
    target = RemoteWriteTarget(url=receiver.url + "/api/v1/write", name="test")
    receiver.script = [(503, {}, "down")] * 10_000
    health = Health()
    first = RemoteWriteSink(target, cfg, health, **FAST).start()
    first.write(report(0, flows))
    first.close(0.3)
    assert 0 < _size(str(spool)) <= limit
    given_up = _dropped(health, "spool_full")
    assert 0 < given_up < 2 * flows

    receiver.script.clear()
    second = RemoteWriteSink(target, cfg, health, **FAST).start()
    try:
        assert wait_until(lambda: _size(str(spool)) == 0, timeout=10)
    finally:
        second.close(2)
    arrived = {(name, labels["src_port"]) for name, labels, _v, _t in receiver.accepted()}
    assert len(arrived) + given_up == 2 * flows


def test_sigterm_to_the_agent_during_an_outage_leaves_the_spool_within_its_limit(tmp_path):
    """The real xtrace-agent (rdma mode on a fixture sysfs tree, pushing to a port nobody listens
    on) spills, evicts and is stopped with SIGTERM: the directory never held more than maxBytes."""
    from tests.fixtures import make_sysfs
    from tests.helpers.vm import free_port
    from tests.rdma.test_e2e import BINARY

    limit = 16384
    sysfs, spool = tmp_path / "sys", tmp_path / "spool"
    make_sysfs.build(str(sysfs))
    config = tmp_path / "agent.yaml"
    config.write_text(f"mode: rdma\nsysfs: {sysfs}\ninterval: 0.05\noutput: none\nhttpListen: ''\nnode: n1\n"
                      f"queueSamples: 1000\nremoteWrite:\n  - url: http://127.0.0.1:{free_port()}/api/v1/write\n"
                      f"spool:\n  path: {spool}\n  maxBytes: {limit}\n")
    spool.mkdir()
    watch = SizeWatch(str(spool))
    agent = subprocess.Popen([BINARY, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert wait_until(lambda: _size(str(spool)) > limit // 2 or agent.poll() is not None, timeout=30)
        time.sleep(2)  # keep evicting for a while
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(30)
    peak = watch.stop()
    err = agent.stderr.read()
    assert rc == 0, err
    assert "spool full" in err  # it did evict
    assert any(f == "rescued.sz" for _d, _s, files in os.walk(spool) for f in files)
    assert 0 < _size(str(spool)) <= limit
    assert peak <= limit, f"the spool held {peak} bytes, more than spool.maxBytes={limit}"
