"""`make cluster`'s failures: one line, a non-zero exit, nothing left running."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from tests.k8s.conftest import CLUSTER_TOOL, ROOT

pytestmark = pytest.mark.k8s


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLUSTER_TOOL), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _our_processes(state: pathlib.Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_a_port_in_use_is_one_line_and_nothing_runs(cluster, tmp_path):
    """`cluster` (the session's control plane) proves the binaries exist; this one must refuse to start."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        base = held.getsockname()[1] - 3  # so that the held port is the API server's (checked first)
        proc = _run("up", "--state", str(tmp_path / "c"), "--port-base", str(base))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[cluster")]
    assert lines == [f"make cluster: port {base + 3} on 127.0.0.1 (apiserver) is in use: stop what holds it, "
                     f"or choose other ports with XTRACE_CLUSTER_PORT_BASE (now {base})"], proc.stderr
    assert not _our_processes(tmp_path / "c")


def test_no_go_toolchain_with_nothing_built_is_one_line(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin", "XTRACE_CACHE": str(tmp_path / "empty-cache")}
    if shutil.which("go", path=env["PATH"]):
        pytest.skip("a Go toolchain sits in /usr/bin")  # the claim is about a machine without one
    proc = subprocess.run(["bash", str(ROOT / "tools" / "cluster" / "build.sh")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == ("make cluster: no Go toolchain on PATH to build the control plane: "
                                                    "install Go >= 1.26 and run make cluster again")


def test_down_without_a_cluster_says_so(tmp_path):
    proc = _run("down", "--state", str(tmp_path / "none"))
    assert proc.returncode == 0 and "nothing to stop" in proc.stderr


def test_bad_arguments_exit_2(tmp_path):
    proc = _run("up", "--state", str(tmp_path / "x"), "--nodes", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == "cluster.py: --nodes must be between 1 and 2000"
    proc = _run("up", "--state", str(tmp_path / "x"), "--port-base", "80")
    assert proc.returncode == 2 and "--port-base must be `auto` or a port between 1024 and 65000" in proc.stderr
