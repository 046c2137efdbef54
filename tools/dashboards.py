"""XTrace's Grafana dashboards as code (grafana-foundation-sdk): Traffic, RDMA fabric, XTrace health.

    .venv/bin/python tools/dashboards.py            # (re)write deploy/dashboards/*.json
    .venv/bin/python tools/dashboards.py --check    # exit 1 if the committed JSON differs

Every query is PromQL that VictoriaMetrics (and Prometheus) answer; the panels name metrics through
the agent's definitions (agent/xtrace_agent/datametrics.py and selfmetrics.py), and a query naming
any other `xtrace_` metric is refused (rules.write_or_check). The tests run each panel's query
against a VictoriaMetrics filled by the real agent and compare exact numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from xtrace_agent import datametrics as data
from xtrace_agent import selfmetrics as sm
from xtrace_agent import verdicts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rules import CONGESTION, PORT_ERRORS, ROOT, TRANSPORT_ERRORS, any_of, write_or_check  # noqa: E402

OUT = os.path.join(ROOT, "deploy", "dashboards")
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
PUSH_AGE = 180  # seconds: as the XTraceAgentNotPushing alert


# --- pod names on flows ------------------------------------------------------------------------
def owner(side: str) -> str:
    """IP -> `<side>_name` from kube-state-metrics' kube_pod_info: `namespace/pod` for a pod's own IP,
    `node/<node>` for a node IP (host-network pods share it, so they never name it)."""
    ip, name = f"{side}_ip", f"{side}_name"
    pods = ('kube_pod_info{host_network="false", pod_ip!=""}\n'
            '    unless on (cluster, namespace, pod) (kube_pod_status_phase{phase=~"Succeeded|Failed"} == 1)')
    return (f'max by (cluster, {ip}, {name}) (label_replace(label_join(\n    {pods},\n'
            f'  "{name}", "/", "namespace", "pod"), "{ip}", "$1", "pod_ip", "(.+)"))\n'
            f"or on (cluster, {ip})\n"
            f'max by (cluster, {ip}, {name}) (label_replace(label_replace(kube_pod_info{{host_ip!=""}},\n'
            f'  "{name}", "node/$1", "node", "(.+)"), "{ip}", "$1", "host_ip", "(.+)"))')


def with_owner(expr: str, side: str, keep: str) -> str:
    """`expr` (series labelled <side>_ip) with <side>_name added where the IP is a pod's or a node's;
    series of other IPs are kept as they are. `keep` lists expr's labels."""
    return f"(\n{expr}\n  * on (cluster, {side}_ip) group_left ({side}_name) (\n{owner(side)}\n  )\nor on ({keep})\n{expr}\n)"


# --- building blocks -----------------------------------------------------------------------------
def sel(*matchers: str) -> str:
    return "{" + ", ".join(matchers) + "}"


def q(expr: str, legend: str = "", instant: bool = False) -> prometheus.Dataquery:
    d = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DS)
    return d.instant().format(pm.PromQueryFormat.TABLE) if instant else d.range()


def series(title: str, unit: str, *targets, description: str = "", width: int = 12) -> timeseries.Panel:
    p = timeseries.Panel().title(title).unit(unit).datasource(DS).height(8).span(width)
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(ord("A") + i)))
    return p.description(description) if description else p


def tab(title: str, expr: str, description: str = "", width: int = 12) -> table.Panel:
    p = table.Panel().title(title).datasource(DS).height(8).span(width).with_target(q(expr, instant=True).ref_id("A"))
    return p.description(description) if description else p


def var(name: str, label: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).datasource(DS).query(query).multi(True).include_all(True)
            .all_value(".*").refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def board(uid: str, title: str, description: str, variables, rows) -> gd.Dashboard:
    d = (gd.Dashboard(title).uid(uid).description(description).tags(["xtrace"]).time("now-1h", "now")
         .refresh("30s").timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR)
         .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    for v in variables:
        d = d.with_variable(v)
    for row_title, panels in rows:
        d = d.with_row(gd.Row(row_title))
        for p in panels:
            d = d.with_panel(p)
    return d


CLUSTER = var("cluster", "Cluster", f"label_values({sm.REPORTS}, cluster)")
NODE = var("node", "Node", f'label_values({sm.REPORTS}{{cluster=~"$cluster"}}, node)')
C, N = 'cluster=~"$cluster"', 'node=~"$node"'
# Agents that count ingress only push no `direction` label (their series are what they were
# before egress existed), so "ingress" must also select unlabelled series: its value is the regex
# `ingress|`, used raw. The board opens on ingress, what it always showed.
DIRECTION = (gd.CustomVariable("direction").label("Direction").values("ingress : ingress|,egress : egress")
             .include_all(True).all_value(".*")
             .current(dm.VariableOption(selected=True, text="ingress", value="ingress|")))
