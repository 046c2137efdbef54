"""The driver statistics that diagnose RoCE, by their raw `ethtool -S` names, mapped to named metrics.

Sources of the names (read, not copied):
- mlx5: the kernel's Documentation/networking/device_drivers/ethernet/mellanox/mlx5/counters.rst and
  en_stats.c. Per-priority PFC counters exist only for priorities with PFC enabled
  (`rx_prio3_pause`); with 802.3x pause on instead they are named `global` (`rx_global_pause`).
  Kernel 4.4's driver named the 802.3 group differently (`pause_ctrl_rx`, `symbol_err`), later
  kernels add the `_phy` suffix (`rx_pause_ctrl_phy`, `rx_symbol_err_phy`).
- bnxt_en: bnxt_ethtool.c (port statistics `rx_pause_frames`, `rx_pfc_ena_frames_pri3`, the extended
  `pfc_pri3_rx_duration_us`; per-ring lines `[3]: rx_discards`).
- ice: ice_ethtool.c (port statistics carry a `.nic` suffix: `rx_priority_3_xoff.nic`,
  `link_xoff_rx.nic`, `rx_dropped.nic`).

Direction is the wire's: `rx` pause frames were received (the peer told this port to stop sending:
the fabric pushes back), `tx` pause frames were sent (this host could not drain its receive buffer).
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

from xtrace_agent import datametrics as dm
from xtrace_agent.rdma.counters import Width

# The named metrics: defined in datametrics.py (documented in docs/nic-metrics.md).
PAUSE_FRAMES = dm.NIC_PAUSE_FRAMES.name
PAUSE_DURATION = dm.NIC_PAUSE_DURATION.name
PAUSE_TRANSITIONS = dm.NIC_PAUSE_TRANSITIONS.name
PAUSE_STORMS = dm.NIC_PAUSE_STORMS.name
DISCARDS = dm.NIC_DISCARDS.name
PCIE_STALLED = dm.NIC_PCIE_STALLED.name
PCIE_STALLED_SECONDS = dm.NIC_PCIE_STALLED_SECONDS.name
FEC_CORRECTED_BITS = dm.NIC_FEC_CORRECTED_BITS.name
FEC_BLOCKS = dm.NIC_FEC_BLOCKS.name
SYMBOL_ERRORS = dm.NIC_SYMBOL_ERRORS.name
LINK_DOWN = dm.NIC_LINK_DOWN.name
CARRIER_CHANGES = dm.NIC_CARRIER_CHANGES.name
STANDARD_PAUSE = dm.NIC_STANDARD_PAUSE.name
RAW = dm.NIC_STAT.name

W64 = Width(64)
W32 = Width(32, wraps=True)  # mlx5 copies these from 32-bit firmware fields: a drop is a wrap


class Rule(NamedTuple):
    pattern: re.Pattern
    metric: str
    labels: dict[str, str]  # values may name a regex group: "\\1"
    scale: float = 1.0      # raw unit -> the metric's unit (µs -> s: 1e-6)
    width: Width = W64
    gauge: bool = False     # a level, not a counter: pushed as read
    rank: int = 0           # several names for one series (renames, aliases): the lowest rank wins


def _r(pattern: str, metric: str, scale: float = 1.0, width: Width = W64, gauge: bool = False,
       rank: int = 0, **labels: str) -> Rule:
    return Rule(re.compile(pattern + r"\Z"), metric, labels, scale, width, gauge, rank)


US = 1e-6
RULES: tuple[Rule, ...] = (
    # --- pause (PFC per priority, 802.3x as priority "global") ---------------------------------
    _r(r"(rx|tx)_prio([0-7])_pause", PAUSE_FRAMES, direction=r"\1", priority=r"\2"),                 # mlx5
    _r(r"(rx|tx)_prio([0-7])_pause_duration", PAUSE_DURATION, US, direction=r"\1", priority=r"\2"),
    _r(r"(rx|tx)_prio([0-7])_pause_transition", PAUSE_TRANSITIONS, direction=r"\1", priority=r"\2"),
    _r(r"(rx|tx)_global_pause", PAUSE_FRAMES, direction=r"\1", priority="global"),
    _r(r"(rx|tx)_global_pause_duration", PAUSE_DURATION, US, direction=r"\1", priority="global"),
    _r(r"(rx|tx)_global_pause_transition", PAUSE_TRANSITIONS, direction=r"\1", priority="global"),
    _r(r"(rx|tx)_pause_ctrl_phy", PAUSE_FRAMES, rank=1, direction=r"\1", priority="global"),
    _r(r"pause_ctrl_(rx|tx)", PAUSE_FRAMES, rank=2, direction=r"\1", priority="global"),            # mlx5, 4.4
    _r(r"(rx|tx)_pfc_ena_frames_pri([0-7])", PAUSE_FRAMES, direction=r"\1", priority=r"\2"),        # bnxt_en
    _r(r"pfc_pri([0-7])_(rx|tx)_duration_us", PAUSE_DURATION, US, direction=r"\2", priority=r"\1"),
    _r(r"pfc_pri([0-7])_(rx|tx)_transitions", PAUSE_TRANSITIONS, direction=r"\2", priority=r"\1"),
    _r(r"(rx|tx)_pause_frames", PAUSE_FRAMES, rank=1, direction=r"\1", priority="global"),
    _r(r"(rx|tx)_priority_([0-7])_xoff\.nic", PAUSE_FRAMES, direction=r"\1", priority=r"\2"),       # ice
    _r(r"link_xoff_(rx|tx)\.nic", PAUSE_FRAMES, rank=1, direction=r"\1", priority="global"),
    _r(r"tx_pause_storm_(warning|error)_events", PAUSE_STORMS, level=r"\1"),                       # mlx5
    # --- discards by cause ------------------------------------------------------------------------
    _r(r"(rx|tx)_discards_phy", DISCARDS, direction=r"\1", cause="port_buffer"),                   # mlx5
    _r(r"rx_prio([0-7])_discards", DISCARDS, direction="rx", cause="priority_buffer", priority=r"\1"),
    _r(r"rx_prio([0-7])_buf_discard", DISCARDS, direction="rx", cause="shared_buffer", priority=r"\1"),
    _r(r"rx_prio([0-7])_cong_discard", DISCARDS, direction="rx", cause="congestion", priority=r"\1"),
    _r(r"rx_out_of_buffer", DISCARDS, width=W32, direction="rx", cause="out_of_buffer"),
    _r(r"outbound_pci_buffer_overflow", DISCARDS, direction="rx", cause="pci_buffer"),
    _r(r"in_discards", DISCARDS, rank=2, direction="rx", cause="port_buffer"),                     # mlx5, 4.4
    _r(r"out_discards", DISCARDS, rank=2, direction="tx", cause="port_buffer"),
    _r(r"(rx|tx)_stat_discard", DISCARDS, rank=1, direction=r"\1", cause="port_buffer"),            # bnxt_en
    _r(r"rx_dropped\.nic", DISCARDS, rank=1, direction="rx", cause="port_buffer"),                  # ice
    # --- PCIe back-pressure (mlx5 MPCNT): a percentage of the last second, and seconds above 30% ---
    _r(r"outbound_pci_stalled_rd", PCIE_STALLED, 0.01, gauge=True, kind="read"),
    _r(r"outbound_pci_stalled_wr", PCIE_STALLED, 0.01, gauge=True, kind="write"),
    _r(r"outbound_pci_stalled_rd_events", PCIE_STALLED_SECONDS, width=W32, kind="read"),
    _r(r"outbound_pci_stalled_wr_events", PCIE_STALLED_SECONDS, width=W32, kind="write"),
    # --- the physical link ------------------------------------------------------------------------
    _r(r"rx_corrected_bits_phy", FEC_CORRECTED_BITS),                                              # mlx5
    _r(r"rx_corrected_bits", FEC_CORRECTED_BITS, rank=1),                                          # bnxt_en
    _r(r"rx_fec_(corrected|uncorrectable)_blocks", FEC_BLOCKS, result=r"\1"),                     # bnxt_en
    _r(r"rx_symbol_err_phy", SYMBOL_ERRORS, layer="phy"),                                          # mlx5
    _r(r"symbol_err", SYMBOL_ERRORS, rank=1, layer="phy"),                                         # mlx5, 4.4
    _r(r"rx_pcs_symbol_err_phy", SYMBOL_ERRORS, layer="pcs"),                                      # mlx5
    _r(r"rx_pcs_symbol_err", SYMBOL_ERRORS, rank=1, layer="pcs"),                                  # bnxt_en
    _r(r"link_down_events_phy", LINK_DOWN),                                                        # mlx5
    _r(r"link_down_events", LINK_DOWN, rank=1),                                                    # bnxt_en
)

# Per-queue statistics: mlx5 `rx12_packets`, `ch3_events`, `ptp_cq0_...`, `rx_xsk3_...`; ice and virtio
# `tx_queue_3_packets`; i40e `tx-3.tx_packets`; bnxt `[3]: rx_discards`; veth `rx_queue_0_xdp_packets`.
PER_QUEUE = re.compile(
    r"(?:\[\d+\]:"
    r"|(?:rx|tx|ch|xdp|xsk|ptp|rx_xsk|tx_xsk|ptp_cq|ptp_ch|qos_tx)\d+_"
    r"|(?:rx|tx|xdp)_queue_\d+_"
    r"|(?:rx|tx)-\d+\."
    r"|queue_\d+_)")


def is_per_queue(name: str) -> bool:
    return PER_QUEUE.match(name) is not None


class Named(NamedTuple):
    """One driver statistic feeding one named series."""

    index: int
    stat: str
    metric: str
    labels: tuple[tuple[str, str], ...]
    scale: float
    width: Width
    gauge: bool


class RawSelection(NamedTuple):
    """Which statistics go to the raw metric: fnmatch patterns; per-queue ones only when asked."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_queue: bool = False

    def selects(self, name: str) -> bool:
        if not self.include or (not self.per_queue and is_per_queue(name)):
            return False
        if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


