"""The verdict per RDMA port: which condition holds, decided from the counters in PromQL.

One description, used by tools/rules.py (the recording rules and alerts) and by the on-call CLI
(`xtrace fabric`), so the rules and the command judge a port the same way. docs/verdicts.md explains
each condition, the counters that prove it and what to check next.

Precedence (first that holds wins), from the most specific root cause to the most generic symptom:

    link_degraded > pcie_stall > host_backpressure > fabric_congestion > pfc_blocking > lossy_transport > healthy

A bad link causes drops, retransmissions and pauses; a PCIe stall is one cause of host back-pressure;
a host that cannot drain sends pause frames that look like congestion to its peers; ECN-marked traffic
explains received pause; sequence errors with none of these left are the transport's own losses.
"""

from __future__ import annotations

from dataclasses import dataclass

PORT = "cluster, node, device, port"  # an RDMA port's identity once pushed

ORDER = ("link_degraded", "pcie_stall", "host_backpressure", "fabric_congestion", "pfc_blocking",
         "lossy_transport")
HEALTHY = "healthy"
VERDICTS = (*ORDER, HEALTHY)


def rank(verdict: str) -> int:
    """6 for link_degraded ... 1 for lossy_transport, 0 for healthy: the state timeline's value."""
    return len(ORDER) - ORDER.index(verdict) if verdict in ORDER else 0


@dataclass(frozen=True)
class Thresholds:
    ecn_per_second: float = 100.0        # ECN-marked RoCE packets + CNPs sent + CNPs handled
    pause_share: float = 0.05            # seconds paused per second (rx: pfc_blocking, tx: host_backpressure)
    tx_pause_per_second: float = 100.0   # pause frames this port sent (drivers without durations)
    discards_per_second: float = 1.0     # receive discards of any cause, out_of_buffer included
    transport_per_second: float = 1.0    # out_of_sequence + packet_seq_err + local_ack_timeout_err
    fec_ber: float = 1e-5                # FEC-corrected bits per bit of link rate (pre-FEC bit error ratio)
    pcie_stalled: float = 0.10           # share of time outbound PCIe requests were stalled


THRESHOLDS = Thresholds()

CONGESTION = ("np_ecn_marked_roce_packets", "np_cnp_sent", "rp_cnp_handled")
TRANSPORT = ("out_of_sequence", "packet_seq_err", "local_ack_timeout_err")
LINK_PMA = ("symbol_error", "link_downed", "link_error_recovery")
HW = "xtrace_rdma_hw_counter_total"


def _sum(expr: str, by: str = PORT) -> str:
    return f"sum by ({by}) ({expr})"


def _any(names) -> str:
    return "|".join(names)


def _delta(fn: str, selector: str, window: str) -> str:
    """rate() or increase() of series that already existed a window ago. VictoriaMetrics counts a series'
    first sample from 0: an agent that (re)starts (every rollout) would report a port's lifetime pause
    frames or errors as new ones, and every port would look sick after a rollout."""
    return f"({fn}({selector}[{window}]) and last_over_time({selector}[{window}] offset {window}))"


def _union(parts: dict[str, str]) -> str:
    """The per-port sum of several metrics' rates. Their series may share a label set once the rate drops
    the name (carrier changes and link-down events both have netdev, device, port), and `or` would keep
    only one of them: each is tagged with its source first."""
    tagged = [f'label_replace({expr}, "source", "{src}", "", "")' for src, expr in parts.items()]
    return _sum("\n    or ".join(tagged))


def evidence(window: str) -> dict[str, str]:
    """The numbers behind a verdict, per port, over `window`: name -> PromQL."""
    w = window

    def rate(selector: str) -> str:
        return _delta("rate", selector, w)

    def increase(selector: str) -> str:
        return _delta("increase", selector, w)

    pause = "xtrace_nic_pause_duration_seconds_total"
    return {
        "ecn_per_second": _sum(rate(f'{HW}{{counter=~"{_any(CONGESTION)}"}}')),
        "rx_pause_share": f"max by ({PORT}) " + rate(pause + '{direction="rx"}'),
        "tx_pause_share": f"max by ({PORT}) " + rate(pause + '{direction="tx"}'),
        "tx_pause_per_second": _sum(rate('xtrace_nic_pause_frames_total{direction="tx"}')),
        "rx_pause_per_second": _sum(rate('xtrace_nic_pause_frames_total{direction="rx"}')),
        "discards_per_second": _union({"nic": rate('xtrace_nic_discards_total{direction="rx"}'),
                                       "rdma": rate(f'{HW}{{counter="out_of_buffer"}}')}),
        "transport_per_second": _sum(rate(f'{HW}{{counter=~"{_any(TRANSPORT)}"}}')),
        "link_events": _union({"symbol": increase("xtrace_nic_symbol_errors_total"),
                               "link_down": increase("xtrace_nic_link_down_events_total"),
                               "carrier": increase("xtrace_nic_carrier_changes_total"),
                               "pma": increase(f'xtrace_rdma_port_counter_total{{counter=~"{_any(LINK_PMA)}"}}')}),
        "fec_ber": _sum(rate("xtrace_nic_fec_corrected_bits_total"))
                   + f" / on ({PORT}) (8 * max by ({PORT}) (last_over_time(xtrace_rdma_port_rate_bytes_per_second[{w}])) > 0)",
        "pcie_stalled": f"max by ({PORT}) (max_over_time(xtrace_nic_pcie_stalled_ratio[{w}]))",
        "pcie_stalled_seconds": _sum(increase("xtrace_nic_pcie_stalled_seconds_total")),
    }