D = 'direction=~"${direction:raw}"'


# --- Traffic ----------------------------------------------------------------------------------
def traffic() -> gd.Dashboard:
    iface = sel(C, N, 'interface=~"$interface"', D)
    flows = sel(C, N, 'interface=~"$interface"', D, 'dst_port=~"$port"')
    named = sel(C, N, 'interface=~"$interface"', D, 'dst_port=~"$port"', 'src_ip!="other"')
    roce = sel(C, N, 'interface=~"$interface"', D, 'traffic_type="roce"')
    other = sel(C, N, 'interface=~"$interface"', D, 'src_ip="other"')

    def top(by: str) -> str:
        return f"sum by (cluster, {by}) (rate({data.NETWORK_BYTES}{named}[{RATE}]))"

    pairs = with_owner(with_owner(top("src_ip, dst_ip"), "src", "cluster, src_ip, dst_ip"), "dst",
                       "cluster, src_ip, dst_ip")
    rows = [
        ("Throughput", [
            series("Bytes per second by node and interface", "Bps",
                   q(f"sum by (node, interface, direction) (rate({data.IFACE_BYTES}{iface}[{RATE}]))",
                     "{{node}} {{interface}} {{direction}}"),
                   description=f"Every frame counted (L2 length), parsable or not: {data.IFACE_BYTES}. "
                               "direction: ingress (XDP) or egress (TC), on agents with xdp.directions egress."),
            series("Packets per second by node and interface", "pps",
                   q(f"sum by (node, interface, direction) (rate({data.IFACE_PACKETS}{iface}[{RATE}]))",
                     "{{node}} {{interface}} {{direction}}")),
        ]),
        ("Top talkers (pods named through kube-state-metrics' kube_pod_info)", [
            series("Top sources", "Bps", q(f"topk(10, {with_owner(top('src_ip'), 'src', 'cluster, src_ip')})",
                                           "{{src_name}} {{src_ip}}"), width=8),
            series("Top destinations", "Bps", q(f"topk(10, {with_owner(top('dst_ip'), 'dst', 'cluster, dst_ip')})",
                                                "{{dst_name}} {{dst_ip}}"), width=8),
            series("Top pairs", "Bps", q(f"topk(10, {pairs})", "{{src_name}} {{src_ip}} → {{dst_name}} {{dst_ip}}"),
                   width=8, description="Names come from kube_pod_info: namespace/pod for pod IPs, node/<name> "
                                        "for node IPs (host-network pods); other IPs stay bare."),
        ]),
        ("Protocols and RoCEv2", [
            series("Protocol mix", "Bps",
                   q(f"sum by (protocol, traffic_type) (rate({data.NETWORK_BYTES}{flows}[{RATE}]))",
                     "proto {{protocol}} {{traffic_type}}"),
                   description="protocol is the IANA number (6 TCP, 17 UDP, 58 ICMPv6); traffic_type other is "
                               "the series-budget flow."),
            series("RoCEv2 packets by opcode and destination QP", "pps",
                   q(f"sum by (rdma_opcode, dest_qp) (rate({data.NETWORK_PACKETS}{roce}[{RATE}]))",
                     "opcode {{rdma_opcode}} QP {{dest_qp}}"),
                   description="Only RoCEv2 that reaches the kernel (soft-RoCE, mirrored, forwarded): offloaded "
                               "RDMA is in the RDMA fabric dashboard."),
        ]),
        ("Series budget and kernel table", [
            series("`other` share of bytes (budget pressure)", "percentunit",
                   q(f"sum by (node, interface, direction) (rate({data.NETWORK_BYTES}{other}[{RATE}]))\n"
                     f"/ sum by (node, interface, direction) (rate({data.IFACE_BYTES}{iface}[{RATE}]))",
                     "{{node}} {{interface}} {{direction}}"),
                   description="Traffic counted in the interface's `other` flow because xdp.maxFlows was full.",
                   width=8),
            series("Flows exported, and in the kernel table", "short",
                   q(f"sum by (node, interface, direction) ({sm.FLOWS_TRACKED}{iface})",
                     "{{node}} {{interface}} {{direction}} exported"),
                   q(f"max by (node, interface, direction) "
                     f"(max_over_time({sm.XDP_TABLE_FLOWS}{iface}[$__rate_interval]))",
                     "{{node}} {{interface}} {{direction}} in the kernel table"),
                   description="Exported: series in use against xdp.maxFlows. In the kernel table: the most flows "
                               "one interval held, against xdp.flowTableSize (beyond it, packets go to table_full).",
                   width=8),
            series("Packets not tracked per flow, by reason", "pps",
                   q(f"sum by (node, interface, direction, reason) "
                     f"(rate({data.UNTRACKED_PACKETS}{iface}[{RATE}]))",
                     "{{node}} {{interface}} {{direction}} {{reason}}"),
                   description="Counted in the interface's `other` flow: table_full means xdp.flowTableSize is "
                               "too small for one interval's flows; malformed and non_ip are the traffic itself.",
                   width=8),
        ]),
        ("Drops and TCP (xdp.drops, xdp.tcp)", [
            series("Drops per second by interface and reason", "pps",
                   q(f"sum by (node, interface, direction, reason) "
                     f"(rate({data.IFACE_DROP_PACKETS}{iface}[{RATE}]))",
                     "{{node}} {{interface}} {{direction}} {{reason}}"),
                   description="Packets the kernel freed as dropped on the interface (skb:kfree_skb), by the "
                               "kernel's own reason (enum skb_drop_reason). Drops inside the NIC are not here: "
                               "those are the ethtool discards.", width=12),
            series("Top dropping flows", "pps",
                   q(f"topk(10, sum by (node, interface, src_ip, dst_ip, dst_port, protocol, reason) "
                     f"(rate({data.DROP_PACKETS}{named}[{RATE}])))",
                     "{{src_ip}} → {{dst_ip}}:{{dst_port}} proto {{protocol}} {{reason}}"),
                   description="Drops per second per flow and reason (same flow labels as the traffic).", width=12),
            series("TCP retransmit ratio", "percentunit",
                   q(f"sum by (node, interface) (rate({data.IFACE_TCP_RETRANS}{iface}[{RATE}]))\n"
                     f"/ sum by (node, interface) (rate({data.IFACE_PACKETS}{iface}[{RATE}]))",
                     "{{node}} {{interface}}"),
                   description="TCP segments retransmitted by this node's sockets per packet the interface "
                               "carried (every packet: flows over the series budget lose their protocol).",
                   width=12),
            series("TCP smoothed RTT percentiles", "s",
                   *(q(f"histogram_quantile({p}, sum by (le) (rate({data.TCP_RTT_BUCKET}{iface}[{RATE}])))",
                       f"p{round(p * 100)}") for p in (0.5, 0.9, 0.99)),
                   description="Over every socket and node selected: the histogram's buckets are the same "
                               "everywhere (16 µs × 4ⁿ), so the sum is exact; the quantile interpolates "
                               "within a bucket.", width=12),
        ]),
        ("XTrace-Catch gauges", [
            series("Bytes per flow in the last interval", "bytes",
                   q(f"topk(10, sum by (node, interface, src_ip, dst_ip, dst_port, protocol) "
                     f"({data.FLOW_BYTES}{named}))", "{{src_ip}} → {{dst_ip}}:{{dst_port}} proto {{protocol}}"),
                   description=f"{data.FLOW_BYTES}, the old tool's gauge: what each flow moved in the "
                               "agent's last interval (xdp.flowGauges: false turns it off).", width=24),
        ]),
    ]
    variables = [CLUSTER, NODE, DIRECTION,
                 var("interface", "Interface", f'label_values({data.IFACE_BYTES}{{cluster=~"$cluster", node=~"$node"}}, interface)'),
                 var("port", "Destination port", f'label_values({data.NETWORK_BYTES}{{cluster=~"$cluster", node=~"$node"}}, dst_port)')]
    return board("xtrace-traffic", "XTrace / Traffic", "XDP flow counts per node, interface and flow.", variables, rows)


