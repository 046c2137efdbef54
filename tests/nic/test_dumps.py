"""Captured `ethtool -S` dumps (mlx5 on four kernels, bnxt_en, ice) through the real NIC source: exactly
the named series, with units, nothing unknown outside the raw table, and the dump's variations read."""

from __future__ import annotations

import os

import pytest

from tests.nic import dumps
from xtrace_agent.nic import dump, names
from xtrace_agent.nic.accounting import NicStats
from xtrace_agent.nic.source import Target
from xtrace_agent.samples import Report

P, D, T, S, X = (names.PAUSE_FRAMES, names.PAUSE_DURATION, names.PAUSE_TRANSITIONS, names.PAUSE_STORMS,
                 names.DISCARDS)


def collect(tmp_path, stats, netdev="eth2", raw=names.NO_RAW, **render) -> dict[tuple, float]:
    d = tmp_path / "ethtool"
    d.mkdir(exist_ok=True)
    (d / f"{netdev}.txt").write_text(dumps.render(stats, **render))
    src = NicStats(root=str(tmp_path / "no-sys"), ethtool_dir=str(d), raw=raw)
    report = Report(timestamp=0.0)
    src.collect([Target(netdev, "mlx5_0", "1")], report)
    out = {}
    for s in report.samples:
        assert s.labels["netdev"] == netdev and s.labels["device"] == "mlx5_0" and s.labels["port"] == "1"
        key = (s.name, *sorted((k, v) for k, v in s.labels.items() if k not in ("netdev", "device", "port")))
        assert key not in out, f"two samples for {key}"
        out[key] = s.value
    return out


def k(metric, **labels):
    return (metric, *sorted(labels.items()))


def pause_keys(prios, transitions=("rx",)):
    out = set()
    for p in prios:
        for d in ("rx", "tx"):
            out |= {k(P, direction=d, priority=p), k(D, direction=d, priority=p)}
        out |= {k(T, direction=d, priority=p) for d in transitions}
    return out


GLOBAL_FRAMES = {k(P, direction="rx", priority="global"), k(P, direction="tx", priority="global")}
LINK = {k(names.FEC_CORRECTED_BITS), k(names.SYMBOL_ERRORS, layer="phy"), k(names.SYMBOL_ERRORS, layer="pcs"),
        k(names.LINK_DOWN)}
PCIE = {k(names.PCIE_STALLED, kind="read"), k(names.PCIE_STALLED, kind="write"),
        k(names.PCIE_STALLED_SECONDS, kind="read"), k(names.PCIE_STALLED_SECONDS, kind="write")}
PORT_DISCARDS = {k(X, direction="rx", cause="port_buffer"), k(X, direction="tx", cause="port_buffer")}


def mlx5_expected(kernel: str, pfc=("3",), global_pause=False) -> set:
    if kernel == "4.4":
        return GLOBAL_FRAMES | PORT_DISCARDS | {k(names.SYMBOL_ERRORS, layer="phy"),
                                                k(X, direction="rx", cause="out_of_buffer")}
    out = GLOBAL_FRAMES | PORT_DISCARDS | LINK | PCIE | pause_keys(pfc + (("global",) if global_pause else ()))
    out |= {k(X, direction="rx", cause="out_of_buffer"), k(X, direction="rx", cause="pci_buffer")}
    if kernel >= "5":
        out |= {k(S, level="warning"), k(S, level="error")}
        out |= {k(X, direction="rx", cause="priority_buffer", priority=str(p)) for p in range(8)}
    if kernel >= "6":
        out |= {k(X, direction="rx", cause=c, priority=str(p)) for p in range(8) for c in ("shared_buffer", "congestion")}
    return out


@pytest.mark.parametrize("kernel", ["4.4", "4.14", "5.15", "6.8"])
def test_mlx5_kernels_give_exactly_the_named_series(tmp_path, kernel):
    stats = dumps.mlx5(kernel)
    assert len(stats) > 1000  # as large as a 24-channel ConnectX port's
    got = collect(tmp_path, stats)
    assert set(got) == mlx5_expected(kernel)


def test_mlx5_values_and_units(tmp_path):
    values = {"rx_prio3_pause": 1234, "rx_prio3_pause_duration": 2_500_000, "tx_prio3_pause_duration": 7,
              "rx_pause_ctrl_phy": 9, "outbound_pci_stalled_rd": 37, "outbound_pci_stalled_wr_events": 12,
              "rx_discards_phy": 55, "rx_out_of_buffer": 66, "rx_corrected_bits_phy": 1 << 40,
              "tx_pause_storm_error_events": 2, "link_down_events_phy": 3}
    got = collect(tmp_path, dumps.mlx5("6.8", values=values))
    assert got[k(P, direction="rx", priority="3")] == 1234
    assert got[k(D, direction="rx", priority="3")] == pytest.approx(2.5)  # µs -> s
    assert got[k(D, direction="tx", priority="3")] == pytest.approx(7e-6)
    assert got[k(P, direction="rx", priority="global")] == 9
    assert got[k(names.PCIE_STALLED, kind="read")] == pytest.approx(0.37)  # a percentage of the last second
    assert got[k(names.PCIE_STALLED_SECONDS, kind="write")] == 12
    assert got[k(X, direction="rx", cause="port_buffer")] == 55
    assert got[k(X, direction="rx", cause="out_of_buffer")] == 66
    assert got[k(names.FEC_CORRECTED_BITS)] == 1 << 40
    assert got[k(S, level="error")] == 2
    assert got[k(names.LINK_DOWN)] == 3


