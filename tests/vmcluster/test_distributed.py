"""Several namespace "nodes", each with the real xtrace-agent on XDP and known traffic, pushing under
two tenants through an insert tier that replicates to several storage nodes.

Topology, all VictoriaMetrics v1.151.0 built by `make vm`: three single-node `victoria-metrics` as
storage, and `vmagent` as the insert tier (`/insert/<tenant>/prometheus/api/v1/write`, the tenant
stored as `vm_account_id`), replicating every sample to all three storage nodes. The cluster
binaries (vminsert/vmselect/vmstorage) would be the closer match, but the Go module proxy serves
no `-cluster` tag (see tools/vm/versions.env, `make vm-cluster`); with full replication each
storage node holds every series, so queries go to any live one and need no vmselect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from tests.helpers.netns import AGENT, VethPair, _free_subnet, _kernel_ready, wait_for, xdp_prog
from tests.helpers.vm import VM_BIN, VMAGENT_BIN, VictoriaMetrics, VmAgent, _need_binary, free_port

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

NODES = (("node-a", 1), ("node-b", 1), ("node-c", 2))  # name, tenant
FRAME = 142  # a 100-byte UDP payload over IPv4 and Ethernet
DROP_REASONS = ("queue_full", "spool_full", "rejected", "shutdown")


class Node:
    """A test host pair: traffic leaves the namespace side, the agent counts it on the veth's other end."""

    def __init__(self, name: str, tenant: int, insert_url: str, work: str):
        self.name, self.tenant, self.sent = name, tenant, 0
        self.pair = VethPair(tag=uuid.uuid4().hex[:6], n=_free_subnet())
        self.pair.create()
        self.port = free_port()
        self.spool = os.path.join(work, f"spool-{name}")
        config = os.path.join(work, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(f"mode: xdp\ninterfaces: [{self.pair.dev_b}]\ninterval: 0.3\nnode: {name}\noutput: none\n"
                    f"httpListen: 127.0.0.1:{self.port}\nqueueSamples: 1000\n"
                    f"remoteWrite:\n  - url: {insert_url}\n    name: insert\nspool:\n  path: {self.spool}\n")
        self.log = open(os.path.join(work, f"{name}.log"), "w+")
        self.proc = subprocess.Popen([AGENT, "--config", config], stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(lambda: xdp_prog(self.pair.dev_b) or self.proc.poll() is not None, what=f"XDP attach on {name}")
        assert self.proc.poll() is None, self._log()

    def send(self, packets: int) -> None:
        s = self.pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.pair.ip4_a, 40000 + self.tenant))
        for _ in range(packets):
            s.sendto(b"d" * 100, (self.pair.ip4_b, 9999))
        s.close()
        self.sent += packets

    def metric(self, name: str, **labels: str) -> float:
        """A value from the agent's own /metrics (labels matched as a subset; summed)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def dropped(self) -> float:
        return sum(self.metric("xtrace_remote_write_samples_dropped_total", reason=r) for r in DROP_REASONS)

    def _log(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            assert rc == 0, self._log()
        self.pair.destroy()
        self.log.close()


@pytest.fixture
def tier(tmp_path):
    """Three storage nodes and the insert tier in front of them."""
    _need_binary(VM_BIN)
    _need_binary(VMAGENT_BIN)
    storage = []
    for i in range(3):
        (tmp_path / f"storage-{i}").mkdir()
        storage.append(VictoriaMetrics(str(tmp_path / f"storage-{i}" / "data"), free_port()))
    insert = VmAgent(storage, str(tmp_path))
    started = []
    try:
        for proc in (*storage, insert):
            proc.start()
            started.append(proc)
        yield insert, storage
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def nodes(tier, tmp_path):
    _kernel_ready()
    insert, _storage = tier
    made = []
    try:
        for name, tenant in NODES:
            made.append(Node(name, tenant, insert.tenant_url(tenant), str(tmp_path)))
        yield made
    finally:
        for node in made:
            node.stop()


def _totals(vm: VictoriaMetrics) -> dict[tuple, float]:
    """{(metric, node, tenant): sum over the test flows} as one storage node holds them."""
    out: dict[tuple, float] = {}
    for key, value in vm.latest('{__name__=~"xtrace_network_(packets|bytes)_total", dst_port="9999"}').items():
        labels = dict(key[1:])
        k = (key[0], labels["node"], labels.get("vm_account_id"))
        out[k] = out.get(k, 0) + value
    return out


def _want(nodes: list[Node]) -> dict[tuple, float]:
    out = {}
    for n in nodes:
        out[("xtrace_network_packets_total", n.name, str(n.tenant))] = n.sent
        out[("xtrace_network_bytes_total", n.name, str(n.tenant))] = n.sent * FRAME
    return out


def _wait_totals(vm: VictoriaMetrics, nodes: list[Node], timeout: float = 40) -> dict[tuple, float]:
    want = _want(nodes)
    deadline = time.monotonic() + timeout
    while True:
        got = _totals(vm)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def _per_tenant(totals: dict[tuple, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (metric, _node, tenant), value in totals.items():
        if metric == "xtrace_network_packets_total":
            out[tenant] = out.get(tenant, 0) + value
    return out


def test_a_storage_node_killed_mid_run_loses_nothing(tier, nodes):
    _insert, storage = tier
    for i, node in enumerate(nodes):
        node.send(20 + 15 * i)
    want = _want(nodes)
    assert _wait_totals(storage[0], nodes) == want
    assert _per_tenant(want) == {"1": 20 + 35, "2": 50}
    storage[0].stop(kill=True)
    for i, node in enumerate(nodes):
        node.send(7 + 3 * i)
    want = _want(nodes)
    for survivor in storage[1:]:
        assert _wait_totals(survivor, nodes) == want
    for node in nodes:
        assert node.dropped() == 0, node.name
        assert node.metric("xtrace_remote_write_samples_sent_total") > 0


def test_insert_tier_down_longer_than_the_memory_queue_spools_and_replays(tier, nodes):
    insert, storage = tier
    for i, node in enumerate(nodes):
        node.send(10 + i)
    assert _wait_totals(storage[1], nodes) == _want(nodes)
    insert.stop()
    for round_ in range(3):  # traffic keeps flowing while nothing can be delivered
        for node in nodes:
            node.send(5 + round_)
        time.sleep(1)
    # queueSamples 1000: past half of it the queue moves to the spool on disk
    assert wait_until_all(lambda n: n.metric("xtrace_remote_write_spool_bytes") > 0, nodes, timeout=20)
    assert all(any(f.endswith(".sz") for _d, _s, files in os.walk(n.spool) for f in files) for n in nodes)
    insert.start()
    for node in nodes:
        node.send(4)
    want = _want(nodes)
    assert _wait_totals(storage[2], nodes, timeout=90) == want
    assert wait_until_all(lambda n: n.metric("xtrace_remote_write_spool_bytes") == 0, nodes, timeout=30)
    for node in nodes:
        assert node.dropped() == 0, node.name


def wait_until_all(predicate, nodes: list[Node], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not all(predicate(n) for n in nodes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True
