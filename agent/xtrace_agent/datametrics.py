"""Every data metric the agent exports, defined once: name, type, unit, help text, labels, source.

Data metrics are what the sources measure (flows, interfaces, RDMA ports); what the agent says
about itself is selfmetrics.py. Both registries are read the same ways:
- collectors and the accounting stage write the metric's `.name` (a misspelt metric is an
  AttributeError at import);
- `/metrics` (sinks/exposition.py) takes the type and help text from here and refuses a sample
  whose name neither registry defines (a ValueError at the first scrape, never a silent series);
- tools/rules.py and tools/dashboards.py build their queries from these definitions, and refuse
  an expression naming an `xtrace_` metric that is not defined;
- the tests check every sample the collectors produce against the labels declared here, and
  the docs' metric tables against both registries (tests/test_datametrics.py).

`labels` are on every series of the metric; `optional` ones only on some (`direction` when the
agent counts both directions, RoCEv2's BTH fields on RoCE flows).
"""

from __future__ import annotations

from typing import NamedTuple

from xtrace_agent.rdma.counters import WORD_BYTES


class DataMetric(NamedTuple):
    name: str
    kind: str  # counter | gauge
    unit: str  # bytes, packets, bytes/s, seconds, bits; "" when it has none (a flag, an info metric, a raw counter)
    help: str
    labels: tuple[str, ...]
    source: str  # what exports it: xdp | rdma (rdma and nccl: the ports) | nic (rdma and nccl: the netdevs)
    optional: tuple[str, ...] = ()
    at_start: bool = True  # exists from the first report (at 0 before any traffic); False: only once it moved

    def __str__(self) -> str:  # in a query: f"rate({dm.IFACE_BYTES}[1m])"
        return self.name

    def allows(self, labels) -> bool:
        """Whether a series with these label names belongs to this metric."""
        names = set(labels)
        return names.issuperset(self.labels) and names.issubset(self.labels + self.optional)


BY_NAME: dict[str, DataMetric] = {}
# xdp mode's flows and interfaces; rdma and nccl modes; xdp mode's opt-in drops and TCP events
SOURCES = ("xdp", "rdma", "nic", "drops", "tcp")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _define(name: str, kind: str, unit: str, help_text: str, labels: tuple[str, ...], source: str,
            optional: tuple[str, ...] = (), at_start: bool = True) -> DataMetric:
    assert name not in BY_NAME, f"data metric {name} defined twice"
    # a histogram's series (_bucket, _sum, _count) are counters, each defined on its own
    assert kind in ("counter", "gauge") and name.endswith(COUNTER_SUFFIXES) == (kind == "counter"), name
    assert source in SOURCES, source
    metric = DataMetric(name, kind, unit, help_text, labels, source, optional, at_start)
    BY_NAME[name] = metric
    return metric


def counter(name: str, unit: str, help_text: str, labels: tuple[str, ...], source: str,
            optional: tuple[str, ...] = (), at_start: bool = True) -> DataMetric:
    return _define(name, "counter", unit, help_text, labels, source, optional, at_start)


def gauge(name: str, unit: str, help_text: str, labels: tuple[str, ...], source: str,
          optional: tuple[str, ...] = (), at_start: bool = True) -> DataMetric:
    return _define(name, "gauge", unit, help_text, labels, source, optional, at_start)