def test_mlx5_global_pause_and_several_pfc_priorities(tmp_path):
    got = collect(tmp_path, dumps.mlx5("6.8", pfc=(3, 4), global_pause=True, values={"rx_global_pause": 5,
                                                                                      "rx_pause_ctrl_phy": 99}))
    assert set(got) == mlx5_expected("6.8", pfc=("3", "4"), global_pause=True)
    # two names count 802.3x pause: the per-priority group's `global` wins over the 802.3 group's
    assert got[k(P, direction="rx", priority="global")] == 5


def test_mlx5_kernel_44_names(tmp_path):
    got = collect(tmp_path, dumps.mlx5("4.4", values={"pause_ctrl_rx": 41, "symbol_err": 2, "in_discards": 8}))
    assert got[k(P, direction="rx", priority="global")] == 41
    assert got[k(names.SYMBOL_ERRORS, layer="phy")] == 2
    assert got[k(X, direction="rx", cause="port_buffer")] == 8


def test_bnxt(tmp_path):
    got = collect(tmp_path, dumps.bnxt(values={"pfc_pri3_rx_duration_us": 4_000_000, "rx_pfc_ena_frames_pri3": 77,
                                               "rx_stat_discard": 6}))
    expected = GLOBAL_FRAMES | PORT_DISCARDS | (LINK - {k(names.SYMBOL_ERRORS, layer="phy")})
    expected |= pause_keys([str(p) for p in range(8)], ("rx", "tx"))
    expected |= {k(names.FEC_BLOCKS, result="corrected"), k(names.FEC_BLOCKS, result="uncorrectable")}
    assert set(got) == expected
    assert got[k(D, direction="rx", priority="3")] == pytest.approx(4.0)
    assert got[k(P, direction="rx", priority="3")] == 77
    assert got[k(X, direction="rx", cause="port_buffer")] == 6


def test_ice(tmp_path):
    got = collect(tmp_path, dumps.ice(values={"rx_priority_3_xoff.nic": 12, "link_xoff_tx.nic": 4}))
    expected = GLOBAL_FRAMES | {k(X, direction="rx", cause="port_buffer")}
    expected |= {k(P, direction=d, priority=str(p)) for d in ("rx", "tx") for p in range(8)}
    assert set(got) == expected
    assert got[k(P, direction="rx", priority="3")] == 12
    assert got[k(P, direction="tx", priority="global")] == 4


@pytest.mark.parametrize("stats", [dumps.mlx5("6.8"), dumps.bnxt(), dumps.ice()], ids=["mlx5", "bnxt", "ice"])
def test_unknown_names_only_in_the_raw_table(tmp_path, stats):
    everything = names.RawSelection(include=("*",))
    got = collect(tmp_path, stats, raw=everything)
    raw = {dict(key[1:])["stat"] for key in got if key[0] == names.RAW}
    named_sources = {e.stat for e in names.plan(tuple(n for n, _ in stats)).named}
    assert raw.isdisjoint(named_sources)
    assert not any(names.is_per_queue(s) for s in raw)
    assert raw | named_sources == {n for n, _ in stats if not names.is_per_queue(n)} - (
        {n for n, _ in stats if names.classify(n)} - named_sources)  # aliases that lost to a better name
    assert collect(tmp_path, stats) == {key: v for key, v in got.items() if key[0] != names.RAW}  # off by default


def test_raw_patterns_and_per_queue(tmp_path):
    stats = dumps.mlx5("6.8", channels=2)
    sel = names.RawSelection(include=("rx_*_phy", "rx0_*"), exclude=("rx_*_bytes_phy",))
    raw = {dict(key[1:])["stat"] for key in collect(tmp_path, stats, raw=sel) if key[0] == names.RAW}
    assert raw == {"rx_packets_phy", "rx_bytes_phy", "rx_crc_errors_phy", "rx_multicast_phy", "rx_broadcast_phy",
                   "rx_in_range_len_errors_phy", "rx_out_of_range_len_phy", "rx_oversize_pkts_phy",
                   "rx_mac_control_phy", "rx_unsupported_op_phy", "rx_undersize_pkts_phy", "rx_fragments_phy",
                   "rx_jabbers_phy", "rx_err_lane_0_phy", "rx_err_lane_1_phy", "rx_err_lane_2_phy",
                   "rx_err_lane_3_phy", "rx_buffer_passed_thres_phy"}  # per-queue rx0_* only on request
    sel = sel._replace(per_queue=True)
    raw = {dict(key[1:])["stat"] for key in collect(tmp_path, stats, raw=sel) if key[0] == names.RAW}
    assert {f"rx0_{s}" for s in dumps.MLX5_RQ} <= raw


