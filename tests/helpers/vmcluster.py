"""Fixture: the real VictoriaMetrics cluster, once per test session, on free ports of 127.0.0.1.

    def test_x(vm_cluster):
        t = vm_cluster.tenant("7:1")     # accountID:projectID
        t.write_url                      # vminsert's /insert/7:1/prometheus/api/v1/write
        t.latest('{node="a"}')           # read through vmselect's /select/7:1/prometheus (tests.helpers.vm.Queries)
        vm_cluster.stop("vmstorage-0", kill=True); vm_cluster.start("vmstorage-0")

It is `make vm-cluster` (tools/vm/cluster.py): three vmstorage, vminsert and vmselect both with
-replicationFactor=2, deduplication on, the cluster binaries of VM_CLUSTER_VERSION built by
tools/vm/build.sh cluster. A test that stops a component starts it again before it ends, so the next
test finds the whole cluster; tests keep apart by tenant (a fresh one each: `vm_cluster.new_tenants`).
Without the binaries (or Go to build them) the cluster tests skip, except under
XTRACE_REQUIRE_CLUSTER=1 (CI), where they fail.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from tests.helpers.vm import REPO, Queries, _get

TOOL = os.path.join(REPO, "tools", "vm", "cluster.py")
REQUIRE = os.environ.get("XTRACE_REQUIRE_CLUSTER") == "1"


class Tenant(Queries):
    """One tenant of the cluster, with the single-node helper's reading interface."""

    def __init__(self, cluster: VmCluster, tenant: str):
        self.cluster, self.tenant = cluster, tenant
        self.url = f"{cluster.select}/select/{tenant}/prometheus"

    @property
    def write_url(self) -> str:
        return f"{self.cluster.insert}/insert/{self.tenant}/prometheus/api/v1/write"

    @property
    def import_url(self) -> str:
        return f"{self.cluster.insert}/insert/{self.tenant}/prometheus/api/v1/import/prometheus"

    def force_flush(self) -> None:
        self.cluster.force_flush()


class VmCluster:
    def __init__(self, state: str, info: dict):
        self.state, self.info = state, info
        self.insert, self.select, self.version = info["insert"], info["select"], info["version"]
        self.storage: list[str] = info["storage"]
        self.down: set[str] = set()
        self._accounts = itertools.count(random.randrange(1000, 10**6, 1000))

    def tenant(self, tenant: str) -> Tenant:
        return Tenant(self, tenant)

    def new_tenants(self, n: int = 2) -> list[Tenant]:
        """n tenants no other test writes to: one account, projects 1..n (the accountID:projectID form)."""
        account = next(self._accounts)
        return [self.tenant(f"{account}:{p}") for p in range(1, n + 1)]

    def _tool(self, *args: str) -> None:
        done = subprocess.run([sys.executable, TOOL, *args, "--state", self.state], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr

    def stop(self, name: str, kill: bool = False) -> None:
        self._tool("stop", name, *(["--kill"] if kill else []))
        self.down.add(name)

    def start(self, name: str) -> None:
        self._tool("start", name)
        self.down.discard(name)

    def http(self, name: str) -> str:
        return self.info["components"][name]["http"]

    def force_flush(self) -> None:
        """Make what vmstorage holds in memory searchable (each live node)."""
        for name in self.storage:
            if name not in self.down:
                _get(f"{self.http(name)}/internal/force_flush", timeout=60)

    def metric(self, name: str, metric: str) -> float:
        """The sum of a component's own /metrics series `metric` (any labels)."""
        with urllib.request.urlopen(f"{self.http(name)}/metrics", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.split("{", 1)[0].split(" ", 1)[0] == metric)


def start_cluster() -> tuple[str, dict]:
    """`cluster.py up` on a free port block in a temporary state directory: (state, cluster.json)."""
    state = tempfile.mkdtemp(prefix="xtrace-vmcluster-")
    os.rmdir(state)  # the tool makes it; it refuses a state that holds a cluster already
    for _attempt in range(2):  # another process may take one of the free ports between check and bind
        done = subprocess.run([sys.executable, TOOL, "up", "--state", state, "--port-base", "auto", "--json"],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode == 0:
            return state, json.loads(done.stdout.strip().splitlines()[-1])
    why = ([line for line in done.stderr.splitlines() if not line.startswith("[vm-build]")] or ["no output"])[-1]
    if REQUIRE:
        pytest.fail(f"XTRACE_REQUIRE_CLUSTER=1 but the VictoriaMetrics cluster did not start: {why}", pytrace=False)
    pytest.skip(f"no VictoriaMetrics cluster: {why}")


def stop_cluster(state: str) -> None:
    subprocess.run([sys.executable, TOOL, "down", "--state", state], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def vm_cluster():
    state, info = start_cluster()
    cluster = VmCluster(state, info)
    try:
        yield cluster
    finally:
        stop_cluster(state)


@pytest.fixture
def whole_cluster(vm_cluster):
    """The session's cluster, every component running again after the test (whatever it stopped)."""
    yield vm_cluster
    for name in sorted(vm_cluster.down):
        vm_cluster.start(name)