# --- RDMA fabric ----------------------------------------------------------------------------------
def rdma() -> gd.Dashboard:
    port = sel(C, N, 'device=~"$device"', 'port=~"$port"')

    def counters(metric: str, names) -> str:
        return metric + sel(C, N, 'device=~"$device"', 'port=~"$port"', f'counter=~"{any_of(names)}"')

    by = "node, device, port"

    def per_counter(title: str, fn: str, metric: str, names, description: str) -> timeseries.Panel:
        return series(title, "short", q(f"sum by ({by}, counter) ({fn}({counters(metric, names)}[{RATE}]))",
                                        "{{node}} {{device}}/{{port}} {{counter}}"), description=description)
    rows = [verdict_row(port, by), nic_row(port, by),
        ("Throughput", [
            series("Bytes per second per port", "Bps",
                   q(f"sum by ({by}) (rate({data.RDMA_TX_BYTES}{port}[{RATE}]))", "{{node}} {{device}}/{{port}} tx"),
                   q(f"sum by ({by}) (rate({data.RDMA_RX_BYTES}{port}[{RATE}]))", "{{node}} {{device}}/{{port}} rx"),
                   description="port_xmit_data / port_rcv_data count 4-octet words; the agent already multiplied "
                               "by 4, so these are bytes. All RDMA traffic, which XDP never sees."),
            series("Packets per second per port", "pps",
                   q(f"sum by ({by}) (rate({data.RDMA_TX_PACKETS}{port}[{RATE}]))", "{{node}} {{device}}/{{port}} tx"),
                   q(f"sum by ({by}) (rate({data.RDMA_RX_PACKETS}{port}[{RATE}]))", "{{node}} {{device}}/{{port}} rx")),
        ]),
        ("Errors and discards", [
            per_counter("Port errors and discards (per interval)", "increase", data.RDMA_PORT_COUNTER.name,
                        PORT_ERRORS, "PMA error counters (symbol_error, link_downed, port_rcv_errors, "
                                     "port_xmit_discards, ...)."),
            per_counter("Transport errors and retransmissions (per interval)", "increase",
                        data.RDMA_HW_COUNTER.name, TRANSPORT_ERRORS,
                        "mlx5 hw_counters (nccl mode): out_of_sequence, packet_seq_err, out_of_buffer, ..."),
        ]),
        ("Congestion", [
            per_counter("Congestion notifications per second", "rate", data.RDMA_HW_COUNTER.name, CONGESTION,
                        "RoCE DCQCN: np_cnp_sent (we saw ECN marks), rp_cnp_handled (we slowed down)."),
            series("Transmit wait (ticks per second)", "short",
                   q(f'sum by ({by}) (rate({counters(data.RDMA_PORT_COUNTER.name, ["port_xmit_wait"])}[{RATE}]))',
                     "{{node}} {{device}}/{{port}}"),
                   description="Ticks with data to send but no credits; a tick's length is hardware-specific."),
        ]),
        ("Per pod (pod attribution)", _pod_panels()),
        ("Links", [
            tab("Link state and rate", f"max by ({by}, state, phys_state, link_layer, rate) ({data.RDMA_PORT_INFO}{port})"),
            series("Link rate", "bps",
                   q(f"max by ({by}) ({data.RDMA_PORT_RATE}{port}) * 8", "{{node}} {{device}}/{{port}}"),
                   width=6),
            tab("Saturated counters", f"max by ({by}, counter) ({data.RDMA_COUNTER_SATURATED}{port}) == 1",
                description="Stuck at their maximum: they no longer count. Clear them (perfquery -R).", width=6),
        ]),
    ]
    variables = [CLUSTER, NODE,
                 var("device", "Device", f'label_values({data.RDMA_PORT_INFO}{{cluster=~"$cluster", node=~"$node"}}, device)'),
                 var("port", "Port", f'label_values({data.RDMA_PORT_INFO}{{cluster=~"$cluster", node=~"$node", device=~"$device"}}, port)')]
    return board("xtrace-rdma", "XTrace / RDMA fabric", "RDMA port and mlx5 hardware counters (rdma and nccl modes).",
                 variables, rows)


