"""The operator runs without the agent-only packages: its image (Dockerfile.operator) installs the
project's dependencies except these, and the operator imports agent modules (the spec's fields, the
URL rules of the remote-write transport). Run in a fresh interpreter with the packages made
unimportable, so this fails in `make test` instead of only in the opt-in image test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def agent_only() -> set[str]:
    text = (ROOT / "Dockerfile.operator").read_text()
    found = re.search(r"agent_only = \{([^}]*)\}", text)
    assert found, "Dockerfile.operator no longer names its agent-only packages"
    return {name.strip().strip("\"'") for name in found.group(1).split(",")}


def test_the_operator_imports_without_the_agent_only_packages():
    packages = agent_only()
    assert {"numpy", "cramjam"} <= packages
    code = ("import sys\n"
            f"for name in {sorted(packages)!r}: sys.modules[name] = None\n"
            "import xtrace_operator.cli, xtrace_operator.handlers, xtrace_operator.render, xtrace_operator.model\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
