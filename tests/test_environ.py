"""The environment knobs: one table (environ.py), read through it, documented in the README."""

from __future__ import annotations

import pathlib
import re

import pytest

from xtrace_agent import environ
from xtrace_agent.xdp import compiler, egress, headers

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("agent/xtrace_agent", "operator/xtrace_operator") for p in (ROOT / d).rglob("*.py")]


def test_the_readme_carries_the_table():
    readme = (ROOT / "README.md").read_text()
    assert "\n".join(environ.table()) in readme, "README 'Environment' is stale: paste environ.table()"


def test_no_module_but_environ_names_a_knob():
    """A knob written as a string anywhere else would be a second description of it."""
    names = {k.name for k in environ.KNOBS if k.name.startswith(("XTRACE_", "VICTORIAMETRICS_"))}
    offenders = []
    for path in SOURCES:
        if path.name == "environ.py":
            continue
        for name in set(re.findall(r"[\"'](XTRACE_[A-Z_]+|VICTORIAMETRICS_[A-Z_]+)[\"']", path.read_text())):
            offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == [] and len(names) >= 7


def test_defaults_and_parsers():
    assert environ.STATUS_FLUSH_SECONDS.get({}) == 3.0
    assert environ.STATUS_FLUSH_SECONDS.get({"XTRACE_STATUS_FLUSH_SECONDS": "0.5"}) == 0.5
    assert environ.DEBUG.get({}) is False and environ.DEBUG.get({"XTRACE_DEBUG": "1"}) is True
    assert environ.EGRESS_HOOK.get({"XTRACE_EGRESS_HOOK": ""}) == "auto"  # empty is unset
    assert environ.VM_ENABLED.raw({}) == ""


def test_readers_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XTRACE_BPF_DIR", str(tmp_path))
    assert compiler.bpf_dir() == tmp_path
    monkeypatch.delenv("XTRACE_BPF_DIR")
    assert (compiler.bpf_dir() / "xtrace.c").is_file()
    (tmp_path / "6.1.0-x" / "include").mkdir(parents=True)
    monkeypatch.setenv("XTRACE_KERNEL_HEADERS", str(tmp_path))
    assert [h.release for h in headers.fallbacks()] == ["6.1.0-x"]
    monkeypatch.setenv("XTRACE_EGRESS_HOOK", "sideways")
    with pytest.raises(egress.AttachError, match="XTRACE_EGRESS_HOOK='sideways'"):
        egress.EgressAttachments({}, {}, "xtrace_eth_tx", "xtrace_ipoib_tx")