VERDICT_COLORS = {"healthy": "green", "lossy_transport": "yellow", "pfc_blocking": "orange",
                  "fabric_congestion": "purple", "host_backpressure": "blue", "pcie_stall": "dark-blue",
                  "link_degraded": "red"}


def verdict_row(port: str, by: str):
    """A state timeline per port (xtrace_agent/verdicts.py, the rules' own expressions over the panel's
    rate window, so it needs no recording rule) and the evidence beside it."""
    chosen = f"max by ({verdicts.PORT}) (xtrace_rdma_port_info{port})"
    rank = f"max by ({by}) (\n({verdicts.verdict_rank(RATE)})\nand on ({verdicts.PORT}) {chosen})"
    mapping = dm.ValueMap({str(verdicts.rank(v)): dm.ValueMappingResult(text=v, color=VERDICT_COLORS[v])
                           for v in verdicts.VERDICTS})
    timeline = (statetimeline.Panel().title("Verdict per port").datasource(DS).height(8).span(24)
                .with_target(q(rank, "{{node}} {{device}}/{{port}}").ref_id("A")).mappings([mapping])
                .show_value(cm.VisibilityMode.NEVER)
                .description("One condition per port, first that holds: link_degraded > pcie_stall > "
                             "host_backpressure > fabric_congestion > pfc_blocking > lossy_transport > healthy "
                             "(docs/verdicts.md). `xtrace fabric` prints the same with its numbers."))
    return ("Verdict", [timeline])


