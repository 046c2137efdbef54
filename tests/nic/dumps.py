"""`ethtool -S` dumps as real drivers print them, built from the names the drivers document.

mlx5 names per kernel (Documentation/networking/device_drivers/ethernet/mellanox/mlx5/counters.rst and
en_stats.c of each release): 4.4 had the 802.3 group without the `_phy` suffix (`pause_ctrl_rx`,
`symbol_err`, `in_discards`); 4.14 has the `_phy` names, per-priority PFC and the PCIe stall counters;
5.15 adds pause-storm and per-priority discards; 6.8 the per-priority buffer counters. bnxt_en and ice
from bnxt_ethtool.c and ice_ethtool.c. Values are deterministic (a hash of the name) unless given.

A dump is a list of (name, value) in the driver's order; `render` prints it with a dump's variations.
"""

from __future__ import annotations

import zlib

MLX5_SW = ("rx_packets rx_bytes tx_packets tx_bytes tx_tso_packets tx_tso_bytes tx_tso_inner_packets "
           "tx_tso_inner_bytes tx_added_vlan_packets tx_nop rx_lro_packets rx_lro_bytes rx_ecn_mark "
           "rx_removed_vlan_packets rx_csum_unnecessary rx_csum_none rx_csum_complete rx_csum_unnecessary_inner "
           "rx_xdp_drop rx_xdp_redirect rx_xdp_tx_xmit rx_xdp_tx_full rx_xdp_tx_err rx_xdp_tx_cqe tx_csum_none "
           "tx_csum_partial tx_csum_partial_inner tx_queue_stopped tx_queue_dropped tx_xmit_more tx_recover "
           "tx_cqes tx_queue_wake tx_cqe_err rx_wqe_err rx_mpwqe_filler_cqes rx_mpwqe_filler_strides "
           "rx_oversize_pkts_sw_drop rx_buff_alloc_err rx_cqe_compress_blks rx_cqe_compress_pkts rx_page_reuse "
           "rx_cache_reuse rx_cache_full rx_cache_empty rx_cache_busy rx_cache_waive rx_congst_umr rx_arfs_err "
           "ch_events ch_poll ch_arm ch_aff_change ch_force_irq ch_eq_rearm").split()
MLX5_Q = ["rx_out_of_buffer", "rx_if_down_packets"]
MLX5_VPORT = [f"{d}_vport_{k}_{u}" for k in ("unicast", "multicast", "broadcast", "rdma_unicast", "rdma_multicast")
              for d in ("rx", "tx") for u in ("packets", "bytes")]
MLX5_8023 = ("tx_packets_phy rx_packets_phy rx_crc_errors_phy tx_bytes_phy rx_bytes_phy tx_multicast_phy "
             "tx_broadcast_phy rx_multicast_phy rx_broadcast_phy rx_in_range_len_errors_phy rx_out_of_range_len_phy "
             "rx_oversize_pkts_phy rx_symbol_err_phy tx_mac_control_phy rx_mac_control_phy rx_unsupported_op_phy "
             "rx_pause_ctrl_phy tx_pause_ctrl_phy").split()
MLX5_2863 = "rx_discards_phy tx_discards_phy tx_errors_phy".split()
MLX5_2819 = ["rx_undersize_pkts_phy", "rx_fragments_phy", "rx_jabbers_phy"] + [
    f"rx_{r}_bytes_phy" for r in ("64", "65_to_127", "128_to_255", "256_to_511", "512_to_1023", "1024_to_1518",
                                  "1519_to_2047", "2048_to_4095", "4096_to_8191", "8192_to_10239")]
MLX5_PHY = ["link_down_events_phy", "rx_pcs_symbol_err_phy", "rx_corrected_bits_phy"] + [
    f"rx_err_lane_{i}_phy" for i in range(4)]
MLX5_PCIE = ("rx_pci_signal_integrity tx_pci_signal_integrity outbound_pci_buffer_overflow outbound_pci_stalled_rd "
             "outbound_pci_stalled_wr outbound_pci_stalled_rd_events outbound_pci_stalled_wr_events").split()