VARIANTS = [dict(), dict(indent=""), dict(indent="      "), dict(indent="\t"), dict(header=False),
            dict(trailing="   "), dict(crlf=True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=[str(v) or "plain" for v in VARIANTS])
def test_dump_variations_parse_to_the_same_table(variant):
    stats = dumps.bnxt() + [(n, v) for n, v in dumps.ice() if n.endswith(".nic")]
    table = dump.parse(dumps.render(stats, **variant))
    assert list(zip(table.names, table.values, strict=True)) == stats
    assert table.skipped == 0
    assert "[3]: rx_discards" in table.names and "rx_priority_3_xoff.nic" in table.names


def test_zero_lines_omitted_give_no_series(tmp_path):
    values = {"rx_prio3_pause": 0, "rx_prio3_pause_duration": 0, "rx_discards_phy": 0}
    got = collect(tmp_path, dumps.mlx5("6.8", values=values), omit_zero=True)
    assert k(P, direction="rx", priority="3") not in got and k(X, direction="rx", cause="port_buffer") not in got
    assert k(P, direction="tx", priority="3") in got


def test_garbage_lines_are_skipped_and_counted():
    text = ("root@node:~# ethtool -S eth2\nNIC statistics:\n     rx_packets: 12\n     tx_packets: n/a\n"
            "no stats available\n     rx_bytes: -3\n\n   \n     [0]: rx_discards: 4\n     rx_packets: 99\n"
            "Standard stats for eth2:\n")
    table = dump.parse(text)
    assert table.names == ("rx_packets", "[0]: rx_discards")
    assert table.values == [12, 4]  # a name given twice keeps its first value
    assert table.skipped == 4


def test_missing_dump_file_is_no_series_and_one_debug_line(tmp_path, caplog):
    d = tmp_path / "ethtool"
    d.mkdir()
    src = NicStats(root=str(tmp_path), ethtool_dir=str(d))
    caplog.set_level("DEBUG", logger="xtrace_agent.nic")
    for _ in range(3):
        report = Report(timestamp=0.0)
        src.collect([Target("eth9")], report)
        assert report.samples == []
    lines = [r.getMessage() for r in caplog.records if "eth9" in r.getMessage()]
    assert lines == ["nic eth9: no statistics (no dump file)"]


def test_a_driver_reload_never_goes_backwards(tmp_path):
    d = tmp_path / "ethtool"
    d.mkdir()
    sysdir = tmp_path / "sys" / "class" / "net" / "eth2"
    sysdir.mkdir(parents=True)
    src = NicStats(root=str(tmp_path / "sys"), ethtool_dir=str(d))
    seen = []
    for pause, oob, carrier in ((100, 4294967000, 3), (150, 200, 5), (20, 300, 1), (30, 310, 2)):
        # reload after the second read: pause restarts at 0, rx_out_of_buffer (32-bit) wraps first
        (d / "eth2.txt").write_text(dumps.render([("rx_prio3_pause", pause), ("rx_out_of_buffer", oob)]))
        (sysdir / "carrier_changes").write_text(f"{carrier}\n")
        report = Report(timestamp=0.0)
        src.collect([Target("eth2", "mlx5_0", "1")], report)
        seen.append({s.name: s.value for s in report.samples})
    assert [s[P] for s in seen] == [100, 150, 170, 180]
    assert [s[X] for s in seen] == [4294967000, 4294967000 + 496, 4294967000 + 596, 4294967000 + 606]
    assert [s[names.CARRIER_CHANGES] for s in seen] == [3, 5, 6, 7]
    assert os.path.exists(sysdir / "carrier_changes")


def test_every_sample_is_a_defined_nic_metric_with_its_labels(tmp_path):
    """Every NIC sample is a data metric of source `nic` carrying the labels datametrics.py declares, and
    every such metric is produced by some driver's dump (the standard pause statistics only come live:
    tests/nic/test_live.py decodes them)."""
    from xtrace_agent import datametrics as dm
    (tmp_path / "sys" / "class" / "net" / "eth2").mkdir(parents=True)
    (tmp_path / "sys" / "class" / "net" / "eth2" / "carrier_changes").write_text("3\n")
    seen = set()
    for stats in (dumps.mlx5("6.8", pfc=(3,), global_pause=True), dumps.bnxt(), dumps.ice()):
        d = tmp_path / "ethtool"
        d.mkdir(exist_ok=True)
        (d / "eth2.txt").write_text(dumps.render(stats))
        src = NicStats(root=str(tmp_path / "sys"), ethtool_dir=str(d), raw=names.RawSelection(include=("*",)))
        for target in (Target("eth2", "mlx5_0", "1"), Target("eth2")):
            report = Report(timestamp=0.0)
            src.collect([target], report)
            for s in report.samples:
                metric = dm.BY_NAME[s.name]
                assert metric.source == "nic" and metric.allows(s.labels), s
                seen.add(s.name)
    assert seen == {m.name for m in dm.BY_NAME.values() if m.source == "nic"} - {dm.NIC_STANDARD_PAUSE.name}
