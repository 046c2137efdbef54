"""XTrace's recording and alerting rules: one source, rendered as a vmalert/Prometheus rule file and
as the `VMRule` and `PrometheusRule` objects of the two operators people run.

    .venv/bin/python tools/rules.py            # (re)write deploy/rules/
    .venv/bin/python tools/rules.py --check    # exit 1 if deploy/rules/ differs from this source
    .venv/bin/python tools/rules.py --timing fast --out DIR   # seconds-scale windows, for the tests

Every expression is plain PromQL (no MetricsQL extension), so Prometheus and vmalert read the same
file. Metric names come from the agent's definitions (datametrics.py, selfmetrics.py) and the PMA
error counters from rdma/counters.py; generated text naming an undefined `xtrace_` metric is
refused (exit 1). The `fast` timing keeps every expression and threshold and only shortens windows, `for`
durations and the push-age limit, so a test can watch each alert fire and resolve in seconds.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from dataclasses import dataclass

import yaml

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent import verdicts
from xtrace_agent.rdma import counters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "deploy", "rules")

PORT = verdicts.PORT  # an RDMA port's identity once pushed
# Pod attribution (docs/pod-attribution.md): a held device's series carry namespace and pod; the
# others carry the monitor's namespace and no pod, so every per-pod selection needs pod!="".
POD = "cluster, namespace, pod"
HELD = 'pod!=""'
# PMA error counters (counters/): each increase is a real fault on the link or the port.
PORT_ERRORS = tuple(counters.PORT_ERRORS)
# mlx5 transport counters (hw_counters/, nccl mode): retransmissions, sequence errors, receiver drops.
TRANSPORT_ERRORS = ("out_of_sequence", "packet_seq_err", "duplicate_request", "local_ack_timeout_err",
                    "out_of_buffer", "req_transport_retries_exceeded", "rnr_nak_retry_err")
# RoCE congestion control (DCQCN): CNPs we sent (we saw ECN marks) and CNPs we acted on.
CONGESTION = ("np_cnp_sent", "rp_cnp_handled", "np_ecn_marked_roce_packets")


def any_of(names) -> str:
    return "|".join(names)


@dataclass(frozen=True)
class Timing:
    rate: str = "1m"           # recording rules' rate window
    interval: str = "30s"      # group evaluation interval
    push_age: int = 180        # seconds without a push (the agent's maxPushAge is 120)
    history: str = "6h"        # how far back an agent that stopped is still remembered
    window: str = "10m"        # increase() windows of the error alerts
    flap_window: str = "15m"
    short_for: str = "0s"      # facts (a saturated counter) fire at once
    long_for: str = "10m"      # rates must last before they page
    cnp_per_second: int = 1000
    drops_per_second: int = 10     # a watched interface dropping more, for any one reason
    retransmit_ratio: float = 0.02  # TCP segments retransmitted per packet of an interface
    verdict_for: str = "10m"   # a port's verdict must hold this long before it pages
    verdict_rate: str = "1m"   # the verdicts' rate window


TIMINGS = {"production": Timing(),
           # windows of several intervals (0.5 s in the tests), so that a loaded machine's late samples still land in them;
           # a verdict must outlast its window (8 s > 5 s): one counter jump (the alert tests' faults) never pages
           "fast": Timing(rate="2s", interval="1s", push_age=8, history="1h", window="5s", flap_window="6s",
                          long_for="0s", cnp_per_second=100, verdict_for="8s", verdict_rate="5s")}


def recording_rules(t: Timing) -> list[dict]:
    """What the dashboards aggregate, precomputed for long ranges and for the alerts."""
    r = t.rate
    return [
        {"record": "node_interface:xtrace_interface_bytes:rate" + r,
         "expr": f"sum by (cluster, node, interface) (rate({dm.IFACE_BYTES}[{r}]))"},
        {"record": "node_interface:xtrace_interface_packets:rate" + r,
         "expr": f"sum by (cluster, node, interface) (rate({dm.IFACE_PACKETS}[{r}]))"},
        {"record": "node_interface:xtrace_other_bytes:ratio_rate" + r,
         "expr": f'sum by (cluster, node, interface) (rate({dm.NETWORK_BYTES}{{src_ip="other"}}[{r}]))\n'
                 f"/ sum by (cluster, node, interface) (rate({dm.IFACE_BYTES}[{r}]))"},
        {"record": "node_protocol:xtrace_network_bytes:rate" + r,
         "expr": f"sum by (cluster, node, protocol, traffic_type) (rate({dm.NETWORK_BYTES}[{r}]))"},
        {"record": "node_interface_reason:xtrace_drop_packets:rate" + r,
         "expr": f"sum by (cluster, node, interface, direction, reason) (rate({dm.IFACE_DROP_PACKETS}[{r}]))"},
        {"record": "node_interface:xtrace_tcp_retransmits:ratio_rate" + r, "expr": retransmit_ratio(r)},
        {"record": "node_port:xtrace_rdma_transmit_bytes:rate" + r,
         "expr": f"sum by ({PORT}) (rate({dm.RDMA_TX_BYTES}[{r}]))"},
        {"record": "node_port:xtrace_rdma_receive_bytes:rate" + r,
         "expr": f"sum by ({PORT}) (rate({dm.RDMA_RX_BYTES}[{r}]))"},
        {"record": "node_port:xtrace_rdma_congestion:rate" + r,
         "expr": f'sum by ({PORT}, counter) (rate({dm.RDMA_HW_COUNTER}{{counter=~"{any_of(CONGESTION)}"}}[{r}]))'},
        {"record": "node_port:xtrace_rdma_errors:rate" + r,
         "expr": f'sum by ({PORT}, counter) (rate({dm.RDMA_PORT_COUNTER}{{counter=~"{any_of(PORT_ERRORS)}"}}[{r}]))'},
        *pod_rules(r),
    ]


def pod_rules(r: str) -> list[dict]:
    """Per pod and per namespace (pod attribution): throughput, errors, retransmissions, congestion."""
    out = []
    for by, name in ((POD, "namespace_pod"), ("cluster, namespace", "namespace")):
        for direction, metric in (("transmit", dm.RDMA_TX_BYTES), ("receive", dm.RDMA_RX_BYTES)):
            out.append({"record": f"{name}:xtrace_rdma_{direction}_bytes:rate{r}",
                        "expr": f"sum by ({by}) (rate({metric}{{{HELD}}}[{r}]))"})
    for name, metric, names in (("errors", dm.RDMA_PORT_COUNTER, PORT_ERRORS),
                                ("transport_errors", dm.RDMA_HW_COUNTER, TRANSPORT_ERRORS),
                                ("congestion", dm.RDMA_HW_COUNTER, CONGESTION)):
        out.append({"record": f"namespace_pod:xtrace_rdma_{name}:rate{r}",
                    "expr": f'sum by ({POD}, counter) (rate({metric}{{{HELD}, counter=~"{any_of(names)}"}}[{r}]))'})
    return out


# The newest xtrace_rdma_port_info of a port says "not ACTIVE". The state is a label, so a port that
# changes state starts a new series and the old one lingers for the query's lookback: compare the two
# series' sample times instead of trusting whichever is still visible.
PORT_NOT_ACTIVE = (
    f'max by ({PORT}) ({dm.RDMA_PORT_INFO}{{state!="ACTIVE"}})\n'
    f'unless on ({PORT}) (\n'
    f'  max by ({PORT}) (timestamp({dm.RDMA_PORT_INFO}{{state="ACTIVE"}}))\n'
    f'  > on ({PORT}) max by ({PORT}) (timestamp({dm.RDMA_PORT_INFO}{{state!="ACTIVE"}}))\n'
    f')'
)


def retransmit_ratio(window: str) -> str:
    """TCP segments retransmitted per packet the interface carried (in the directions counted). Not
    per TCP packet: a flow over the series budget is in `other`, whose protocol is gone, so a TCP-only
    denominator would lose exactly the busy interfaces."""
    return (f"sum by (cluster, node, interface) (rate({dm.IFACE_TCP_RETRANS}[{window}]))\n"
            f"/ sum by (cluster, node, interface) (rate({dm.IFACE_PACKETS}[{window}]))")


def alerting_rules(t: Timing) -> list[dict]:
    def alert(name, expr, for_, severity, summary, description):
        return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
                "annotations": {"summary": summary, "description": description}}

    w = t.window

    def rose(metric: str, counters: str, window: str) -> str:
        # VictoriaMetrics' increase() counts a series' first sample from 0 when it is small: an agent that
        # (re)starts (every rollout) would report a port's lifetime errors as new. Only series that already
        # existed a window ago count.
        sel = f'{metric}{{counter=~"{counters}"}}'
        return (f"sum by ({PORT}, counter) (increase({sel}[{window}])) > 0\n"
                f"and on ({PORT}, counter) sum by ({PORT}, counter) ({sel} offset {window})")

    return [
        alert("XTraceAgentNotPushing",
              f"time() - max by (cluster, node) (max_over_time({sm.RW_LAST_SUCCESS}[{t.history}]))"
              f" > {t.push_age}",
              t.short_for, "warning", "XTrace agent on {{ $labels.node }} stopped pushing",
              f"No successful remote write from {{{{ $labels.node }}}} for {{{{ $value | humanizeDuration }}}} "
              f"(limit {t.push_age}s). Check the agent pod's readiness reasons (/readyz)."),
        alert("XTraceAgentsNotReady",
              'max by (cluster, namespace, daemonset) (kube_daemonset_status_desired_number_scheduled{daemonset=~"xtrace-.+"})\n'
              '- max by (cluster, namespace, daemonset) (kube_daemonset_status_number_ready{daemonset=~"xtrace-.+"}) > 0',
              t.long_for, "warning", "{{ $value }} XTrace agents of {{ $labels.namespace }}/{{ $labels.daemonset }} not ready",
              "Agents that never pushed are invisible to XTraceAgentNotPushing: kube-state-metrics sees them. "
              "kubectl describe xtm shows each node's reason."),
        alert("XTraceSamplesDropped",
              f"sum by (cluster, node, target, reason) (increase({sm.RW_DROPPED}[{w}])) > 0",
              t.short_for, "warning", "XTrace agent on {{ $labels.node }} dropped samples ({{ $labels.reason }})",
              "{{ $value }} samples for target {{ $labels.target }} were dropped in the last " + w + "."),
        alert("XTraceFlowTableOverflow",
              f'sum by (cluster, node, interface) (increase({dm.UNTRACKED_PACKETS}{{reason="table_full"}}[{w}])) > 0',
              t.short_for, "warning", "XDP flow table full on {{ $labels.node }}/{{ $labels.interface }}",
              "{{ $value }} packets of new flows found the kernel table full: they count in the interface's "
              "`other` flow. Raise xdp.flowTableSize or lower the interval."),
        alert("XTraceOtherShareHigh",
              f'sum by (cluster, node, interface) (rate({dm.NETWORK_BYTES}{{src_ip="other"}}[{w}]))\n'
              f"/ sum by (cluster, node, interface) (rate({dm.IFACE_BYTES}[{w}])) > 0.2",
              t.long_for, "info", "Over 20% of {{ $labels.node }}/{{ $labels.interface }} traffic is in the `other` flow",
              "The series budget (xdp.maxFlows) is full: raise it, or accept less per-flow detail."),
        alert("XTraceDropRateHigh",
              f"sum by (cluster, node, interface, reason) (rate({dm.IFACE_DROP_PACKETS}[{w}]))"
              f" > {t.drops_per_second}",
              t.long_for, "warning", "{{ $labels.node }}/{{ $labels.interface }} drops packets: {{ $labels.reason }}",
              "{{ $value }} packets/s freed by the kernel with reason {{ $labels.reason }} (limit "
              + str(t.drops_per_second) + "/s, xdp.drops). The reason is the kernel's own (enum skb_drop_reason)."),
        alert("XTraceTcpRetransmitRatioHigh",
              f"({retransmit_ratio(w)}) > {t.retransmit_ratio}",
              t.long_for, "warning", "TCP retransmits on {{ $labels.node }}/{{ $labels.interface }}",
              "Retransmitted TCP segments are {{ $value | humanizePercentage }} of the interface's packets (limit "
              + f"{t.retransmit_ratio:.0%}" + ", xdp.tcp): loss on the path."),
        alert("XTraceRdmaLinkDown",
              f"{PORT_NOT_ACTIVE}\nand on ({PORT}) max by ({PORT}) (max_over_time({dm.RDMA_PORT_INFO}{{state=\"ACTIVE\"}}[{t.history}]))",
              t.short_for, "critical", "RDMA link {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }} is down",
              f"The port was ACTIVE within {t.history} and is not any more."),
        alert("XTraceRdmaLinkFlapping",
              f'sum by ({PORT}) (increase({dm.RDMA_PORT_COUNTER}{{counter="link_downed"}}[{t.flap_window}])) >= 2\n'
              f'and on ({PORT}) sum by ({PORT}) ({dm.RDMA_PORT_COUNTER}{{counter="link_downed"}} offset {t.flap_window})',
              t.short_for, "warning", "RDMA link {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }} is flapping",
              "link_downed rose {{ $value }} times in " + t.flap_window + ": check the cable and transceiver."),
        alert("XTraceRdmaPortErrors",
              rose(dm.RDMA_PORT_COUNTER.name, any_of(PORT_ERRORS), w),
              t.short_for, "warning", "RDMA port errors on {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }}",
              "{{ $labels.counter }} rose by {{ $value }} in the last " + w + "."),
        alert("XTraceRdmaTransportErrors",
              rose(dm.RDMA_HW_COUNTER.name, any_of(TRANSPORT_ERRORS), w),
              t.short_for, "warning",
              "RDMA retransmissions or drops on {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }}",
              "{{ $labels.counter }} rose by {{ $value }} in the last " + w + " (nccl mode, mlx5)."),
        alert("XTraceRdmaCongestion",
              f'sum by ({PORT}, counter) (rate({dm.RDMA_HW_COUNTER}{{counter=~"np_cnp_sent|rp_cnp_handled"}}[{w}]))'
              f" > {t.cnp_per_second}",
              t.long_for, "warning", "RoCE congestion on {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }}",
              "{{ $labels.counter }} at {{ $value }}/s (limit " + str(t.cnp_per_second) + "/s): DCQCN is throttling."),
        alert("XTraceRdmaCounterSaturated",
              f"max by ({PORT}, counter) ({dm.RDMA_COUNTER_SATURATED}) == 1",
              t.short_for, "warning",
              "{{ $labels.counter }} saturated on {{ $labels.node }} {{ $labels.device }}/{{ $labels.port }}",
              "The counter sits at its maximum and stopped counting: clear it (perfquery -R or a port reset)."),
    ]


VERDICT_SUMMARY = {
    "link_degraded": "the physical link is erring (FEC-corrected bits, symbol errors, link downs)",
    "pcie_stall": "the NIC is stalled on PCIe toward the host",
    "host_backpressure": "this host cannot keep up (it sends pause frames or drops on receive)",
    "fabric_congestion": "the fabric is congested (ECN marks and CNPs)",
    "pfc_blocking": "the port is held by received PFC pause without ECN (head-of-line blocking)",
    "lossy_transport": "RDMA transport losses (sequence errors, ACK timeouts) with a clean link",
}


def verdict_rules(t: Timing) -> list[dict]:
    """One verdict per RDMA port (xtrace_agent/verdicts.py: conditions, thresholds, precedence), the
    conditions that hold, and the evidence behind them, for the state timeline and `xtrace fabric`."""
    r = t.verdict_rate
    rules = [{"record": f"node_port:xtrace_{name}:{r}", "expr": expr}
             for name, expr in verdicts.evidence(r).items()]
    for name, expr in verdicts.conditions(r).items():
        expr = verdicts.pfc_priorities(r) if name == "pfc_blocking" else expr
        rules.append({"record": "node_port:xtrace_condition:active", "expr": f"({expr}) * 0 + 1",
                      "labels": {"condition": name}})
    rules.append({"record": "node_port:xtrace_verdict:rank", "expr": verdicts.verdict_rank(r)})
    rules += [{"record": "node_port:xtrace_verdict:active", "expr": verdicts.verdict(name, r),
               "labels": {"verdict": name}} for name in verdicts.VERDICTS]
    return rules + pod_verdict_rules(t)


def pod_verdict_rules(t: Timing) -> list[dict]:
    """The port verdicts of each pod (pod attribution): the worst one, and its ports per verdict. Inline
    expressions, not the recorded per-port verdicts: those of this evaluation may not be searchable yet."""
    r = t.verdict_rate
    return [{"record": "namespace_pod:xtrace_verdict:rank", "expr": verdicts.pod_rank(r)},
            *({"record": "namespace_pod:xtrace_verdict:ports", "expr": verdicts.pod_ports(name, r),
               "labels": {"verdict": name}} for name in verdicts.VERDICTS)]


def verdict_alerts(t: Timing) -> list[dict]:
    """A sustained verdict other than healthy pages (inline expressions: the recorded verdict of an
    evaluation may not be in the database yet when the alert group runs)."""
    out = []
    for name in verdicts.ORDER:
        camel = "".join(part.capitalize() for part in name.split("_"))
        out.append({
            "alert": f"XTraceRdmaPort{camel}", "expr": verdicts.verdict(name, t.verdict_rate), "for": t.verdict_for,
            "labels": {"severity": "critical" if name == "link_degraded" else "warning", "verdict": name},
            "annotations": {
                "summary": f"{{{{ $labels.node }}}} {{{{ $labels.device }}}}/{{{{ $labels.port }}}}: {VERDICT_SUMMARY[name]}",
                "description": f"Verdict {name} for {t.verdict_for}. `xtrace fabric --node {{{{ $labels.node }}}}` "
                               f"prints the numbers; docs/verdicts.md#{name.replace('_', '-')} says what to check next."}})
    return out


def groups(t: Timing) -> list[dict]:
    return [{"name": "xtrace.records", "interval": t.interval, "rules": recording_rules(t)},
            {"name": "xtrace.alerts", "interval": t.interval, "rules": alerting_rules(t) + verdict_alerts(t)},
            {"name": "xtrace.verdicts", "interval": t.interval, "rules": verdict_rules(t)}]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(doc) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=200)


HEADER = "# Generated by tools/rules.py from one source; edit that, then run it. Do not edit by hand.\n"


def render(t: Timing) -> dict[str, str]:
    """File name -> content."""
    gs = groups(t)
    meta = {"name": "xtrace", "namespace": "xtrace-system", "labels": {"app.kubernetes.io/name": "xtrace"}}
    return {
        "xtrace.rules.yml": HEADER + dump({"groups": gs}),
        "vmrule.yaml": HEADER + dump({"apiVersion": "operator.victoriametrics.com/v1beta1", "kind": "VMRule",
                                      "metadata": meta, "spec": {"groups": gs}}),
        "prometheusrule.yaml": HEADER + dump({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                                              "metadata": meta, "spec": {"groups": gs}}),
    }


# An XTrace metric in generated text (not a recording rule's name, `level:metric:operation`).
_METRIC = re.compile(r"(?<![\w:])xtrace_[a-z0-9_]*[a-z0-9]")


def undefined_metrics(files: dict[str, str]) -> list[str]:
    """XTrace metrics the files name that neither the agent's datametrics nor its selfmetrics define."""
    return sorted({name for text in files.values() for name in _METRIC.findall(text)}
                  - set(dm.BY_NAME) - set(sm.BY_NAME))


def write_or_check(files: dict[str, str], out: str, check: bool, regenerate: str, queries: bool = True) -> int:
    """Write the files into `out`, or (check) compare them with what is there: 1 and a diff if not equal.
    Files of queries (`queries`) naming a metric the agent does not define are neither written nor
    accepted (exit 1)."""
    unknown = undefined_metrics(files) if queries else []
    if unknown:
        print(f"{regenerate}: no such agent metric: {', '.join(unknown)} (see agent/xtrace_agent/datametrics.py "
              "and selfmetrics.py)", file=sys.stderr)
        return 1
    if not check:
        os.makedirs(out, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(out, name), "w") as f:
                f.write(text)
        return 0
    stale = 0
    for name, text in files.items():
        path = os.path.join(out, name)
        old = open(path).read() if os.path.exists(path) else ""
        if old != text:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), path, "generated"))
    if stale:
        print(f"{stale} generated file(s) in {os.path.relpath(out, ROOT)} are stale: run {regenerate}", file=sys.stderr)
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--timing", choices=sorted(TIMINGS), default="production")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    return write_or_check(render(TIMINGS[args.timing]), args.out, args.check, "tools/rules.py")


if __name__ == "__main__":
    raise SystemExit(main())
