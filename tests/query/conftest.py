"""One lab for the query-side tests, built once: a real VictoriaMetrics filled by real agents, twice over.

    node-a (cluster "test"): xtrace-agent on XDP, watching a veth; a test host sends known frames.
    node-b (cluster "test"): xtrace-agent -m nccl on a sysfs tree and `ethtool -S` dumps (--ethtool-dir)
            whose counters the test moves.
    node-c (cluster "other"): xtrace-agent -m rdma on its own tree; the alert tests kill and restart it.
    kube-state-metrics stand-in: writes kube_pod_info / kube_pod_status_phase every 0.5 s, as a
    scrape would (the agents' own data is real; only these series are written by the test).

Every agent runs at a 0.5 s interval with --output json, so the test knows each report's time and
values as the agent printed them; what reached the database went the separate remote-write way.
Every agent (and the kube-state-metrics stand-in) writes to two databases at once: a single-node
VictoriaMetrics, and a tenant of the real cluster (tests/helpers/vmcluster.py: vminsert's
/insert/<tenant>/prometheus, read through vmselect's /select/<tenant>/prometheus). The `lab` fixture
is parametrized over the two (`lab.vm` is the one under test), so every panel and rule query runs
against both; `lab_base` is the one lab behind them (the alert tests run a vmalert on each).
`Lab.known` holds the window (between two reports) in which the known traffic and counter moves
happened: panel queries are evaluated at the end of it, over exactly it.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace

import pytest
import yaml

from tests import frames
from tests.conftest import need
from tests.helpers import vm as vm_helpers
from tests.helpers.netns import AGENT, VethPair, _free_subnet, _kernel_ready, wait_for, xdp_prog
from tests.helpers.vm import VictoriaMetrics, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_TREE = os.path.join(ROOT, "tests", "fixtures", "sysfs")
INTERVAL = 0.5
SPAN = 6  # reports in the known window
VETH_QUIET = 3.0  # seconds after the veth is made: IPv6 MLD reports of the new addresses are over


def vm_binary(name: str) -> str:
    """A VictoriaMetrics program of the release the database fixture runs, else Debian's."""
    built = os.path.join(os.path.dirname(vm_helpers.VM_BIN), name)
    return built if os.access(built, os.X_OK) else shutil.which(name) or f"/usr/bin/{name}"


