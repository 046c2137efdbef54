"""Every remote-write target has its own identity: its `target` label, readiness component and spool."""

from __future__ import annotations

import pytest

from tests.remote_write.conftest import FAST, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget, SpoolConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.health import Health
from xtrace_agent.sinks.remote_write import RemoteWriteSink, target_names


def test_two_unnamed_tenants_on_one_vminsert_get_separate_series_for_every_metric(receiver, tmp_path):
    receiver.script = [(204, {}, "")] * 2 + [(503, {}, "down")] * 10_000  # one success each, then a failure
    targets = (RemoteWriteTarget(url=receiver.url + "/insert/1/prometheus"),
               RemoteWriteTarget(url=receiver.url + "/insert/2/prometheus"))
    cfg = AgentConfig(node="n", remote_write=targets, spool=SpoolConfig(path=str(tmp_path)))
    health = Health()
    sinks = [RemoteWriteSink(t, cfg, health, **FAST).start() for t in targets]
    try:
        sinks[0].write(report(0, 5))
        sinks[1].write(report(0, 7))
        host = receiver.url.removeprefix("http://")
        names = [f"{host}/insert/1/prometheus", f"{host}/insert/2/prometheus"]
        assert [s.name for s in sinks] == names
        assert wait_until(lambda: all(health.get(sm.RW_SENT, {"target": n}) > 0
                                      for n in names))
        assert health.get(sm.RW_SENT, {"target": names[0]}) == 10
        assert health.get(sm.RW_SENT, {"target": names[1]}) == 14
        for s in sinks:
            s.write(report(1, 3))
        assert wait_until(lambda: all(health.get(sm.RW_RETRIES, {"target": n}) > 0
                                      for n in names))
    finally:
        for s in sinks:
            s.close(0.2)
    per_target: dict[str, set[str]] = {}
    for sample in health.samples(0):
        if "target" in sample.labels:
            per_target.setdefault(sample.name, set()).add(sample.labels["target"])
    assert len(per_target) >= 7  # queue, sent, dropped, retries, last success, spool bytes, sent bytes
    assert all(targets_seen == set(names) for targets_seen in per_target.values()), per_target
    assert len({p.name for p in tmp_path.iterdir()}) == 2  # a spool directory each


def test_a_lone_unnamed_target_keeps_host_and_port():
    assert target_names((RemoteWriteTarget(url="http://u:secret@vminsert:8480/insert/1/prometheus"),
                         RemoteWriteTarget(url="http://vm:8428", name="vm"))) == ["vminsert:8480", "vm"]


@pytest.mark.parametrize("urls,names", [
    (("http://vm:8428/api/v1/write", "http://u:pw@vm:8428/api/v1/write"), ("", "")),  # differ only in credentials
    (("http://a:8428", "http://b:8428"), ("same", "same")),
])
def test_targets_that_would_share_an_identity_are_refused_naming_both(urls, names):
    targets = tuple(RemoteWriteTarget(url=u, name=n) for u, n in zip(urls, names, strict=True))
    with pytest.raises(UsageError) as e:
        RemoteWriteSink(targets[1], AgentConfig(node="n", remote_write=targets), Health(), **FAST)
    message = str(e.value)
    assert "\n" not in message and "pw" not in message
    assert all(u.replace("u:pw@", "") in message for u in urls)