# --- xdp mode: flows and interfaces ----------------------------------------------------------------
FLOW = ("interface", "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "traffic_type")
BTH = ("rdma_opcode", "dest_qp")  # RoCEv2 flows only
DIRECTED = ("direction",)  # only when xdp.directions includes egress

NETWORK_PACKETS = counter("xtrace_network_packets_total", "packets",
                          "Packets per flow (with xdp.sampling N: the sampled count x N).", FLOW, "xdp",
                          DIRECTED + BTH)
NETWORK_BYTES = counter("xtrace_network_bytes_total", "bytes",
                        "Bytes per flow: the L2 frame length XDP (or TC on egress) sees.", FLOW, "xdp",
                        DIRECTED + BTH)
FLOW_PACKETS = gauge("xtrace_network_flow_packets", "packets", "XTrace-Catch's gauge: packets the flow moved in "
                     "the last interval, for flows that moved something (xdp.flowGauges).", FLOW, "xdp",
                     DIRECTED + BTH, at_start=False)
FLOW_BYTES = gauge("xtrace_network_flow_bytes", "bytes", "XTrace-Catch's gauge: bytes the flow moved in the last "
                   "interval, for flows that moved something (xdp.flowGauges).", FLOW, "xdp", DIRECTED + BTH,
                   at_start=False)
IFACE_PACKETS = counter("xtrace_interface_packets_total", "packets", "Every frame on the interface, parsable or "
                        "not, even with a full flow table: its flows plus its `other` flow.", ("interface",), "xdp",
                        DIRECTED)
IFACE_BYTES = counter("xtrace_interface_bytes_total", "bytes",
                      "Bytes of xtrace_interface_packets_total (L2 frame length).", ("interface",), "xdp", DIRECTED)
UNTRACKED_PACKETS = counter("xtrace_xdp_untracked_packets_total", "packets", "Packets counted in no flow, by "
                            "reason (malformed, non_ip, table_full, unsampled): part of the interface's `other` "
                            "flow.", ("interface", "reason"), "xdp", DIRECTED)
UNTRACKED_BYTES = counter("xtrace_xdp_untracked_bytes_total", "bytes",
                          "Bytes of xtrace_xdp_untracked_packets_total.", ("interface", "reason"), "xdp", DIRECTED)
UNOBSERVED_PACKETS = counter("xtrace_xdp_unobserved_packets_total", "packets", "Packets the driver received "
                             "while the agent's program was not attached to the interface (receive only).",
                             ("interface",), "xdp")
UNOBSERVED_BYTES = counter("xtrace_xdp_unobserved_bytes_total", "bytes",
                           "Bytes of xtrace_xdp_unobserved_packets_total (driver rx bytes).", ("interface",), "xdp")

# --- xdp mode with xdp.drops and xdp.tcp: what went wrong with the packets (docs/drops.md) -----------
DROPS = ("reason",)  # the kernel's enum skb_drop_reason name, without SKB_DROP_REASON_

DROP_PACKETS = counter("xtrace_drop_packets_total", "packets", "Packets the kernel dropped (skb:kfree_skb), per "
                       "flow and the kernel's reason (xdp.drops).", FLOW + DROPS, "drops", DIRECTED + BTH)
DROP_BYTES = counter("xtrace_drop_bytes_total", "bytes", "Bytes of xtrace_drop_packets_total (from the link-layer "
                     "header when the packet has one, else the IP header).", FLOW + DROPS, "drops", DIRECTED + BTH)
IFACE_DROP_PACKETS = counter("xtrace_interface_drop_packets_total", "packets", "Every drop of the interface, by "
                             "reason: its drop flows plus its `other` flow.", ("interface",) + DROPS, "drops",
                             DIRECTED)
IFACE_DROP_BYTES = counter("xtrace_interface_drop_bytes_total", "bytes",
                           "Bytes of xtrace_interface_drop_packets_total.", ("interface",) + DROPS, "drops", DIRECTED)
DROP_LOST_PACKETS = counter("xtrace_drop_lost_packets_total", "packets", "Drops on a watched interface that found "
                            "no room in any kernel table (0 in normal operation).", (), "drops")
DROP_LOST_BYTES = counter("xtrace_drop_lost_bytes_total", "bytes", "Bytes of xtrace_drop_lost_packets_total.", (),
                          "drops")
TCP_RETRANS = counter("xtrace_tcp_retransmits_total", "packets", "TCP segments this node's sockets retransmitted "
                      "(tcp:tcp_retransmit_skb, err 0), per flow (xdp.tcp).", FLOW, "tcp", DIRECTED)
IFACE_TCP_RETRANS = counter("xtrace_interface_tcp_retransmits_total", "packets", "Every retransmitted segment of "
                            "the interface's sockets: its TCP flows plus its `other` flow.", ("interface",), "tcp",
                            DIRECTED)
TCP_RTT_BUCKET = counter("xtrace_tcp_rtt_seconds_bucket", "", "Smoothed RTT observations (tcp:tcp_probe, one per "
                         "segment a socket receives) at or below `le` seconds: fixed bounds 16 us x 4^n.",
                         ("interface", "le"), "tcp", DIRECTED)
TCP_RTT_SUM = counter("xtrace_tcp_rtt_seconds_sum", "seconds", "Sum of the smoothed RTT observations.",
                      ("interface",), "tcp", DIRECTED)
TCP_RTT_COUNT = counter("xtrace_tcp_rtt_seconds_count", "", "Number of smoothed RTT observations.",
                        ("interface",), "tcp", DIRECTED)
TCP_FLOW_RTT_SUM = counter("xtrace_tcp_flow_rtt_seconds_sum", "seconds", "Per flow: sum of its smoothed RTT "
                           "observations (its mean: rate(_sum) / rate(_count)).", FLOW, "tcp", DIRECTED)
TCP_FLOW_RTT_COUNT = counter("xtrace_tcp_flow_rtt_seconds_count", "", "Per flow: number of its smoothed RTT "
                             "observations.", FLOW, "tcp", DIRECTED)
TCP_LOST = counter("xtrace_tcp_lost_events_total", "", "TCP events on a watched interface that found no room in "
                   "any kernel table.", (), "tcp")

# --- rdma and nccl modes: RDMA ports -----------------------------------------------------------------
PORT = ("device", "port")
# pod attribution (owners/, rdma.podAttribution): on every series of a device a pod holds
OWNER = ("namespace", "pod", "container", "resource")

RDMA_PORT_INFO = gauge("xtrace_rdma_port_info", "", "RDMA port metadata, always 1.",
                       PORT + ("link_layer", "state", "phys_state", "rate", "netdev"), "rdma", OWNER)
RDMA_PORT_RATE = gauge("xtrace_rdma_port_rate_bytes_per_second", "bytes/s",
                       "The port's link rate (sysfs `rate`, Gb/s x 10^9 / 8).", PORT, "rdma", OWNER)
RDMA_PORT_COUNTER = counter("xtrace_rdma_port_counter_total", "", "Every PMA port counter (counters/ and "
                            "counters_ext/), raw, in the file's own unit, made monotonic.", PORT + ("counter",),
                            "rdma", OWNER)
RDMA_HW_COUNTER = counter("xtrace_rdma_hw_counter_total", "", "Every driver counter in hw_counters/ (nccl mode), "
                          "raw, in the file's own unit, made monotonic.", PORT + ("counter",), "rdma", OWNER)
RDMA_COUNTER_SATURATED = gauge("xtrace_rdma_counter_saturated", "", "1 while a counter that stops at its maximum "
                               "sits there (it is not pushed then), else 0.", PORT + ("counter",), "rdma", OWNER)
RDMA_TX_BYTES = counter("xtrace_rdma_port_transmit_bytes_total", "bytes", "Bytes the port sent: counters/"
                        f"port_xmit_data (in {WORD_BYTES}-octet words) x {WORD_BYTES}.", PORT, "rdma", OWNER)
RDMA_RX_BYTES = counter("xtrace_rdma_port_receive_bytes_total", "bytes", "Bytes the port received: counters/"
                        f"port_rcv_data (in {WORD_BYTES}-octet words) x {WORD_BYTES}.", PORT, "rdma", OWNER)
RDMA_TX_PACKETS = counter("xtrace_rdma_port_transmit_packets_total", "packets",
                          "Packets the port sent: counters/port_xmit_packets.", PORT, "rdma", OWNER)
RDMA_RX_PACKETS = counter("xtrace_rdma_port_receive_packets_total", "packets",
                          "Packets the port received: counters/port_rcv_packets.", PORT, "rdma", OWNER)

# --- rdma and nccl modes: NIC statistics of the netdevs (nic/; docs/nic-metrics.md) -------------------
# Every series has `netdev`, and the RDMA `device` and `port` it carries where known (not on the
# config's extra interfaces). They exist only where the driver has the statistic: none at start.
# A netdev of a device a pod holds (the GID table's netdevs of its RDMA device, a held function's
# net/ entries) carries the owner's labels (OWNER), as the device's RDMA series do.
NETDEV = ("netdev",)
CARRIES = ("device", "port")


def _nic(kind, name: str, unit: str, help_text: str, labels: tuple[str, ...] = (), optional=()) -> DataMetric:
    return kind(name, unit, help_text, NETDEV + labels, "nic", CARRIES + optional + OWNER, at_start=False)


NIC_PAUSE_FRAMES = _nic(counter, "xtrace_nic_pause_frames_total", "packets", "Pause frames received (rx: the peer "
                        "held this port) or sent (tx: this host could not drain), per PFC priority or `global` "
                        "(802.3x).", ("direction", "priority"))
NIC_PAUSE_DURATION = _nic(counter, "xtrace_nic_pause_duration_seconds_total", "seconds", "Time paused by PFC or "
                          "802.3x pause, per direction and priority (the drivers count microseconds).",
                          ("direction", "priority"))
NIC_PAUSE_TRANSITIONS = _nic(counter, "xtrace_nic_pause_transitions_total", "", "Transitions into the paused "
                             "state, per direction and priority.", ("direction", "priority"))
NIC_PAUSE_STORMS = _nic(counter, "xtrace_nic_pause_storm_events_total", "", "Pause storm events: the device "
                        "stalled beyond its warning watermark, or so long that it stopped sending pause (error).",
                        ("level",))
NIC_DISCARDS = _nic(counter, "xtrace_nic_discards_total", "packets", "Packets the NIC discarded, by direction and "
                    "cause (port_buffer, priority_buffer, shared_buffer, congestion, out_of_buffer, pci_buffer).",
                    ("direction", "cause"), ("priority",))
NIC_PCIE_STALLED = _nic(gauge, "xtrace_nic_pcie_stalled_ratio", "", "Share of the last second (0-1) the NIC had "
                        "outbound PCIe reads or writes it could not issue (no credits).", ("kind",))
NIC_PCIE_STALLED_SECONDS = _nic(counter, "xtrace_nic_pcie_stalled_seconds_total", "seconds", "Seconds in which "
                                "outbound PCIe reads or writes were stalled more than 30% of the time.", ("kind",))
NIC_FEC_CORRECTED_BITS = _nic(counter, "xtrace_nic_fec_corrected_bits_total", "bits",
                              "Bits the physical layer's FEC corrected.")
NIC_FEC_BLOCKS = _nic(counter, "xtrace_nic_fec_blocks_total", "", "FEC blocks corrected or uncorrectable.",
                      ("result",))
NIC_SYMBOL_ERRORS = _nic(counter, "xtrace_nic_symbol_errors_total", "", "Symbol errors of the physical or PCS layer.",
                         ("layer",))
NIC_LINK_DOWN = _nic(counter, "xtrace_nic_link_down_events_total", "", "Times the physical link went down.")
NIC_CARRIER_CHANGES = _nic(counter, "xtrace_nic_carrier_changes_total", "",
                           "Carrier changes of the netdev (sysfs carrier_changes).")
NIC_STANDARD_PAUSE = _nic(counter, "xtrace_nic_standard_pause_frames_total", "packets", "The driver's standard "
                          "802.3 pause frame counters (ethtool netlink pause statistics).", ("direction",))
NIC_STAT = _nic(gauge, "xtrace_nic_stat", "", "Any other driver statistic, raw as `ethtool -S` reports it, only as "
                "selected by nic.rawInclude / nic.rawExclude.", ("stat",))