MLX5_MODULE = "module_unplug module_bus_stuck module_high_temp module_bad_shorted".split()
MLX5_RQ = ("packets bytes csum_complete csum_unnecessary csum_unnecessary_inner csum_none xdp_drop xdp_redirect "
           "lro_packets lro_bytes ecn_mark removed_vlan_packets wqe_err mpwqe_filler_cqes mpwqe_filler_strides "
           "oversize_pkts_sw_drop buff_alloc_err cqe_compress_blks cqe_compress_pkts page_reuse cache_reuse "
           "cache_full cache_empty cache_busy cache_waive congst_umr arfs_err").split()
MLX5_SQ = ("packets bytes tso_packets tso_bytes tso_inner_packets tso_inner_bytes csum_partial csum_partial_inner "
           "added_vlan_packets nop csum_none stopped dropped xmit_more recover cqes wake cqe_err").split()
MLX5_CH = "events poll arm aff_change force_irq eq_rearm".split()


def _value(name: str) -> int:
    return zlib.crc32(name.encode()) % 100_000


def mlx5(kernel: str = "6.8", pfc: tuple[int, ...] = (3,), global_pause: bool = False, channels: int = 24,
         values: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """A ConnectX port's dump on `kernel` ("4.4", "4.14", "5.15", "6.8"), PFC on `pfc`."""
    k = tuple(int(x) for x in kernel.split("."))
    if k < (4, 7):
        names = MLX5_SW[:20] + ["rx_out_of_buffer"] + [
            "rx_error_packets", "rx_error_bytes", "tx_error_packets", "tx_error_bytes"] + MLX5_VPORT[:12] + (
            "frames_tx frames_rx check_seq_err alignment_err octets_tx octets_received multicast_xmitted "
            "broadcast_xmitted multicast_rx broadcast_rx in_range_len_errors out_of_range_len too_long_errors "
            "symbol_err mac_control_tx mac_control_rx unsupported_op_rx pause_ctrl_rx pause_ctrl_tx "
            "in_octets in_ucast_pkts in_discards in_errors in_unknown_protos out_octets out_ucast_pkts "
            "out_discards out_errors in_multicast_pkts in_broadcast_pkts out_multicast_pkts out_broadcast_pkts "
            "drop_events octets pkts broadcast_pkts multicast_pkts crc_align_errors undersize_pkts "
            "oversize_pkts fragments jabbers collisions p64octets p65to127octets p128to255octets "
            "p256to511octets p512to1023octets p1024to1518octets p1519to2047octets p2048to4095octets "
            "p4096to8191octets p8192to10239octets").split()
    else:
        names = MLX5_SW + MLX5_Q + MLX5_VPORT + MLX5_8023 + MLX5_2863 + MLX5_2819 + MLX5_PHY
        names += ["rx_buffer_passed_thres_phy"] + MLX5_PCIE
        for prio in range(8):
            names += [f"rx_prio{prio}_bytes", f"rx_prio{prio}_packets"]
            if k >= (5, 6):
                names.append(f"rx_prio{prio}_discards")
            names += [f"tx_prio{prio}_bytes", f"tx_prio{prio}_packets"]
        pause_groups = [f"prio{p}" for p in pfc] + (["global"] if global_pause else [])
        for group in pause_groups:
            names += [f"rx_{group}_pause", f"rx_{group}_pause_duration", f"tx_{group}_pause",
                      f"tx_{group}_pause_duration", f"rx_{group}_pause_transition"]
        if k >= (5, 0):
            names += ["tx_pause_storm_warning_events", "tx_pause_storm_error_events"]
        names += MLX5_MODULE
        if k >= (6, 0):
            for prio in range(8):
                names += [f"rx_prio{prio}_buf_discard", f"rx_prio{prio}_cong_discard", f"rx_prio{prio}_marked"]
    for ch in range(channels):
        names += [f"rx{ch}_{s}" for s in MLX5_RQ]
    for ch in range(channels):
        names += [f"tx{ch}_{s}" for s in MLX5_SQ]
    for ch in range(channels):
        names += [f"ch{ch}_{s}" for s in MLX5_CH]
    values = values or {}
    return [(n, values.get(n, _value(n))) for n in names]


def bnxt(values: dict[str, int] | None = None, rings: int = 8) -> list[tuple[str, int]]:
    """A BCM5750x port (bnxt_en): per-ring `[N]: ...` lines, port statistics, extended PFC statistics."""
    names = []
    for ring in range(rings):
        names += [f"[{ring}]: {s}" for s in ("rx_ucast_packets", "rx_mcast_packets", "rx_bcast_packets",
                                              "rx_discards", "rx_errors", "rx_ucast_bytes", "tx_ucast_packets",
                                              "tx_errors", "tx_discards", "rx_l4_csum_errors", "missed_irqs")]
    names += ("rxq_timeout rx_total_discard_pkts tx_total_discard_pkts rx_64b_frames rx_good_frames "
              "rx_pkt_frames rx_fcs_err_frames rx_ctrl_frames rx_pause_frames rx_pfc_frames rx_align_err_frames "
              "rx_jbr_frames rx_mtu_err_frames rx_tagged_frames rx_double_tagged_frames rx_good_vlan_frames "
              "rx_undrsz_frames rx_eee_lpi_events rx_stat_discard rx_stat_err rx_bytes rx_runt_bytes "
              "tx_good_frames tx_pkt_frames tx_pause_frames tx_pfc_frames tx_err tx_fifo_underruns "
              "tx_total_collisions tx_bytes tx_stat_discard tx_stat_error").split()
    names += [f"rx_pfc_ena_frames_pri{p}" for p in range(8)] + [f"tx_pfc_ena_frames_pri{p}" for p in range(8)]
    names += ("link_down_events continuous_pause_events resume_pause_events continuous_roce_pause_events "
              "resume_roce_pause_events rx_bits rx_buffer_passed_threshold rx_pcs_symbol_err rx_corrected_bits "
              "rx_fec_corrected_blocks rx_fec_uncorrectable_blocks").split()
    for p in range(8):
        names += [f"pfc_pri{p}_rx_duration_us", f"pfc_pri{p}_rx_transitions"]
    for p in range(8):
        names += [f"pfc_pri{p}_tx_duration_us", f"pfc_pri{p}_tx_transitions"]
    values = values or {}
    return [(n, values.get(n, _value(n))) for n in names]


def ice(values: dict[str, int] | None = None, queues: int = 8) -> list[tuple[str, int]]:
    """An E810 port (ice): VSI statistics, per-queue statistics, `.nic` port statistics."""
    names = ("rx_unicast tx_unicast rx_multicast tx_multicast rx_broadcast tx_broadcast rx_bytes tx_bytes "
             "rx_dropped rx_unknown_protocol rx_alloc_fail rx_pg_alloc_fail tx_errors tx_linearize "
             "tx_busy tx_restart").split()
    for q in range(queues):
        names += [f"tx_queue_{q}_packets", f"tx_queue_{q}_bytes"]
    for q in range(queues):
        names += [f"rx_queue_{q}_packets", f"rx_queue_{q}_bytes"]
    names += [f"{n}.nic" for n in (
        "rx_bytes tx_bytes rx_unicast tx_unicast rx_multicast tx_multicast rx_broadcast tx_broadcast "
        "tx_errors tx_timeout rx_size_64 rx_size_127 rx_size_255 rx_size_511 rx_size_1023 rx_size_1522 "
        "rx_size_big link_xon_rx link_xoff_rx link_xon_tx link_xoff_tx tx_dropped_link_down rx_undersize "
        "rx_fragments rx_oversize rx_jabber rx_csum_bad rx_length_errors rx_dropped rx_crc_errors "
        "illegal_bytes mac_local_faults mac_remote_faults fdir_sb_match fdir_sb_status").split()]
    for p in range(8):
        names += [f"rx_priority_{p}_xon.nic", f"rx_priority_{p}_xoff.nic"]
    for p in range(8):
        names += [f"tx_priority_{p}_xon.nic", f"tx_priority_{p}_xoff.nic"]
    values = values or {}
    return [(n, values.get(n, _value(n))) for n in names]


def render(stats: list[tuple[str, int]], indent: str = "     ", header: bool = True, omit_zero: bool = False,
           trailing: str = "", crlf: bool = False) -> str:
    """Print like `ethtool -S` (5 spaces: ethtool 5.x; 6 on older; 0 when pasted), with the variations."""
    lines = ["NIC statistics:"] if header else []
    lines += [f"{indent}{n}: {v}{trailing}" for n, v in stats if not (omit_zero and v == 0)]
    end = "\r\n" if crlf else "\n"
    return end.join(lines) + end