def nic_row(port: str, by: str):
    """The NIC statistics behind the verdicts (nccl mode: the ethtool statistics of each port's netdevs)."""
    def nic(metric: data.DataMetric, *matchers: str) -> str:
        return metric.name + port[:-1] + "".join(f", {m}" for m in matchers) + "}"
    label = "{{node}} {{device}}/{{port}}"
    rx_pause = nic(data.NIC_PAUSE_DURATION, 'direction="rx"')
    return ("NIC evidence", [
        series("Receive pause share per priority", "percentunit",
               q(f"max by ({by}, priority) (rate({rx_pause}[{RATE}]))",
                 label + " prio {{priority}}"),
               description="Seconds per second the peer held this port with PFC (rx_prioN_pause_duration): "
                           "pfc_blocking above 5% without ECN marks."),
        series("Pause frames per second", "short",
               q(f"sum by ({by}, direction) (rate({nic(data.NIC_PAUSE_FRAMES)}[{RATE}]))",
                 label + " {{direction}}"),
               description="rx: the fabric pushes back; tx: this host cannot drain its receive buffer."),
        series("NIC discards per second by cause", "short",
               q(f"sum by ({by}, cause) (rate({nic(data.NIC_DISCARDS)}[{RATE}]))", label + " {{cause}}"),
               description="rx_discards_phy (port_buffer), rx_out_of_buffer, per-priority and PCIe buffer drops."),
        series("Link errors (per interval)", "short",
               q(f"sum by ({by}) (increase({nic(data.NIC_SYMBOL_ERRORS)}[{RATE}]))", label + " symbol errors"),
               q(f"sum by ({by}) (increase({nic(data.NIC_LINK_DOWN)}[{RATE}]))", label + " link downs"),
               q(f"sum by ({by}) (increase({nic(data.NIC_CARRIER_CHANGES)}[{RATE}]))", label + " carrier changes"),
               q(f"sum by ({by}) (rate({nic(data.NIC_FEC_CORRECTED_BITS)}[{RATE}]))", label + " FEC-corrected bits/s"),
               width=12),
        series("PCIe outbound stalls (share of time)", "percentunit",
               q(f"max by ({by}, kind) ({nic(data.NIC_PCIE_STALLED)})", label + " {{kind}}"),
               description="outbound_pci_stalled_rd/wr: the NIC had PCIe requests it could not issue (no credits)."),
    ])
def _pod_panels() -> list:
    """Devices held by pods (docs/pod-attribution.md): summed per owner, never per device or QP."""
    def held(counters=()) -> str:
        return sel(C, N, 'pod!=""', *([f'counter=~"{any_of(counters)}"'] if counters else []))

    def rate(metric: data.DataMetric, by: str, legend: str, counters=()) -> prometheus.Dataquery:
        return q(f"sum by ({by}) (rate({metric}{held(counters)}[{RATE}]))", legend)

    def increase(metric: data.DataMetric, counters) -> prometheus.Dataquery:
        return q(f"sum by (namespace, pod, counter) (increase({metric}{held(counters)}[{RATE}]))",
                 "{{namespace}}/{{pod}} {{counter}}")

    return [
        series("RDMA bytes per second per pod", "Bps",
               rate(data.RDMA_TX_BYTES, "namespace, pod", "{{namespace}}/{{pod}} tx"),
               rate(data.RDMA_RX_BYTES, "namespace, pod", "{{namespace}}/{{pod}} rx"),
               description="Series of devices a pod holds (a VF or a whole HCA, from the kubelet's "
                           "pod-resources API), summed per pod. Needs rdma.podAttribution."),
        series("RDMA bytes per second per namespace", "Bps",
               rate(data.RDMA_TX_BYTES, "namespace", "{{namespace}} tx"),
               rate(data.RDMA_RX_BYTES, "namespace", "{{namespace}} rx")),
        series("Errors and retransmissions per pod (per interval)", "short",
               increase(data.RDMA_PORT_COUNTER, PORT_ERRORS),
               increase(data.RDMA_HW_COUNTER, TRANSPORT_ERRORS),
               description="PMA port errors and mlx5 transport errors (nccl mode) of the pods' devices."),
        series("Congestion notifications per second per pod", "short",
               rate(data.RDMA_HW_COUNTER, "namespace, pod, counter", "{{namespace}}/{{pod}} {{counter}}",
                    CONGESTION),
               description="RoCE DCQCN counters of the pods' devices: which job pushes the fabric into congestion."),
        pod_verdicts(),
    ]


