"""Every self-metric of the agent, defined once: name, type, help text and the labels it may carry.

Each names the stage that records it (`source`) and whether it exists from the first report
(`at_start`), so that tests of "every self-metric exists at 0 from the start" iterate this registry.
Stages record values with `health.inc(selfmetrics.SINK_ERRORS, labels={"sink": ...})`: a misspelt
metric is an AttributeError at import, a label the metric does not declare a ValueError at the
first call, never a new series nobody's alert looks at. `/metrics` takes the type and help text from
here too.
"""

from __future__ import annotations

from typing import NamedTuple

# The stages that record self-metrics: a test of "every self-metric of the xdp source exists from the
# first report" iterates this registry by source, never a hand-kept list of names.
SOURCES = ("pipeline", "xdp", "rdma", "remote_write", "pod_status")


class SelfMetric(NamedTuple):
    name: str
    kind: str  # counter | gauge
    help: str
    labels: frozenset[str] = frozenset()  # the label names it may carry
    source: str = "pipeline"  # the stage that records it (SOURCES)
    at_start: bool = True  # exists from the agent's first report (a counter at 0), before anything happened

    def __str__(self) -> str:  # in a query: f"rate({sm.RW_SENT}[1m])"
        return self.name


BY_NAME: dict[str, SelfMetric] = {}


def _define(name: str, kind: str, help_text: str, labels: tuple[str, ...], source: str,
            at_start: bool) -> SelfMetric:
    assert name not in BY_NAME, f"self-metric {name} defined twice"
    assert kind in ("counter", "gauge") and name.endswith("_total") == (kind == "counter"), name
    assert source in SOURCES, source
    metric = SelfMetric(name, kind, help_text, frozenset(labels), source, at_start)
    BY_NAME[name] = metric
    return metric


def counter(name: str, help_text: str, *labels: str, source: str, at_start: bool = True) -> SelfMetric:
    return _define(name, "counter", help_text, labels, source, at_start)


def gauge(name: str, help_text: str, *labels: str, source: str, at_start: bool = True) -> SelfMetric:
    return _define(name, "gauge", help_text, labels, source, at_start)


# --- the pipeline ------------------------------------------------------------------------------
REPORTS = counter("xtrace_reports_total", "Collection intervals completed.", source="pipeline")
SINK_ERRORS = counter("xtrace_sink_errors_total",
                      "Reports a sink failed to accept (the sink is skipped, never the agent).", "sink",
                      source="pipeline")
COLLECTOR_DURATION = gauge("xtrace_collector_duration_seconds", "Time the last collection took.", "collector",
                           source="pipeline")
COLLECTOR_ERRORS = counter("xtrace_collector_errors_total",
                           "Files a collector could not read or parse (counted when a file starts failing).",
                           "collector", source="rdma")  # the only collector reading files

# --- XDP and the accounting of flows -------------------------------------------------------------
XDP_ATTACHED = gauge("xtrace_xdp_attached", "1 when the program is attached to the interface (label mode: native "
                     "or generic XDP for ingress, tcx or tc for egress).", "interface", "mode", "direction",
                     source="xdp")
XDP_MALFORMED = counter("xtrace_xdp_malformed_packets_total", "Packets whose headers were cut short or invalid.",
                        source="xdp")
XDP_NON_IP = counter("xtrace_xdp_non_ip_packets_total",
                     "Packets that are not IPv4/IPv6 (in their interface's `other`).", source="xdp")
XDP_TABLE_FULL = counter("xtrace_xdp_table_full_packets_total",
                         "Packets of new flows the full kernel flow table refused (in their interface's `other`).",
                         source="xdp")
XDP_UNATTRIBUTED_PACKETS = counter("xtrace_xdp_unattributed_packets_total",
                                   "Packets the XDP program could put under no interface (no table yet, or a full "
                                   "table).", source="xdp")
XDP_UNATTRIBUTED_BYTES = counter("xtrace_xdp_unattributed_bytes_total",
                                 "Bytes of xtrace_xdp_unattributed_packets_total.", source="xdp")
