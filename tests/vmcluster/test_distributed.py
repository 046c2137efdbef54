"""Several namespace "nodes", each with the real xtrace-agent on XDP and known traffic, pushing under two
tenants into the real VictoriaMetrics cluster (tests/helpers/vmcluster.py: three vmstorage, vminsert and
vmselect with -replicationFactor=2, built from the VM_CLUSTER_VERSION tag), read back through vmselect.

Each test takes fresh tenants (accountID:projectID), so the session's one cluster serves them all; a
test that stops a component starts it again (the `whole_cluster` fixture sees to it on failure too).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.helpers.netns import AGENT, VethPair, _free_subnet, _kernel_ready, wait_for, xdp_prog
from tests.helpers.vm import _get, free_port
from tests.helpers.vmcluster import Tenant, VmCluster

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

FRAME = 142  # a 100-byte UDP payload over IPv4 and Ethernet
TOTALS = '{__name__=~"xtrace_network_(packets|bytes)_total", dst_port="9999"}'


class Node:
    """A test host pair: traffic leaves the namespace side, the agent counts it on the veth's other end."""

    def __init__(self, name: str, tenant: Tenant, work: str, url: str | None = None):
        self.name, self.tenant, self.sent = name, tenant, 0
        self.pair = VethPair(tag=uuid.uuid4().hex[:6], n=_free_subnet())
        self.pair.create()
        self.port = free_port()
        self.spool = os.path.join(work, f"spool-{name}")
        config = os.path.join(work, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(f"mode: xdp\ninterfaces: [{self.pair.dev_b}]\ninterval: 0.3\nnode: {name}\noutput: none\n"
                    f"httpListen: 127.0.0.1:{self.port}\nqueueSamples: 1000\n"
                    f"remoteWrite:\n  - url: {url or tenant.write_url}\n    name: insert\n"
                    f"spool:\n  path: {self.spool}\n")
        self.log = open(os.path.join(work, f"{name}.log"), "w+")
        self.proc = subprocess.Popen([AGENT, "--config", config], stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(lambda: xdp_prog(self.pair.dev_b) or self.proc.poll() is not None, what=f"XDP attach on {name}")
        assert self.proc.poll() is None, self.log_text()

    def send(self, packets: int) -> None:
        s = self.pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.pair.ip4_a, 40000))
        for _ in range(packets):
            s.sendto(b"d" * 100, (self.pair.ip4_b, 9999))
        s.close()
        self.sent += packets

    def metric(self, name: str, **labels: str) -> float | None:
        """A value from the agent's own /metrics (labels matched as a subset; summed); None if absent."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())]
        return sum(values) if values else None

    def dropped(self) -> float:
        """Every sample the sink dropped, whatever the reason (the family is exported from the start)."""
        value = self.metric("xtrace_remote_write_samples_dropped_total")
        assert value is not None, "xtrace_remote_write_samples_dropped_total is not exported"
        return value

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            assert rc == 0, self.log_text()[-2000:]
        self.pair.destroy()
        self.log.close()


@pytest.fixture
def make_nodes(tmp_path):
    """make_nodes([(name, tenant[, url]), ...]) -> Nodes, stopped after the test."""
    _kernel_ready()
    made: list[Node] = []

    def make(specs) -> list[Node]:
        for spec in specs:
            made.append(Node(spec[0], spec[1], str(tmp_path), *spec[2:]))
        return made[-len(specs):]

    yield make
    for node in made:
        node.stop()


def _want(nodes: list[Node]) -> dict[tuple, float]:
    out = {}
    for n in nodes:
        out[("xtrace_network_packets_total", n.name)] = n.sent
        out[("xtrace_network_bytes_total", n.name)] = n.sent * FRAME
    return out


def _totals(tenant: Tenant) -> dict[tuple, float]:
    """{(metric, node): sum over the test flows} as vmselect answers for one tenant."""
    out: dict[tuple, float] = {}
    for key, value in tenant.latest(TOTALS).items():
        k = (key[0], dict(key[1:])["node"])
        out[k] = out.get(k, 0) + value
    return out


def _wait_totals(nodes: list[Node], timeout: float = 40) -> None:
    """Poll until every tenant's per-node totals through vmselect equal what its nodes sent (ingestion is
    asynchronous); fail naming the last answer."""
    deadline = time.monotonic() + timeout
    for tenant in {id(n.tenant): n.tenant for n in nodes}.values():
        want = _want([n for n in nodes if n.tenant is tenant])
        while (got := _totals(tenant)) != want and time.monotonic() < deadline:
            time.sleep(0.3)
        assert got == want, f"tenant {tenant.tenant}"


def _instant(tenant: Tenant, expr: str) -> tuple[list[dict], bool]:
    """(result, isPartial) of an instant query through vmselect."""
    tenant.force_flush()
    status, body = _get(f"{tenant.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert status == 200, body
    doc = json.loads(body)
    return doc["data"]["result"], doc.get("isPartial", False)


def _tenant_sum(tenant: Tenant) -> float:
    result, partial = _instant(tenant, 'sum(xtrace_network_packets_total{dst_port="9999"})')
    assert not partial, "vmselect answered partially"
    return float(result[0]["value"][1]) if result else 0.0


def _never_backwards(tenant: Tenant) -> None:
    for series in tenant.export(TOTALS):
        points = sorted(zip(series["timestamps"], series["values"], strict=True))
        values = [v for _, v in points]
        assert values == sorted(values), f"{series['metric']} went backwards: {values}"


def test_per_node_and_per_tenant_totals_are_exact_and_tenants_apart(whole_cluster: VmCluster, make_nodes):
    t1, t2 = whole_cluster.new_tenants(2)
    nodes = make_nodes([("node-a", t1), ("node-b", t1), ("node-c", t2)])
    for i, node in enumerate(nodes):
        node.send(20 + 15 * i)
    _wait_totals(nodes)
    assert (_tenant_sum(t1), _tenant_sum(t2)) == (20 + 35, 50)
    # a tenant sees only its own series: no node, no agent metric of the other one
    for tenant, own in ((t1, {"node-a", "node-b"}), (t2, {"node-c"})):
        result, _ = _instant(tenant, 'count by (node) ({__name__=~"xtrace_.+"})')
        assert {r["metric"].get("node") for r in result} == own, tenant.tenant
    (other,) = whole_cluster.new_tenants(1)
    assert other.export('{__name__=~"xtrace_.+"}') == []
    for node in nodes:
        assert node.dropped() == 0, node.name


def test_a_storage_node_killed_mid_run_loses_nothing(whole_cluster: VmCluster, make_nodes):
    t1, t2 = whole_cluster.new_tenants(2)
    nodes = make_nodes([("node-a", t1), ("node-b", t1), ("node-c", t2)])
    for i, node in enumerate(nodes):
        node.send(20 + 15 * i)
    _wait_totals(nodes)
    whole_cluster.stop("vmstorage-0", kill=True)
    sent_before = [node.metric("xtrace_remote_write_samples_sent_total") for node in nodes]
    for i, node in enumerate(nodes):
        node.send(7 + 3 * i)
    _wait_totals(nodes)  # vmselect answers from the surviving replica: complete, not partial
    assert (_tenant_sum(t1), _tenant_sum(t2)) == (27 + 45, 63)
    for node, before in zip(nodes, sent_before, strict=True):
        wait_for(lambda n=node, b=before: n.metric("xtrace_remote_write_samples_sent_total") > b, 20,
                 f"{node.name} pushing while a vmstorage is down")
    whole_cluster.start("vmstorage-0")
    for node in nodes:
        node.send(5)
    _wait_totals(nodes)
    for tenant in (t1, t2):
        _never_backwards(tenant)
    for node in nodes:
        assert node.dropped() == 0, node.name


def test_vminsert_down_longer_than_the_memory_queue_spools_and_replays(whole_cluster: VmCluster, make_nodes):
    t1, t2 = whole_cluster.new_tenants(2)
    nodes = make_nodes([("node-a", t1), ("node-b", t1), ("node-c", t2)])
    for i, node in enumerate(nodes):
        node.send(10 + i)
    _wait_totals(nodes)
    whole_cluster.stop("vminsert")
    for round_ in range(3):  # traffic keeps flowing while nothing can be delivered
        for node in nodes:
            node.send(5 + round_)
        time.sleep(1)
    # queueSamples 1000: past half of it the queue moves to the spool on disk
    for node in nodes:
        wait_for(lambda n=node: n.metric("xtrace_remote_write_spool_bytes") > 0, 20, f"{node.name} to spool")
        assert any(f.endswith(".sz") for _d, _s, files in os.walk(node.spool) for f in files), node.name
    whole_cluster.start("vminsert")
    for node in nodes:
        node.send(4)
    _wait_totals(nodes, timeout=90)
    for node in nodes:
        wait_for(lambda n=node: n.metric("xtrace_remote_write_spool_bytes") == 0, 30, f"{node.name}'s spool to drain")
        assert node.dropped() == 0, node.name
    for tenant in (t1, t2):
        _never_backwards(tenant)


class Relay(http.server.ThreadingHTTPServer):
    """Records each remote-write request's Content-Encoding and forwards it unchanged to the real vminsert,
    whose answer goes back. With refuse_zstd it answers a zstd body 415 itself, as Prometheus does (the only
    answer not from vminsert): what a receiver that does not offer zstd looks like to the agent."""

    def __init__(self, upstream: str, refuse_zstd: bool = False):
        self.encodings: list[tuple[str, int]] = []  # (Content-Encoding, status answered)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if refuse_zstd and encoding == "zstd":
                    status, answer = 415, b"unsupported Content-Encoding: zstd"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in
                               ("content-type", "content-encoding", "x-prometheus-remote-write-version",
                                "x-victoriametrics-remote-write-version")}
                    req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method="POST")
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:
                            status, answer = resp.status, resp.read()
                    except urllib.error.HTTPError as e:
                        status, answer = e.code, e.read()
                    except OSError as e:
                        status, answer = 503, str(e).encode()
                owner.encodings.append((encoding, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, tenant: Tenant) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/insert/{tenant.tenant}/prometheus/api/v1/write"


def test_zstd_with_the_real_vminsert_and_snappy_where_it_is_not_offered(whole_cluster: VmCluster, make_nodes):
    t1, t2 = whole_cluster.new_tenants(2)
    direct, refusing = Relay(whole_cluster.insert), Relay(whole_cluster.insert, refuse_zstd=True)
    try:
        nodes = make_nodes([("node-zstd", t1, direct.url(t1)), ("node-snappy", t2, refusing.url(t2))])
        for i, node in enumerate(nodes):
            node.send(30 + i)
        _wait_totals(nodes)
        wait_for(lambda: len(refusing.encodings) > 2, 10, "pushes through the refusing relay")
    finally:
        direct.shutdown()
        refusing.shutdown()
    # vminsert takes zstd: every push zstd, every answer vminsert's 204
    assert direct.encodings and set(direct.encodings) == {("zstd", 204)}
    # refused once, the same block resent as snappy at once, snappy from then on
    assert refusing.encodings[0] == ("zstd", 415)
    assert set(refusing.encodings[1:]) == {("snappy", 204)}
    assert "speaks only Prometheus remote write (snappy)" in nodes[1].log_text()
    assert "snappy" not in nodes[0].log_text()
    for node in nodes:
        assert node.dropped() == 0, node.name
