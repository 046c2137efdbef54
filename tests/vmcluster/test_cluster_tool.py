"""`make vm-cluster`'s failure paths: one line on stderr, exit 1, nothing left running or on disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.helpers.vm import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "vm", "cluster.py")
STATE = os.path.join(REPO, ".vmcluster")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def _free_base(count: int = 11) -> int:
    """A first port with `count` free ports from it (the cluster's ports)."""
    for base in range(free_port(), 65000, count):
        if all(_free(p) for p in range(base, base + count)):
            return base
    raise AssertionError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("[vm-build]")]  # progress lines


def test_a_port_in_use_is_one_line_and_starts_nothing():
    assert not os.path.exists(STATE), "a cluster is up: run make vm-cluster-down"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        done = _run("up", VM_CLUSTER_PORT=str(held.getsockname()[1] - 1))
    assert done.returncode == 1
    (line,) = _errors(done.stderr)
    assert line.startswith("make vm-cluster: port ") and line.endswith(" is in use: stop what holds it or set "
                                                                        "VM_CLUSTER_PORT")
    assert not os.path.exists(STATE)


def test_a_failed_build_is_one_line_and_leaves_nothing(tmp_path):
    """GOPROXY=off: the module cannot be fetched, as when the proxy does not serve the version."""
    done = _run("up", VM_CLUSTER_PORT=str(_free_base()), VM_CLUSTER_VERSION="v1.0.0-nonexistent-cluster",
                GOPROXY="off", XTRACE_CACHE=str(tmp_path))
    assert done.returncode == 1
    (line,) = _errors(done.stderr)
    assert line.startswith("make vm: ") and "v1.0.0-nonexistent-cluster" in line
    assert not os.path.exists(STATE)
    assert not os.path.exists(os.path.join(REPO, "tools", "vm", "cluster", "go.mod"))


def test_down_without_a_cluster_is_quiet_and_usage_errors_exit_2():
    assert _run("down").returncode == 0
    done = _run("sideways")
    assert done.returncode == 2 and done.stderr.strip() == "usage: cluster.py up|down"