class Agent:
    """The real xtrace-agent with --output json; every report it prints is kept (timestamp, samples)."""

    def __init__(self, name: str, config: dict, work: str, *args: str):
        self.name = name
        self.path = os.path.join(work, f"{name}.yaml")
        self.config = config  # written at every start: a test may change it between runs
        self.args = args
        self.reports: list[tuple[float, dict[tuple, float]]] = []
        self.proc: subprocess.Popen | None = None
        self.stderr = os.path.join(work, f"{name}.log")

    def start(self) -> None:
        with open(self.path, "w") as f:
            yaml.safe_dump(self.config, f)
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen([AGENT, "--config", self.path, *self.args], stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            doc = json.loads(line)
            values = {(s["name"], *sorted(s["labels"].items())): s["value"] for s in doc["samples"]}
            self.reports.append((doc["timestamp"], values))

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def next_report(self, timeout: float = 10.0) -> int:
        """Wait for a report printed after this call; its index."""
        seen = len(self.reports)
        wait_for(lambda: len(self.reports) > seen, timeout, f"a report from {self.name}")
        return len(self.reports) - 1

    def value_at(self, at: float, name: str, **labels) -> float | None:
        """What the agent printed for a series in its last report at or before `at`."""
        key = (name, *sorted(labels.items()))
        for ts, values in reversed(self.reports):
            if ts <= at:
                return values.get(key)
        return None

    def series_at(self, at: float, name: str) -> dict[tuple, float]:
        """{sorted label items: value} of every series `name` in the last report at or before `at`."""
        for ts, values in reversed(self.reports):
            if ts <= at:
                return {k[1:]: v for k, v in values.items() if k[0] == name}
        return {}


class Stub(http.server.ThreadingHTTPServer):
    """An HTTP endpoint answering every POST with `status`: a remote-write target the test can make
    refuse (400: the agent drops and counts), and vmalert's notifier."""

    def __init__(self, status: int):
        self.status = status
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Sysfs:
    """A writable copy of the fixture tree: the test moves counters and link states in it."""

    def __init__(self, root: str):
        shutil.copytree(FIXTURE_TREE, root)
        self.root = root

    def path(self, device: str, port: int, *parts: str) -> str:
        return os.path.join(self.root, "class", "infiniband", device, "ports", str(port), *parts)

    def read(self, device: str, port: int, group: str, name: str) -> int:
        with open(self.path(device, port, group, name)) as f:
            return int(f.read().split()[0])

    def write(self, device: str, port: int, rel: str, text: str) -> None:
        with open(self.path(device, port, rel), "w") as f:
            f.write(f"{text}\n")

    def add(self, device: str, port: int, group: str, name: str, delta: int, modulo: int = 1 << 64) -> None:
        self.write(device, port, f"{group}/{name}", str((self.read(device, port, group, name) + delta) % modulo))


class EthtoolDumps:
    """node-b's NIC statistics: one mlx5 `ethtool -S` dump per RoCE netdev of the fixture tree (mlx5_1's
    GIDs name ens1f0np0, mlx5_bond_0's bond0), every named statistic at 0, and carrier_changes in sysfs."""

    NETDEVS = {"ens1f0np0": ("mlx5_1", "1"), "bond0": ("mlx5_bond_0", "1")}

    def __init__(self, root: str, sysfs: str):
        from tests.nic import dumps
        from xtrace_agent.nic import names
        os.makedirs(root)
        self.root = root
        self.render = dumps.render
        base = dumps.mlx5("6.8", pfc=(3,), channels=1)
        self.values = {n: {k: 0 if names.classify(k) else v for k, v in base} for n in self.NETDEVS}
        for netdev in self.NETDEVS:
            os.makedirs(os.path.join(sysfs, "class", "net", netdev), exist_ok=True)
            with open(os.path.join(sysfs, "class", "net", netdev, "carrier_changes"), "w") as f:
                f.write("2\n")
            self.write(netdev)

    def write(self, netdev: str) -> None:
        path = os.path.join(self.root, f"{netdev}.txt")
        with open(path + ".new", "w") as f:
            f.write(self.render(list(self.values[netdev].items())))
        os.replace(path + ".new", path)  # the agent never reads half a dump

    def add(self, netdev: str, stat: str, delta: int) -> None:
        self.values[netdev][stat] += delta
        self.write(netdev)


# Pods kube-state-metrics reports, written as kube_pod_info (+ kube_pod_status_phase). Filled in by the lab
# with the veth's addresses: b's IPv4 is a pod's (and an old Job pod's, finished, same IP); a's IPv4 is
# node-a's own, shared by two host-network pods; the IPv6 addresses are nobody's.
def pods(ip4_a: str, ip4_b: str) -> list[dict]:
    return [
        dict(namespace="ml", pod="trainer-0", pod_ip=ip4_b, host_ip="10.99.0.2", node="node-b", host_network="false",
             phase="Running"),
        dict(namespace="batch", pod="old-job-1", pod_ip=ip4_b, host_ip="10.99.0.2", node="node-b",
             host_network="false", phase="Succeeded"),
        dict(namespace="kube-system", pod="kube-proxy-a", pod_ip=ip4_a, host_ip=ip4_a, node="node-a",
             host_network="true", phase="Running"),
        dict(namespace="monitoring", pod="node-exporter-a", pod_ip=ip4_a, host_ip=ip4_a, node="node-a",
             host_network="true", phase="Running"),
        dict(namespace="default", pod="web-1", pod_ip="10.244.1.5", host_ip=ip4_a, node="node-a",
             host_network="false", phase="Running"),
    ]


class KubeStateMetrics:
    """Stands in for a vmagent scraping kube-state-metrics (two replicas, as HA setups run it): pods and
    the agents' DaemonSet, written to every database of the lab."""

    def __init__(self, dbs: list, pods_: list[dict]):
        self.dbs, self.pods = dbs, pods_
        self.ready_agents = 3  # of the DaemonSet xtrace-uplinks' 3 desired
        self.stop = threading.Event()
        self.write()
        threading.Thread(target=self._loop, daemon=True).start()

    def write(self) -> None:
        ms = int(time.time() * 1000)
        lines = []
        for replica in ("ksm-0", "ksm-1"):
            for p in self.pods:
                base = f'cluster="test",instance="{replica}",namespace="{p["namespace"]}",pod="{p["pod"]}"'
                lines.append(f'kube_pod_info{{{base},pod_ip="{p["pod_ip"]}",host_ip="{p["host_ip"]}",'
                             f'node="{p["node"]}",host_network="{p["host_network"]}",uid="u-{p["pod"]}"}} 1 {ms}')
                for phase in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
                    lines.append(f'kube_pod_status_phase{{{base},phase="{phase}"}} {int(phase == p["phase"])} {ms}')
            ds = f'cluster="test",instance="{replica}",namespace="xtrace-system",daemonset="xtrace-uplinks"'
            lines.append(f"kube_daemonset_status_desired_number_scheduled{{{ds}}} 3 {ms}")
            lines.append(f"kube_daemonset_status_number_ready{{{ds}}} {self.ready_agents} {ms}")
        for db in self.dbs:
            req = urllib.request.Request(db.import_url, data="\n".join(lines).encode() + b"\n", method="POST")
            urllib.request.urlopen(req, timeout=5).read()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.write()
            except OSError:
                pass


@dataclass
class Known:
    """The window of the known traffic and counter moves: (start, end] in seconds, per data source."""
    xdp: tuple[float, float] = (0.0, 0.0)
    rdma: tuple[float, float] = (0.0, 0.0)
    flows: dict = field(default_factory=dict)  # name -> (labels, packets, bytes) sent in the window


@dataclass
class Lab:
    vm: VictoriaMetrics
    veth: VethPair
    xdp: Agent
    nccl: Agent
    spare: Agent
    sysfs: Sysfs
    reject: Stub
    notifier: Stub
    ksm: KubeStateMetrics
    work: str
    known: Known = field(default_factory=Known)
    raw: object = None
    dbs: dict = field(default_factory=dict)  # "single": the VictoriaMetrics, "cluster": the cluster's tenant
    backend: str = "single"  # which of them `vm` is
    ethtool: EthtoolDumps | None = None

    def query(self, expr: str, at: float) -> dict[tuple, float]:
        """Instant query: {sorted label items: value}."""
        # a fraction of a millisecond more: some releases truncate `time` to milliseconds, and a float
        # such as 1796181369.59 is a hair below its millisecond
        answer = self.vm.query(expr, at=f"{at + 0.0002:.4f}")
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in answer}

    def sample_times(self, match: str) -> dict[tuple, list[int]]:
        """Stored sample timestamps (ms) of every matching series."""
        return {tuple(sorted(s["metric"].items())): s["timestamps"] for s in self.vm.export(match)}


