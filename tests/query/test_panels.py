"""Every dashboard panel's query and every recording rule, run against a VictoriaMetrics the real agents
filled (tests/query/conftest.py), must return exactly the expected numbers: the single node, and the
cluster through vmselect's /select/<tenant>/prometheus (each test runs once per database).

Queries are taken from the committed JSON and rule file, with Grafana's variables set as Grafana would
(`All` is `.*`) and the rate window set to the known window, so that `rate()` is the known traffic over
the time between the two reports that bracket it. Expected values come from what was sent (frames,
counter moves) or, for the agent's own health, from what the agent printed on stdout: the database got
them the other way, by remote write.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.fixtures.make_sysfs import ERROR_COUNTERS as PORT_ERRORS  # the PMA error counters
from tests.query.conftest import NIC_MOVES, RDMA_MOVES, ROOT, Lab

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

OFFSET = 0.1  # seconds after a report: its samples are in, the next report's (0.5 s later) are not
PORTS = [("mlx5_0", "1"), ("mlx5_1", "1"), ("mlx5_bond_0", "1"), ("mlx4_0", "1"), ("mlx4_0", "2")]
TRANSPORT_ERRORS = ("out_of_sequence", "packet_seq_err", "duplicate_request", "local_ack_timeout_err",
                    "out_of_buffer", "req_transport_retries_exceeded", "rnr_nak_retry_err")


def panels(name: str) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of a committed dashboard."""
    with open(os.path.join(ROOT, "deploy", "dashboards", f"xtrace-{name}.json")) as f:
        doc = json.load(f)
    return [(p["title"], t["refId"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def grafana(expr: str, window_ms: int, **chosen: str) -> str:
    """The query as Grafana sends it: cluster `test`, every other variable on `All` unless chosen."""
    values = {"cluster": "test", "node": ".*", "interface": ".*", "port": ".*", "device": ".*", "direction": ".*",
              **chosen}
    for name, value in values.items():
        expr = expr.replace(f"${{{name}:raw}}", value).replace(f"${name}", value)
    return expr.replace("$__rate_interval", f"{window_ms}ms")


def ms(t: float) -> float:
    """A time on a whole millisecond, as the database keeps it."""
    return round(t * 1000) / 1000


def key(**labels) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def assert_exact(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: series differ\n got {sorted(got)}\nwant {sorted(want)}"
    for k, v in want.items():
        # float64 precision: a push age is a difference of two ~1.8e9 s timestamps
        assert got[k] == pytest.approx(v, rel=1e-9, abs=2e-6), f"{what}: {dict(k)} is {got[k]}, expected {v}"


class Expect:
    """The expected answers, from what was sent and what the agents printed."""

    def __init__(self, lab: Lab):
        self.lab = lab
        start, end = lab.known.xdp
        self.t_xdp, self.w_xdp = ms(end + OFFSET), round((end - start) * 1000)
        self.dt = (round(end * 1000) - round(start * 1000)) / 1000  # XDP samples carry their report's time, in ms
        start, end = lab.known.rdma
        self.t_rdma, self.w_rdma = ms(end + OFFSET), round((end - start) * 1000)
        self.port_dt = self._port_dt()
        flows = lab.known.flows
        self.bytes = {name: len(frame) * n for name, (frame, n) in flows.items()}
        self.packets = {name: n for name, (_, n) in flows.items()}
        self.iface = lab.veth.dev_b
        self.t_gauges, self.gauges = self._gauges()

    def _port_dt(self) -> dict[tuple[str, str], float]:
        """Seconds between the two samples of each node-b port that bound the window (stamped at its read)."""
        out = {}
        start = self.t_rdma - self.w_rdma / 1000
        for labels, stamps in self.lab.sample_times('xtrace_rdma_port_info{node="node-b"}').items():
            before = [t for t in stamps if t <= start * 1000]
            if before:  # not a series a later state change started (the alert tests take a link down)
                last = max(t for t in stamps if t <= self.t_rdma * 1000)
                out[(dict(labels)["device"], dict(labels)["port"])] = (last - max(before)) / 1000
        return out

    def moved(self, device: str, port: str, group: str, counter: str) -> int:
        return RDMA_MOVES.get((device, int(port), group, counter), 0)

    def port_rate(self, group: str, name: str, factor: int = 1, ports=PORTS, **extra) -> dict:
        return {key(node="node-b", device=d, port=p, **extra): self.moved(d, p, group, name) * factor / self.port_dt[(d, p)]
                for d, p in ports}

    def nic_rate(self, metric: str, netdev: str, stat: str, **labels: str) -> float:
        """What the window's rate() of one NIC series is: the stat's move over the time between the two
        stored samples that bound the window (stamped at the netdev's read, not the port's)."""
        match = metric + "{" + ",".join(['node="node-b"', f'netdev="{netdev}"',
                                         *(f'{k}="{v}"' for k, v in labels.items())]) + "}"
        (stamps,) = self.lab.sample_times(match).values()
        start = self.t_rdma - self.w_rdma / 1000
        first = max(t for t in stamps if t <= start * 1000)
        last = max(t for t in stamps if t <= self.t_rdma * 1000)
        scale = 1e-6 if metric == "xtrace_nic_pause_duration_seconds_total" else 1
        return NIC_MOVES.get((netdev, stat), 0) * scale / ((last - first) / 1000)

    def verdict_and_nic(self) -> dict[tuple[str, str], dict]:
        """The verdict timeline (docs/verdicts.md, worked out by hand from the known moves) and the NIC
        evidence panels."""
        ranks = {("mlx5_0", "1"): 6, ("mlx5_1", "1"): 3, ("mlx5_bond_0", "1"): 4}  # link, fabric, host
        nic = {"mlx5_1": "ens1f0np0", "mlx5_bond_0": "bond0"}
        pause, frames, discards, zero, stalled = {}, {}, {}, {}, {}
        for device, netdev in nic.items():
            at = dict(node="node-b", device=device, port="1")
            pause[key(**at, priority="3")] = self.nic_rate("xtrace_nic_pause_duration_seconds_total", netdev,
                                                           "rx_prio3_pause_duration", direction="rx", priority="3")
            frames[key(**at, direction="rx")] = self.nic_rate("xtrace_nic_pause_frames_total", netdev, "rx_prio3_pause",
                                                              direction="rx", priority="3")
            frames[key(**at, direction="tx")] = self.nic_rate("xtrace_nic_pause_frames_total", netdev, "tx_pause_ctrl_phy",
                                                              direction="tx", priority="global")
            for cause in ("port_buffer", "priority_buffer", "shared_buffer", "congestion", "out_of_buffer", "pci_buffer"):
                discards[key(**at, cause=cause)] = 0.0
            discards[key(**at, cause="port_buffer")] = self.nic_rate("xtrace_nic_discards_total", netdev, "rx_discards_phy",
                                                                     direction="rx", cause="port_buffer")
            zero[key(**at)] = 0.0
            for kind in ("read", "write"):
                stalled[key(**at, kind=kind)] = 0.0
        return {
            ("Verdict per port", "A"): {key(node="node-b", device=d, port=p): ranks.get((d, p), 0)
                                        for d, p in [*PORTS, ("cxgb4_0", "1")]},
            ("Receive pause share per priority", "A"): pause,
            ("Pause frames per second", "A"): frames,
            ("NIC discards per second by cause", "A"): discards,
            ("Link errors (per interval)", "A"): zero, ("Link errors (per interval)", "B"): zero,
            ("Link errors (per interval)", "C"): zero, ("Link errors (per interval)", "D"): zero,
            ("PCIe outbound stalls (share of time)", "A"): stalled,
        }

    def from_reports(self, name: str, by: tuple[str, ...], kind: str, at: float, window_s: float,
                     agents=None) -> dict:
        """Sum by `by` of a self-metric as the agents printed it: its value at `at` (gauge) or its
        increase over the window."""
        out: dict = {}
        for agent in agents or (self.lab.xdp, self.lab.nccl):
            now = agent.series_at(at, name)
            before = agent.series_at(at - window_s, name)
            for labels, value in now.items():
                d = {**dict(labels), "node": agent.name}
                k = key(**{b: d[b] for b in by if b in d})
                change = value if kind == "gauge" else value - before[labels]
                out[k] = out.get(k, 0) + (change / window_s if kind == "rate" else change)
        return out

    def most_in_table(self) -> float:
        """The most flows one of node-a's intervals held in the kernel table, over the known window
        (max_over_time's range: the window's first report out, its last in), as the agent printed it."""
        start, end = self.lab.known.xdp
        seen = [v for ts, values in self.lab.xdp.reports if start < ts <= end
                for k, v in values.items() if k[0] == "xtrace_xdp_table_flows"]
        assert seen and max(seen) >= 4, seen  # the known window's flows were in the table
        return max(seen)

    def flow_gauges(self) -> dict:
        """xtrace_network_flow_bytes as the agent printed it: each flow's last value (the gauges are only
        written for flows that moved), at the last report of the known window that wrote any."""
        out: dict = {}
        for labels, value in self.gauges.items():
            d = dict(labels)
            if d["src_ip"] != "other":
                k = key(node="node-a", **{n: d[n] for n in ("interface", "src_ip", "dst_ip", "dst_port", "protocol")})
                out[k] = out.get(k, 0) + value
        assert len(out) == 4, out
        return out

    def _gauges(self) -> tuple[float, dict]:
        start, end = self.lab.known.xdp
        moved = [ts for ts, values in self.lab.xdp.reports if start < ts <= end
                 and any(k[0] == "xtrace_network_flow_bytes" for k in values)]
        assert moved, "no report of the known window carried flow gauges"
        last: dict = {}
        for ts, values in self.lab.xdp.reports:
            if ts <= moved[-1]:
                last.update({k[1:]: v for k, v in values.items() if k[0] == "xtrace_network_flow_bytes"})
        return ms(moved[-1] + OFFSET), last

    # --- dashboards ------------------------------------------------------------------------------
    def traffic(self) -> dict[tuple[str, str], dict]:
        b, p, dt, ip = self.bytes, self.packets, self.dt, self.lab.veth
        total_bytes, total_packets = sum(b.values()), sum(p.values())
        v4 = b["udp4"] + b["vlan"] + b["roce"]
        node_a = dict(node="node-a", interface=self.iface)
        return {
            ("Bytes per second by node and interface", "A"): {key(**node_a): total_bytes / dt},
            ("Packets per second by node and interface", "A"): {key(**node_a): total_packets / dt},
            ("Top sources", "A"): {key(cluster="test", src_ip=ip.ip4_a, src_name="node/node-a"): v4 / dt,
                                   key(cluster="test", src_ip=ip.ip6_a): b["udp6"] / dt},
            ("Top destinations", "A"): {key(cluster="test", dst_ip=ip.ip4_b, dst_name="ml/trainer-0"): v4 / dt,
                                        key(cluster="test", dst_ip=ip.ip6_b): b["udp6"] / dt},
            ("Top pairs", "A"): {
                key(cluster="test", src_ip=ip.ip4_a, dst_ip=ip.ip4_b, src_name="node/node-a",
                    dst_name="ml/trainer-0"): v4 / dt,
                key(cluster="test", src_ip=ip.ip6_a, dst_ip=ip.ip6_b): b["udp6"] / dt},
            ("Protocol mix", "A"): {key(protocol=17, traffic_type="ethernet"): (b["udp4"] + b["udp6"] + b["vlan"]) / dt,
                                    key(protocol=17, traffic_type="roce"): b["roce"] / dt,
                                    key(protocol=0, traffic_type="other"): b["late"] / dt},
            ("RoCEv2 packets by opcode and destination QP", "A"): {key(rdma_opcode=10, dest_qp=17): p["roce"] / dt},
            ("`other` share of bytes (budget pressure)", "A"): {key(**node_a): b["late"] / total_bytes},
            ("Flows exported, and in the kernel table", "A"): {key(**node_a): 4},
            ("Flows exported, and in the kernel table", "B"): {key(**node_a): self.most_in_table()},
            ("Packets not tracked per flow, by reason", "A"): {
                key(node="node-a", interface=self.iface, reason=r): 0 for r in ("malformed", "non_ip", "table_full")},
            ("Bytes per flow in the last interval", "A"): self.flow_gauges(),
            **self.drops_and_tcp(),
        }

    def drops_and_tcp(self) -> dict[tuple[str, str], dict]:
        """The known frames go to ports with no socket: the kernel drops each one (NO_SOCKET) and the
        agent (xdp.drops) prints it under its flow; no TCP moved in the known window."""
        by_reason = self.from_reports("xtrace_interface_drop_packets_total", ("node", "interface", "reason"), "rate",
                                      self.t_xdp, self.dt, [self.lab.xdp])
        p = self.packets
        no_socket = by_reason[key(node="node-a", interface=self.iface, reason="NO_SOCKET")] * self.dt
        assert round(no_socket) == p["udp4"] + p["udp6"] + p["roce"] + p["late"], by_reason
        # per flow: the late frame's drops start a series inside the window (its traffic flow is over
        # the budget, its drop flow is not): one sample in the window, so rate() has nothing for it
        now = self.lab.xdp.series_at(self.t_xdp, "xtrace_drop_packets_total")
        before = self.lab.xdp.series_at(self.t_xdp - self.dt, "xtrace_drop_packets_total")
        named: dict = {}
        for labels, value in now.items():
            d = dict(labels)
            if d["src_ip"] != "other" and labels in before:
                k = key(node="node-a", **{n: d[n] for n in ("interface", "src_ip", "dst_ip", "dst_port", "protocol",
                                                           "reason")})
                named[k] = named.get(k, 0) + (value - before.get(labels, 0)) / self.dt
        assert len(named) <= 10
        return {
            ("Drops per second by interface and reason", "A"): by_reason,
            ("Top dropping flows", "A"): named,
            ("TCP retransmit ratio", "A"): {key(node="node-a", interface=self.iface): 0},  # no retransmit
            ("TCP smoothed RTT percentiles", "A"): {},
            ("TCP smoothed RTT percentiles", "B"): {},
            ("TCP smoothed RTT percentiles", "C"): {},
        }

    def rdma(self) -> dict[tuple[str, str], dict]:
        congestion = {**self.port_rate("hw_counters", "np_cnp_sent", ports=[("mlx5_bond_0", "1")], counter="np_cnp_sent")}
        for c in ("np_cnp_sent", "rp_cnp_handled", "np_ecn_marked_roce_packets"):
            congestion.update(self.port_rate("hw_counters", c, ports=[("mlx5_1", "1")], counter=c))
        info = {("mlx5_0", "1"): ("InfiniBand", "100 Gb/sec (4X EDR)", "ACTIVE", "LinkUp"),
                ("mlx5_1", "1"): ("Ethernet", "200 Gb/sec (4X HDR)", "ACTIVE", "LinkUp"),
                ("mlx5_bond_0", "1"): ("Ethernet", "100 Gb/sec (4X EDR)", "ACTIVE", "LinkUp"),
                ("cxgb4_0", "1"): ("Ethernet", "25 Gb/sec (1X EDR)", "ACTIVE", "LinkUp"),
                ("mlx4_0", "1"): ("InfiniBand", "56 Gb/sec (4X FDR)", "ACTIVE", "LinkUp"),
                ("mlx4_0", "2"): ("InfiniBand", "10 Gb/sec (4X SDR)", "DOWN", "Polling")}
        return {
            **self.verdict_and_nic(),
            ("Bytes per second per port", "A"): self.port_rate("counters", "port_xmit_data", 4),
            ("Bytes per second per port", "B"): self.port_rate("counters", "port_rcv_data", 4),
            ("Packets per second per port", "A"): self.port_rate("counters", "port_xmit_packets"),
            ("Packets per second per port", "B"): self.port_rate("counters", "port_rcv_packets"),
            ("Port errors and discards (per interval)", "A"): {
                key(node="node-b", device=d, port=p, counter=c): self.moved(d, p, "counters", c)
                for d, p in PORTS for c in PORT_ERRORS},
            ("Transport errors and retransmissions (per interval)", "A"): {
                key(node="node-b", device=d, port=p, counter=c): self.moved(d, p, "hw_counters", c)
                for d, p in PORTS[:3] for c in TRANSPORT_ERRORS},
            ("Congestion notifications per second", "A"): congestion,
            ("Transmit wait (ticks per second)", "A"): self.port_rate("counters", "port_xmit_wait"),
            ("Link state and rate", "A"): {
                key(node="node-b", device=d, port=p, link_layer=ll, rate=r, state=s, phys_state=ps): 1
                for (d, p), (ll, r, s, ps) in info.items()},
            ("Link rate", "A"): {key(node="node-b", device=d, port=p): int(r.split()[0]) * 1e9
                                 for (d, p), (_, r, _, _) in info.items()},
            ("Saturated counters", "A"): {},
            # node-b's devices are nobody's: no series has pod labels (tests/query/test_pods.py has pods,
            # tests/query/test_pod_verdicts.py the verdicts per pod)
            **{(title, ref): {} for title, ref, _ in panels("rdma")
               if " per pod" in title or " per namespace" in title or title.endswith(" of each pod")},
        }

    def health(self) -> dict[tuple[str, str], dict]:
        t, w = self.t_rdma, self.w_rdma / 1000
        age = {}
        for agent in (self.lab.xdp, self.lab.nccl):
            pushed = agent.series_at(t, "xtrace_remote_write_last_success_timestamp_seconds").values()
            age[key(node=agent.name)] = t - max(pushed)

        def r(name, by, kind, agents=None):
            return self.from_reports(name, by, kind, t, w, agents)

        return {
            ("Agents pushing", "A"): {(): 2},
            ("Age of the last successful push", "A"): age,
            ("Remote-write queue (samples)", "A"): r("xtrace_remote_write_queue_samples", ("node", "target"), "gauge"),
            ("Spool (bytes)", "A"): r("xtrace_remote_write_spool_bytes", ("node", "target"), "gauge"),
            ("Samples dropped (per interval)", "A"): r("xtrace_remote_write_samples_dropped_total",
                                                       ("node", "target", "reason"), "increase"),
            ("Packets not tracked per flow (per interval)", "A"): r("xtrace_xdp_untracked_packets_total",
                                                                    ("node", "reason"), "increase", [self.lab.xdp]),
            ("Collector duration", "A"): r("xtrace_collector_duration_seconds", ("node", "collector"), "gauge"),
            ("Collector and sink errors (per interval)", "A"): r("xtrace_collector_errors_total",
                                                                 ("node", "collector"), "increase"),
            ("Collector and sink errors (per interval)", "B"): r("xtrace_sink_errors_total", ("node", "sink"),
                                                                 "increase"),
        }


@pytest.fixture(scope="module")
def expect(lab):
    return Expect(lab)


def _run_dashboard(lab, expect, name: str, want: dict, at: float, window_ms: int, times=None) -> None:
    queries = panels(name)
    assert {(title, ref) for title, ref, _ in queries} == set(want), "every panel query has an expectation"
    for title, ref, expr in queries:
        when = (times or {}).get(title, at)
        assert_exact(lab.query(grafana(expr, window_ms), when), want[(title, ref)], f"{name}: {title} ({ref})")


def test_traffic_dashboard(lab, expect):
    _run_dashboard(lab, expect, "traffic", expect.traffic(), expect.t_xdp, expect.w_xdp,
                   {"Bytes per flow in the last interval": expect.t_gauges})


def test_rdma_dashboard(lab, expect):
    _run_dashboard(lab, expect, "rdma", expect.rdma(), expect.t_rdma, expect.w_rdma)


def test_health_dashboard(lab, expect):
    _run_dashboard(lab, expect, "health", expect.health(), expect.t_rdma, expect.w_rdma)


def test_pod_names_ignore_finished_pods_and_host_network_pods(lab, expect):
    """The join names b's IPv4 after the running pod only (a finished Job pod had the same IP, and
    without the phase filter the join fails with duplicate series), a's IPv4 after its node (two
    host-network pods share it), and keeps the IPv6 flows, whose addresses are nobody's."""
    queries = dict(((t, r), e) for t, r, e in panels("traffic"))
    pairs = grafana(queries[("Top pairs", "A")], expect.w_xdp)
    names = {(dict(k).get("src_name"), dict(k).get("dst_name")) for k in lab.query(pairs, expect.t_xdp)}
    assert names == {("node/node-a", "ml/trainer-0"), (None, None)}
    unfiltered = pairs.replace('unless on (cluster, namespace, pod) (kube_pod_status_phase{phase=~"Succeeded|Failed"} == 1)', "")
    try:
        wrong = {dict(k).get("dst_name") for k in lab.query(unfiltered, expect.t_xdp)}
    except AssertionError as e:  # Prometheus refuses the duplicate match
        wrong = str(e)
    assert "batch/old-job-1" in wrong or "duplicate" in wrong


def recording_rules() -> dict[str, str]:
    """The records of the xtrace.records group (the verdicts' group: tests/nic/test_verdicts.py)."""
    with open(os.path.join(ROOT, "deploy", "rules", "xtrace.rules.yml")) as f:
        doc = yaml.safe_load(f)
    return {r["record"]: r["expr"] for g in doc["groups"] if g["name"] == "xtrace.records"
            for r in g["rules"] if "record" in r}


def test_recording_rules(lab, expect):
    rules = recording_rules()
    b, p, dt = expect.bytes, expect.packets, expect.dt
    a = dict(cluster="test", node="node-a", interface=expect.iface)
    nodes_c = [("mlx5_1", "1")]

    def port_rates(group, counter, factor=1, extra=None):
        out = {key(cluster="test", **dict(k)): v
               for k, v in expect.port_rate(group, counter, factor, **(extra or {})).items()}
        out.update({key(cluster="other", node="node-c", device=d, port=pt, **(extra or {})): 0 for d, pt in nodes_c})
        return out

    congestion = {key(cluster="test", **dict(k)): v for k, v in expect.rdma()[("Congestion notifications per second", "A")].items()}
    errors = {}
    for c in PORT_ERRORS:
        errors.update(port_rates("counters", c, extra={"counter": c}))
    want_xdp = {
        "node_interface:xtrace_interface_bytes:rate1m": {key(**a): sum(b.values()) / dt},
        "node_interface:xtrace_interface_packets:rate1m": {key(**a): sum(p.values()) / dt},
        "node_interface:xtrace_other_bytes:ratio_rate1m": {key(**a): b["late"] / sum(b.values())},
        "node_protocol:xtrace_network_bytes:rate1m": {
            key(cluster="test", node="node-a", protocol=17, traffic_type="ethernet"): (b["udp4"] + b["udp6"] + b["vlan"]) / dt,
            key(cluster="test", node="node-a", protocol=17, traffic_type="roce"): b["roce"] / dt,
            key(cluster="test", node="node-a", protocol=0, traffic_type="other"): b["late"] / dt},
        "node_interface_reason:xtrace_drop_packets:rate1m": {
            key(cluster="test", **dict(k)): v for k, v in expect.drops_and_tcp()[
                ("Drops per second by interface and reason", "A")].items()},
        "node_interface:xtrace_tcp_retransmits:ratio_rate1m": {key(**a): 0},  # no TCP in the known window
    }
    want_rdma = {
        "node_port:xtrace_rdma_transmit_bytes:rate1m": port_rates("counters", "port_xmit_data", 4),
        "node_port:xtrace_rdma_receive_bytes:rate1m": port_rates("counters", "port_rcv_data", 4),
        "node_port:xtrace_rdma_congestion:rate1m": congestion,
        "node_port:xtrace_rdma_errors:rate1m": errors,
    }
    # no device is a pod's in this lab: the per-pod rules answer nothing (tests/query/test_pods.py has pods)
    want_rdma.update({name: {} for name in rules if name.startswith("namespace")})
    assert set(rules) == set(want_xdp) | set(want_rdma), "every recording rule has an expectation"
    for want, at, window in ((want_xdp, expect.t_xdp, expect.w_xdp), (want_rdma, expect.t_rdma, expect.w_rdma)):
        for record, values in want.items():
            expr = re.sub(r"\[1m\]", f"[{window}ms]", rules[record])
            assert_exact(lab.query(expr, at), values, record)


def test_every_metric_queried_is_one_the_agents_push(lab):
    """No panel or rule may query a metric the agent does not export (a renamed or invented one would
    only show as an empty panel): each one is in the database the real agents filled."""
    exprs = [e for board in ("traffic", "rdma", "health") for _, _, e in panels(board)]
    with open(os.path.join(ROOT, "deploy", "rules", "xtrace.rules.yml")) as f:
        exprs += [r["expr"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    names = {n for e in exprs for n in re.findall(r"(?<![\w:])xtrace_\w+", e)}
    stored = {s["metric"]["__name__"] for s in lab.vm.export('{__name__=~"xtrace_.*"}')}
    assert len(names) > 20 and names <= stored, f"queried but never pushed: {sorted(names - stored)}"


def test_variables_select(lab, expect):
    """The variables narrow the panels: a destination port, a node, a device, another cluster."""
    traffic = {t: e for t, _, e in panels("traffic")}
    rdma = {t: e for t, r, e in panels("rdma") if r == "A"}

    def ask(expr, at, window, **chosen):
        return lab.query(grafana(expr, window, **chosen), at)

    b, dt = expect.bytes, expect.dt
    assert_exact(ask(traffic["Protocol mix"], expect.t_xdp, expect.w_xdp, port="9999"),
                 {key(protocol=17, traffic_type="ethernet"): (b["udp4"] + b["udp6"]) / dt}, "port 9999")
    assert ask(traffic["Protocol mix"], expect.t_xdp, expect.w_xdp, node="node-b") == {}
    # an ingress-only agent's series have no direction label: "ingress" (the regex `ingress|`) keeps them
    mix = ask(traffic["Protocol mix"], expect.t_xdp, expect.w_xdp)
    # (to float precision: vmselect sums the storage nodes' partial results in the order they arrive)
    assert mix != {}
    assert_exact(ask(traffic["Protocol mix"], expect.t_xdp, expect.w_xdp, direction="ingress|"), mix, "ingress|")
    assert ask(traffic["Protocol mix"], expect.t_xdp, expect.w_xdp, direction="egress") == {}
    tx = expect.rdma()[("Bytes per second per port", "A")]
    assert_exact(ask(rdma["Bytes per second per port"], expect.t_rdma, expect.w_rdma, device="mlx5_1"),
                 {k: v for k, v in tx.items() if dict(k)["device"] == "mlx5_1"}, "device mlx5_1")
    other = ask(rdma["Bytes per second per port"], expect.t_rdma, expect.w_rdma, cluster="other")
    assert set(other) == {key(node="node-c", device="mlx5_1", port="1")}


def test_variable_queries_list_what_the_agents_pushed(lab, expect):
    """Each variable's label_values() query, as Grafana turns it into a label-values request."""
    found = {}
    for board in ("traffic", "rdma", "health"):
        with open(os.path.join(ROOT, "deploy", "dashboards", f"xtrace-{board}.json")) as f:
            for v in json.load(f)["templating"]["list"]:
                if v["type"] != "query":
                    continue
                match = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"])
                selector, label = grafana(match[1], 0, cluster="test", node="node-.*"), match[2]
                url = f"{lab.vm.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
                with urllib.request.urlopen(url, timeout=10) as r:
                    found[(board, v["name"])] = set(json.load(r)["data"])
    assert found[("traffic", "cluster")] == {"test", "other"}
    assert found[("traffic", "node")] == found[("health", "node")] == {"node-a", "node-b"}
    assert found[("traffic", "interface")] == {expect.iface}
    assert {"9999", "6001", "4791"} <= found[("traffic", "port")]
    assert found[("rdma", "device")] >= {"mlx5_0", "mlx5_1", "mlx5_bond_0", "mlx4_0", "cxgb4_0"}
    assert found[("rdma", "port")] == {"1", "2"}