NO_RAW = RawSelection()


class Plan(NamedTuple):
    """What to export from a table with these names, worked out once per string set."""

    named: tuple[Named, ...]
    raw: tuple[tuple[int, str], ...]  # (index, stat) for the raw metric


def classify(name: str) -> tuple[Rule, re.Match] | None:
    for rule in RULES:
        m = rule.pattern.match(name)
        if m:
            return rule, m
    return None


def plan(names: tuple[str, ...], raw: RawSelection = NO_RAW) -> Plan:
    """Map a driver's string set to named series (one source per series: the lowest rank, then the
    first index) and to the raw stats selected. A name seen twice keeps its first index."""
    best: dict[tuple, tuple[int, Named]] = {}
    raw_out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            continue
        seen.add(name)
        found = classify(name)
        if found is None:
            if raw.selects(name):
                raw_out.append((index, name))
            continue
        rule, m = found
        labels = tuple(sorted((k, m.expand(v)) for k, v in rule.labels.items()))
        key = (rule.metric, labels)
        entry = Named(index, name, rule.metric, labels, rule.scale, rule.width, rule.gauge)
        if key not in best or rule.rank < best[key][0]:
            best[key] = (rule.rank, entry)
    named = tuple(sorted((e for _, e in best.values()), key=lambda e: e.index))
    return Plan(named, tuple(raw_out))