def _frames(veth: VethPair) -> dict[str, tuple[bytes, int]]:
    """The known flows: name -> (frame, packets sent in the known window)."""
    dst, src = veth.mac("b"), veth.mac("a")
    a4, b4, a6, b6 = veth.ip4_a, veth.ip4_b, veth.ip6_a, veth.ip6_b
    return {
        "udp4": (frames.ethernet(dst, src, frames.ipv4(a4, b4, frames.udp(5000, 9999, b"x" * 100))), 10),
        "udp6": (frames.ethernet(dst, src, frames.ipv6(a6, b6, frames.udp(5001, 9999, b"y" * 200))), 5),
        "vlan": (frames.ethernet(dst, src, frames.ipv4(a4, b4, frames.udp(6000, 6001, b"v" * 64)), vlans=[100]), 3),
        "roce": (frames.ethernet(dst, src, frames.roce(a4, b4, opcode=10, dest_qp=17, payload=b"r" * 256)), 4),
    }


# A flow that only appears once the series budget (xdp.maxFlows: 4) is full: it is counted in `other`.
def _late_frame(veth: VethPair) -> bytes:
    return frames.ethernet(veth.mac("b"), veth.mac("a"), frames.ipv4(veth.ip4_a, veth.ip4_b, frames.udp(5002, 9999, b"z")))


def flood(lab: Lab, flows: int = 3000) -> None:
    """`flows` one-packet flows at once: more than the kernel table (1024) and the series budget hold."""
    dst, src = lab.veth.mac("b"), lab.veth.mac("a")
    for i in range(flows):
        lab.raw.send(frames.ethernet(dst, src, frames.ipv4(lab.veth.ip4_a, lab.veth.ip4_b,
                                                           frames.udp(20000 + i, 7000, b"f"))))


def lossy_tcp(lab: Lab, megabytes: int = 4, loss_every: int = 10) -> None:
    """A TCP transfer from node-a's namespace to the test host, an nft rule there dropping every Nth
    segment: node-a's socket retransmits (xdp.tcp counts them on its watched veth end)."""
    from tests.helpers.netns import lossy_tcp_transfer

    lossy_tcp_transfer(lab.veth, megabytes, loss_every, "xtlab")


def _targets(dbs: dict) -> list[dict]:
    """The agents' remote-write targets: every database of the lab."""
    return [{"url": db.write_url, "name": "vm" if name == "single" else name} for name, db in dbs.items()]