def pod_verdicts() -> statetimeline.Panel:
    """The worst port verdict of each pod's devices (verdicts.pod_rank, over the panel's rate window)."""
    mapping = dm.ValueMap({str(verdicts.rank(v)): dm.ValueMappingResult(text=v, color=VERDICT_COLORS[v])
                           for v in verdicts.VERDICTS})
    return (statetimeline.Panel().title("Worst port verdict of each pod").datasource(DS).height(8).span(24)
            .with_target(q(verdicts.pod_rank(RATE, matchers=f"{C}, {N}").replace("max by (cluster, namespace, pod)",
                                                                              "max by (namespace, pod)", 1),
                           "{{namespace}}/{{pod}}").ref_id("A"))
            .mappings([mapping]).show_value(cm.VisibilityMode.NEVER)
            .description("Per pod, the worst verdict of the RDMA ports its devices carry (docs/verdicts.md: "
                         "link_degraded > pcie_stall > host_backpressure > fabric_congestion > pfc_blocking > "
                         "lossy_transport > healthy). `xtrace fabric` prints each port's numbers."))


# --- XTrace health ------------------------------------------------------------------------------
def health() -> gd.Dashboard:
    s = sel(C, N)
    last = f"max by (node) (max_over_time({sm.RW_LAST_SUCCESS}{s}[6h]))"
    rows = [
        ("Pushing", [
            stat.Panel().title("Agents pushing").datasource(DS).height(6).span(6).with_target(
                q(f"count((time() - {last}) < {PUSH_AGE})").ref_id("A")),
            series("Age of the last successful push", "s", q(f"time() - {last}", "{{node}}"), width=18),
            series("Remote-write queue (samples)", "short",
                   q(f"sum by (node, target) ({sm.RW_QUEUE}{s})", "{{node}} {{target}}"), width=8),
            series("Spool (bytes)", "bytes",
                   q(f"sum by (node, target) ({sm.RW_SPOOL_BYTES}{s})", "{{node}} {{target}}"), width=8),
            series("Samples dropped (per interval)", "short",
                   q(f"sum by (node, target, reason) (increase({sm.RW_DROPPED}{s}[{RATE}]))",
                     "{{node}} {{target}} {{reason}}"), width=8),
        ]),
        ("Collection", [
            series("Packets not tracked per flow (per interval)", "short",
                   q(f"sum by (node, reason) (increase({data.UNTRACKED_PACKETS}{s}[{RATE}]))",
                     "{{node}} {{reason}}"), width=8),
            series("Collector duration", "s",
                   q(f"max by (node, collector) ({sm.COLLECTOR_DURATION}{s})", "{{node}} {{collector}}"), width=8),
            series("Collector and sink errors (per interval)", "short",
                   q(f"sum by (node, collector) (increase({sm.COLLECTOR_ERRORS}{s}[{RATE}]))", "{{node}} {{collector}}"),
                   q(f"sum by (node, sink) (increase({sm.SINK_ERRORS}{s}[{RATE}]))", "{{node}} sink {{sink}}"),
                   width=8),
        ]),
    ]
    return board("xtrace-health", "XTrace / Health", "Is every agent collecting and pushing, and what did it lose?",
                 [CLUSTER, NODE], rows)


def render() -> dict[str, str]:
    out = {}
    for name, build in (("traffic", traffic), ("rdma", rdma), ("health", health)):
        out[f"xtrace-{name}.json"] = JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"
    return out


def panel_queries(doc: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a generated dashboard, in order."""
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--queries", action="store_true", help="print every panel's query")
    args = parser.parse_args(argv)
    files = render()
    if args.queries:
        for name, text in files.items():
            for title, expr in panel_queries(json.loads(text)):
                print(f"# {name}: {title}\n{expr}\n")
        return 0
    return write_or_check(files, args.out, args.check, "tools/dashboards.py")


if __name__ == "__main__":
    raise SystemExit(main())