def conditions(window: str, t: Thresholds = THRESHOLDS) -> dict[str, str]:
    """condition -> PromQL giving one series per port (labels PORT) where the condition holds."""
    e = evidence(window)
    return {
        "link_degraded": f"({e['link_events']}) > 0\nor ({e['fec_ber']}) > {t.fec_ber}",
        "pcie_stall": f"({e['pcie_stalled']}) > {t.pcie_stalled}\nor ({e['pcie_stalled_seconds']}) > 0",
        "host_backpressure": f"({e['tx_pause_share']}) > {t.pause_share}\n"
                             f"or ({e['tx_pause_per_second']}) > {t.tx_pause_per_second}\n"
                             f"or ({e['discards_per_second']}) > {t.discards_per_second}",
        "fabric_congestion": f"({e['ecn_per_second']}) > {t.ecn_per_second}",
        "pfc_blocking": f"({e['rx_pause_share']}) > {t.pause_share}",
        "lossy_transport": f"({e['transport_per_second']}) > {t.transport_per_second}",
    }


def pfc_priorities(window: str, t: Thresholds = THRESHOLDS) -> str:
    """pfc_blocking per priority (the `priority` label says which traffic class is held)."""
    sel = 'xtrace_nic_pause_duration_seconds_total{direction="rx"}'
    return f"max by ({PORT}, priority) {_delta('rate', sel, window)} > {t.pause_share}"


def ports(window: str) -> str:
    """Every port that reported in the window. Not a bare selector: vmalert asks with `step` set to its
    interval, which VictoriaMetrics takes as a bare selector's lookback, and the newest second of samples
    may not be searchable yet."""
    return f"max by ({PORT}) (last_over_time(xtrace_rdma_port_info[{window}]))"


def verdict_rank(window: str, t: Thresholds = THRESHOLDS) -> str:
    """One series per port: the rank of the first condition that holds (0: healthy). `or` keeps the
    left side where both have the port, so the chain in precedence order is the precedence."""
    c = conditions(window, t)
    parts = [f"(({c[name]}) * 0 + {rank(name)})" for name in ORDER]
    return "\nor ".join([*parts, f"({ports(window)} * 0)"])


def verdict(name: str, window: str, t: Thresholds = THRESHOLDS) -> str:
    """Series (value 1) for the ports whose verdict is `name`: it holds and nothing before it does."""
    c = conditions(window, t)
    this = ports(window) if name == HEALTHY else f"({c[name]})"
    higher = ORDER if name == HEALTHY else ORDER[:ORDER.index(name)]
    if not higher:
        return f"{this} * 0 + 1"
    return f"{this} * 0 + 1\nunless on ({PORT}) (\n  " + "\n  or ".join(f"({c[h]})" for h in higher) + "\n)"


# --- per pod (pod attribution, docs/pod-attribution.md) ---------------------------------------------
POD = "cluster, namespace, pod"


def owners(window: str, matchers: str = "") -> str:
    """One series (value 1) per held port and its owner: the ports whose info series carried a pod in
    the window (a port handed over within it counts for both pods until the window passes)."""
    sel = f'xtrace_rdma_port_info{{pod!=""{", " + matchers if matchers else ""}}}'
    return f"max by ({PORT}, namespace, pod) (last_over_time({sel}[{window}]))"


def pod_rank(window: str, t: Thresholds = THRESHOLDS, matchers: str = "") -> str:
    """Per pod: the worst verdict of its ports (the highest rank, by the precedence above)."""
    return (f"max by ({POD}) (\n{owners(window, matchers)}\n"
            f"* on ({PORT}) group_left ()\n({verdict_rank(window, t)})\n)")


def pod_ports(name: str, window: str, t: Thresholds = THRESHOLDS) -> str:
    """Per pod: how many of its ports have the verdict `name` (no series where none has)."""
    return (f"count by ({POD}) (\n{owners(window)}\n"
            f"* on ({PORT}) group_left ()\n({verdict(name, window, t)})\n)")