def _rdma_config(node: str, cluster: str, mode: str, tree: str, dbs: dict, devices=(),
                 ethtool: str | None = None) -> dict:
    cfg = {"mode": mode, "sysfs": tree, "interval": INTERVAL, "output": "json", "node": node,
           "labels": {"cluster": cluster}, "httpListen": "", "remoteWrite": _targets(dbs)}
    if ethtool:
        cfg["ethtoolDir"] = ethtool
    if devices:
        cfg["devices"] = list(devices)
    return cfg


def _quiet_baseline(tree: Sysfs) -> None:
    """No alert may fire before a fault is injected: un-saturate the fixture's mlx4_0 port 1 counters."""
    for name, value in (("symbol_error", 100), ("link_error_recovery", 1), ("local_link_integrity_errors", 0)):
        tree.write("mlx4_0", 1, f"counters/{name}", str(value))


# The known counter moves on node-b: (device, port, group, counter) -> delta.
RDMA_MOVES = {
    ("mlx5_0", 1, "counters", "port_xmit_data"): 1_000_000,       # words: 4,000,000 bytes
    ("mlx5_0", 1, "counters", "symbol_error"): 3,
    ("mlx5_0", 1, "counters", "port_rcv_errors"): 1,
    ("mlx5_0", 1, "hw_counters", "out_of_buffer"): 10,            # 32-bit, 6 below its wrap: wraps
    ("mlx5_1", 1, "counters", "port_xmit_data"): 250_000,
    ("mlx5_1", 1, "counters", "port_rcv_data"): 500_000,
    ("mlx5_1", 1, "counters", "port_xmit_packets"): 1000,
    ("mlx5_1", 1, "counters", "port_rcv_packets"): 2000,
    ("mlx5_1", 1, "counters", "port_xmit_wait"): 800,
    ("mlx5_1", 1, "hw_counters", "np_cnp_sent"): 300,
    ("mlx5_1", 1, "hw_counters", "rp_cnp_handled"): 30,
    ("mlx5_1", 1, "hw_counters", "np_ecn_marked_roce_packets"): 600,
    ("mlx5_1", 1, "hw_counters", "packet_seq_err"): 2,
    ("mlx5_1", 1, "hw_counters", "out_of_sequence"): 5,
}
WIDTH32 = {"out_of_buffer", "port_xmit_wait"}
# ... and in node-b's ethtool dumps: (netdev, statistic) -> delta. mlx5_1 is paused 0.3 s (10% of the
# window: pfc_blocking, but its ECN marks make it fabric_congestion); bond0 drops on receive
# (host_backpressure); mlx5_0's symbol errors make it link_degraded (docs/verdicts.md).
NIC_MOVES = {
    ("ens1f0np0", "rx_prio3_pause"): 40,
    ("ens1f0np0", "rx_prio3_pause_duration"): 300_000,  # µs
    ("ens1f0np0", "tx_pause_ctrl_phy"): 12,
    ("bond0", "rx_discards_phy"): 9,
}