XDP_SAMPLED = counter("xtrace_xdp_sampled_packets_total",
                      "With xdp.sampling N: packets counted per flow (the flow counts are these x N); 0 without "
                      "sampling.", source="xdp")
XDP_TABLE_FLOWS = gauge("xtrace_xdp_table_flows", "Flows the kernel table held in the last interval (entries "
                        "drained; xdp.flowTableSize is the limit), per interface.", "interface", "direction",
                        source="xdp")
FLOWS_TRACKED = gauge("xtrace_flows_tracked", "Flows currently exported per interface (series budget use).",
                      "interface", "direction", source="xdp")
FLOWS_FOLDED = counter("xtrace_flows_folded_total", "New flows folded into `other` because the series budget was full.",
                       source="xdp")
FLOWS_EXPIRED = counter("xtrace_flows_expired_total",
                        "Flows that stopped being exported after the idle timeout (their counts moved to `other`).",
                        source="xdp")
FLOWS_RETIRED = counter("xtrace_flows_retired_total", "Quiet flows that stopped being exported to make room for "
                        "busier ones (their counts moved to `other`).", source="xdp")

# --- RDMA ------------------------------------------------------------------------------------------
RDMA_WRAPS = counter("xtrace_rdma_counter_wraps_total", "32-bit RDMA counter wraps corrected.", source="rdma")
RDMA_RESETS = counter("xtrace_rdma_counter_resets_total",
                      "RDMA counters that went backwards (device re-probed or counters cleared).",
                      source="rdma")
# pod attribution (rdma.podAttribution): from the first report when it is on, absent when it is off
RDMA_ATTRIBUTED = gauge("xtrace_rdma_devices_attributed",
                        "RDMA devices a pod holds, as the kubelet's pod-resources API said at the last refresh.",
                        source="rdma", at_start=False)
POD_RESOURCES_FAILURES = counter("xtrace_pod_resources_failures_total", "Asks of the kubelet's pod-resources API "
                                 "that failed, by kind (unreachable, error).", "kind", source="rdma", at_start=False)

# --- remote write ----------------------------------------------------------------------------------
RW_QUEUE = gauge("xtrace_remote_write_queue_samples",
                 "Samples waiting for delivery: in memory, in the spool and rescued newest values.", "target",
                 source="remote_write")
RW_SENT = counter("xtrace_remote_write_samples_sent_total", "Samples accepted by the receiver.", "target",
                  source="remote_write")
RW_DROPPED = counter("xtrace_remote_write_samples_dropped_total", "Samples that will never reach the receiver, by "
                     "reason (queue_full, spool_full, rejected, shutdown).", "target", "reason",
                     source="remote_write")
RW_RETRIES = counter("xtrace_remote_write_retries_total", "Failed pushes that will be retried.", "target",
                     source="remote_write")
RW_LAST_SUCCESS = gauge("xtrace_remote_write_last_success_timestamp_seconds",
                        "When the receiver last accepted a push (Unix time).", "target",
                        source="remote_write", at_start=False)
RW_SPOOL_BYTES = gauge("xtrace_remote_write_spool_bytes",
                       "Bytes the spool holds (blocks and rescued newest values), at most spool.maxBytes.", "target",
                       source="remote_write")
RW_SENT_BYTES = counter("xtrace_remote_write_sent_bytes_total", "Request bytes (compressed) accepted.", "target",
                        source="remote_write")

# --- the pod's condition ---------------------------------------------------------------------------
POD_STATUS_WRITES = counter("xtrace_pod_status_writes_total",
                            "Readiness changes written to the agent's Pod as the xtrace.io/AgentReady condition.",
                            source="pod_status")
POD_STATUS_ERRORS = counter("xtrace_pod_status_errors_total", "Failed writes of the xtrace.io/AgentReady Pod "
                            "condition (retried on back-off, never blocking).", source="pod_status")
