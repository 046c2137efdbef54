"""`make vm-cluster` (tools/vm/cluster.py, tools/vm/build.sh cluster): what it runs, and its failure paths:
one line on stderr, exit 1 (2 for usage), nothing left running or on disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.helpers.vm import _versions
from tests.helpers.vmcluster import TOOL, VmCluster

VM_CLUSTER_VERSION = _versions()["VM_CLUSTER_VERSION"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("[vm-build]")]  # progress lines


def test_the_cluster_is_the_pinned_tag_replicated_twice(vm_cluster: VmCluster):
    assert vm_cluster.version == f"vmstorage-{VM_CLUSTER_VERSION}"
    comps = vm_cluster.info["components"]
    assert sorted(comps) == ["vminsert", "vmselect", "vmstorage-0", "vmstorage-1", "vmstorage-2"]
    for name in ("vminsert", "vmselect"):
        binary = comps[name]["argv"][0]
        assert subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.strip() \
            == f"{name}-{VM_CLUSTER_VERSION}"
        assert "-replicationFactor=2" in comps[name]["argv"]
        assert vm_cluster.metric(name, "vm_app_version") == 1  # it answers as itself
    assert "-dedup.minScrapeInterval=1ms" in comps["vmselect"]["argv"]
    hosts = {a.split("=", 1)[1].rsplit(":", 1)[0] for c in comps.values() for a in c["argv"] if "Addr=" in a}
    assert hosts == {"127.0.0.1"}


def test_stop_and_start_one_component(whole_cluster: VmCluster):
    whole_cluster.stop("vmstorage-2", kill=True)
    with open(os.path.join(whole_cluster.state, "cluster.json")) as f:
        assert json.load(f)["components"]["vmstorage-2"]["pid"] is None
    whole_cluster.start("vmstorage-2")
    assert whole_cluster.metric("vmstorage-2", "vm_app_version") == 1
    done = _run("start", "vmstorage-2", "--state", whole_cluster.state)
    assert done.returncode == 1 and done.stderr.startswith("make vm-cluster: vmstorage-2 is running (pid ")
    done = _run("stop", "vmstorage-9", "--state", whole_cluster.state)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "vmstorage-9" in done.stderr


def test_a_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    state = tmp_path / "state"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        done = _run("up", "--state", str(state), "--port-base", str(held.getsockname()[1] - 1))
    assert done.returncode == 1
    (line,) = _errors(done.stderr)
    assert line.startswith("make vm-cluster: port ") and line.endswith(" is in use: stop what holds it or set "
                                                                        "VM_CLUSTER_PORT")
    assert not state.exists()


def test_no_proxy_and_no_archive_is_one_line_naming_both(tmp_path):
    """GOPROXY=off: the module cannot be fetched, as when the proxy refuses the -cluster tag."""
    state = tmp_path / "state"
    done = _run("up", "--state", str(state), "--port-base", "auto", VM_CLUSTER_VERSION="v1.0.0-nonexistent-cluster",
                GOPROXY="off", XTRACE_CACHE=str(tmp_path / "cache"), XTRACE_VM_CLUSTER_SRC="")
    assert done.returncode == 1
    (line,) = _errors(done.stderr)
    assert line.startswith("make vm: the Go module proxy does not serve ") and "v1.0.0-nonexistent-cluster" in line
    assert "XTRACE_VM_CLUSTER_SRC" in line and "a proxy that serves the tag" in line
    assert not state.exists()
    assert not os.path.exists(os.path.join(os.path.dirname(TOOL), "cluster", "go.mod"))


def test_an_archive_of_another_tag_or_not_a_tree_is_one_line(tmp_path):
    other = tmp_path / "victoriametrics-v1.0.0-cluster-src.tar.xz"
    subprocess.run(["tar", "-cJf", str(other), "-C", str(tmp_path), "--files-from", "/dev/null"], check=True)
    env = dict(GOPROXY="off", XTRACE_CACHE=str(tmp_path / "cache"))
    done = _run("up", "--state", str(tmp_path / "s"), "--port-base", "auto", XTRACE_VM_CLUSTER_SRC=str(other), **env)
    (line,) = _errors(done.stderr)
    assert done.returncode == 1 and line.endswith(f"is not named for {VM_CLUSTER_VERSION} (VM_CLUSTER_VERSION): "
                                                  "give the archive of that tag")
    empty = tmp_path / f"victoriametrics-{VM_CLUSTER_VERSION}-src.tar.xz"
    os.rename(other, empty)
    done = _run("up", "--state", str(tmp_path / "s"), "--port-base", "auto", XTRACE_VM_CLUSTER_SRC=str(empty), **env)
    (line,) = _errors(done.stderr)
    assert done.returncode == 1 and line.endswith(f"holds no app/vmstorage and vendor/modules.txt: not the "
                                                  f"{VM_CLUSTER_VERSION} source tree")
    assert not (tmp_path / "s").exists()
    assert not any("src." in d for d in os.listdir(tmp_path / "cache" / "vm" / VM_CLUSTER_VERSION))  # unpacked: gone


def test_down_without_a_cluster_is_quiet_and_usage_errors_exit_2(tmp_path):
    assert _run("down", "--state", str(tmp_path / "none")).returncode == 0
    for args in (["sideways"], ["stop"], ["up", "vminsert"], ["up", "--port-base", "80"]):
        done = _run(*args, "--state", str(tmp_path / "none"))
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (args, done.stderr)
        assert done.stderr.startswith("cluster.py: ")