def _cluster_tenant(request):
    """A fresh tenant of the session's VictoriaMetrics cluster, or None where it cannot run (the cluster
    tests skip then; under XTRACE_REQUIRE_CLUSTER=1 the fixture fails instead)."""
    try:
        return request.getfixturevalue("vm_cluster").new_tenants(1)[0]
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="package")
def lab_base(request, tmp_path_factory):
    _kernel_ready()
    need(os.access(vm_helpers.VM_BIN, os.X_OK), f"{vm_helpers.VM_BIN} not installed (make vm)")
    work = str(tmp_path_factory.mktemp("query-lab"))
    veth = VethPair(tag=uuid.uuid4().hex[:6], n=_free_subnet())
    made = time.monotonic()
    vm = VictoriaMetrics(os.path.join(work, "vm-data"), free_port())
    dbs = {"single": vm}
    tenant = _cluster_tenant(request)
    if tenant is not None:
        dbs["cluster"] = tenant
    reject, notifier = Stub(204), Stub(200)
    agents: list[Agent] = []
    ksm = None
    try:
        veth.create()
        vm.start()
        tree, spare_tree = Sysfs(os.path.join(work, "sysfs-b")), Sysfs(os.path.join(work, "sysfs-c"))
        _quiet_baseline(tree)
        # errors from before the agent first saw the port: they must never read as new (test_alerts)
        spare_tree.write("mlx5_bond_0", 1, "counters/port_rcv_errors", "3")
        ethtool = EthtoolDumps(os.path.join(work, "ethtool-b"), tree.root)
        nccl = Agent("node-b", _rdma_config("node-b", "test", "nccl", tree.root, dbs, ethtool=ethtool.root), work)
        spare = Agent("node-c", _rdma_config("node-c", "other", "rdma", spare_tree.root, dbs, ["mlx5_1"]), work)
        xdp = Agent("node-a", {
            "mode": "xdp", "interfaces": [veth.dev_b], "interval": INTERVAL, "output": "json", "node": "node-a",
            "labels": {"cluster": "test"}, "httpListen": "", "xdp": {"maxFlows": 4, "flowTableSize": 1024,
                                                                                "drops": True, "tcp": True},
            "remoteWrite": [*_targets(dbs), {"url": reject.url + "/api/v1/write", "name": "reject"}],
        }, work)
        agents += [nccl, spare]
        nccl.start()
        spare.start()
        ksm = KubeStateMetrics(list(dbs.values()), pods(veth.ip4_a, veth.ip4_b))
        time.sleep(max(0.0, VETH_QUIET - (time.monotonic() - made)))
        agents.append(xdp)
        xdp.start()
        wait_for(lambda: xdp_prog(veth.dev_b), 60, "the XDP agent to attach")
        lab = Lab(vm, veth, xdp, nccl, spare, tree, reject, notifier, ksm, work, dbs=dbs)
        lab.ethtool = ethtool
        lab.raw = veth.raw_socket()
        _known_window(lab)
        yield lab
    finally:
        if ksm:
            ksm.stop.set()
        for agent in agents:
            agent.stop()
        vm.stop()
        veth.destroy()
        reject.shutdown()
        notifier.shutdown()


@pytest.fixture(scope="package", params=["single", "cluster"])
def lab(request, lab_base):
    """The lab as one of its databases holds it: the single node, or the cluster through vmselect."""
    if request.param not in lab_base.dbs:
        pytest.skip("no VictoriaMetrics cluster (make vm-cluster; required under XTRACE_REQUIRE_CLUSTER=1)")
    return replace(lab_base, vm=lab_base.dbs[request.param], backend=request.param)


def _known_window(lab: Lab) -> None:
    """Warm up (each known flow once, so every series exists before the window), then send the known
    traffic and move the known counters between two reports of each agent."""
    sent = _frames(lab.veth)
    lab.xdp.next_report()
    for frame, _ in sent.values():
        lab.raw.send(frame)
    lab.xdp.next_report()
    lab.xdp.next_report()  # the warm-up is drained and reported
    i_xdp = lab.xdp.next_report()
    i_rdma = lab.nccl.next_report()
    for frame, n in sent.values():
        for _ in range(n):
            lab.raw.send(frame)
    late = _late_frame(lab.veth)
    lab.raw.send(late)
    for (device, port, group, name), delta in RDMA_MOVES.items():
        lab.sysfs.add(device, port, group, name, delta, 1 << 32 if name in WIDTH32 else 1 << 64)
    for (netdev, stat), delta in NIC_MOVES.items():
        lab.ethtool.add(netdev, stat, delta)
    # a window of 6 reports (3 s): older VictoriaMetrics releases (Debian's 1.79) widen a rate() window
    # narrower than a few sample intervals, so a short one would not be the window asked for
    j_xdp, j_rdma = i_xdp + SPAN, i_rdma + SPAN
    wait_for(lambda: len(lab.xdp.reports) > j_xdp and len(lab.nccl.reports) > j_rdma, 15, "the window's reports")
    lab.known.xdp = (lab.xdp.reports[i_xdp][0], lab.xdp.reports[j_xdp][0])
    lab.known.rdma = (lab.nccl.reports[i_rdma][0], lab.nccl.reports[j_rdma][0])
    lab.known.flows = {name: (frame, n) for name, (frame, n) in sent.items()}
    lab.known.flows["late"] = (late, 1)
    # Remote write is asynchronous: the window's last reports are in the database once a later one is
    # (one sender per target, in order).
    for db in lab.dbs.values():
        view = replace(lab, vm=db)
        for agent, (_, end) in ((lab.xdp, lab.known.xdp), (lab.nccl, lab.known.rdma)):
            wait_for(lambda agent=agent, end=end, view=view: any(
                t > end * 1000 for ts in view.sample_times(f'xtrace_reports_total{{node="{agent.name}"}}').values()
                for t in ts), 15, f"{agent.name}'s reports to reach {db.url}")
