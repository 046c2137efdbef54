"""Helpers for the RDMA tests: mutate a fixture tree, build a collector, pick samples out of a report."""

from __future__ import annotations

import errno
import os

from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
FIXTURE = os.path.join(FIXTURES, "sysfs")  # the committed tree


def counter_path(root: str, device: str, port: int, group: str, name: str) -> str:
    return os.path.join(root, "class", "infiniband", device, "ports", str(port), group, name)


def write_counter(root: str, device: str, port: int, group: str, name: str, text: str) -> None:
    with open(counter_path(root, device, port, group, name), "w") as f:
        f.write(text)


def einval_on(path: str):
    """A stand-in for sysfs._raw that fails one file with EINVAL, as a live kernel can (a plain file
    cannot), and reads every other file for real."""
    from xtrace_agent.rdma import sysfs

    real = sysfs._raw

    def raw(p: str):
        if p == path:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(p)

    return raw


class Pipeline:
    """The rdma/nccl source and its accounting stage, as cli.run wires them: collect() is one report.
    `text` formats reports as stdout's text output does."""

    def __init__(self, source, accounting):
        from xtrace_agent.sinks.text import PortText

        self.source, self.accounting, self.text = source, accounting, PortText()
        self.health = source.health

    def start(self) -> None:
        self.source.start()

    def collect(self, now: float):
        return self.accounting.report(self.source.collect(now), now)

    def close(self) -> None:
        self.source.close()


def make(root: str, mode: str = "nccl", **kw) -> tuple:
    from xtrace_agent.collectors.rdma import RdmaCollector
    from xtrace_agent.ports import PortAccounting

    health = Health()
    clock = kw.pop("clock", None)
    cfg = AgentConfig(mode=mode, sysfs=root, **kw)
    source = RdmaCollector(cfg, health, clock) if clock else RdmaCollector(cfg, health)
    return Pipeline(source, PortAccounting(health)), health


def by_counter(report, name: str, **labels) -> dict:
    """{counter label: value} for the samples of `name` matching `labels`."""
    out = {}
    for s in report.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            out[s.labels.get("counter", "")] = s.value
    return out


def value(report, name: str, **labels):
    found = [s.value for s in report.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{name} {labels}: {found}"
    return found[0] if found else None
