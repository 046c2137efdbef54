"""The rdma/nccl collector on fixture trees: metric names and values, counter truth across intervals,
device selection, and everything real sysfs throws at it."""

import os
import shutil

import pytest

from tests.fixtures import make_sysfs
from tests.rdma.util import by_counter, counter_path, einval_on, make, value, write_counter
from xtrace_agent import selfmetrics as sm
from xtrace_agent.errors import UsageError
from xtrace_agent.rdma import sysfs

ERRORS = {"collector": "rdma"}


def test_rdma_mode_exports_port_counters_and_derived_metrics(tree):
    c, _ = make(tree, mode="rdma")
    c.start()
    r = c.collect(100.0)
    assert r.timestamp == 100.0
    mlx5_0 = {"device": "mlx5_0", "port": "1"}
    # port_xmit_data counts 4-byte words
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", **mlx5_0) == 1_000_000_000_000
    assert value(r, "xtrace_rdma_port_receive_bytes_total", **mlx5_0) == 500_000_000_000
    assert value(r, "xtrace_rdma_port_transmit_packets_total", **mlx5_0) == 900_000_000
    assert value(r, "xtrace_rdma_port_receive_packets_total", **mlx5_0) == 800_000_000
    counters = by_counter(r, "xtrace_rdma_port_counter_total", **mlx5_0)
    assert counters["port_xmit_data"] == 250_000_000_000  # raw, as in sysfs
    assert counters["link_downed"] == 1 and counters["port_xmit_discards"] == 3
    assert len(counters) == 21
    assert value(r, "xtrace_rdma_port_rate_bytes_per_second", **mlx5_0) == 12.5e9
    assert not by_counter(r, "xtrace_rdma_hw_counter_total")  # rdma mode: no hw_counters


def test_every_sample_has_device_and_port_labels(tree):
    c, _ = make(tree)
    c.start()
    for s in c.collect(1.0).samples:
        assert s.name.startswith("xtrace_rdma_")
        assert s.labels["device"] and s.labels["port"].isdigit()
        assert isinstance(s.timestamp, float)


def test_nccl_mode_adds_hw_counters(tree):
    c, _ = make(tree, mode="nccl")
    c.start()
    r = c.collect(1.0)
    hw = by_counter(r, "xtrace_rdma_hw_counter_total", device="mlx5_1", port="1")
    assert hw["np_cnp_sent"] == 42 and hw["rp_cnp_handled"] == 17 and hw["np_ecn_marked_roce_packets"] == 99
    assert "lifespan" not in hw
    assert by_counter(r, "xtrace_rdma_hw_counter_total", device="mlx5_0")["new_fw_counter"] == 7


def test_port_info(tree):
    c, _ = make(tree)
    c.start()
    r = c.collect(1.0)
    info = {(s.labels["device"], s.labels["port"]): s for s in r.samples if s.name == "xtrace_rdma_port_info"}
    assert len(info) == 6 and all(s.value == 1 for s in info.values())
    assert info[("mlx5_0", "1")].labels == {
        "device": "mlx5_0", "port": "1", "link_layer": "InfiniBand", "state": "ACTIVE",
        "phys_state": "LinkUp", "rate": "100 Gb/sec (4X EDR)", "netdev": "ib0"}
    assert info[("mlx5_bond_0", "1")].labels["netdev"] == "bond0"
    assert info[("mlx5_1", "1")].labels["link_layer"] == "Ethernet"
    down = info[("mlx4_0", "2")].labels
    assert (down["state"], down["phys_state"], down["netdev"]) == ("DOWN", "Polling", "ib1")


def test_iwarp_no_pma_is_absent_and_counted_once(tree):
    c, health = make(tree)
    c.start()
    for t in (1.0, 2.0, 3.0):
        r = c.collect(t)
        assert not by_counter(r, "xtrace_rdma_port_counter_total", device="cxgb4_0")
        assert value(r, "xtrace_rdma_port_transmit_bytes_total", device="cxgb4_0") is None
        assert value(r, "xtrace_rdma_port_info", device="cxgb4_0") == 1
    # 16 files that never read: 16 errors, not 16 per interval
    assert health.get(sm.COLLECTOR_ERRORS, ERRORS) == 16
    line = next(line for line in c.text.lines(r) if line.startswith("cxgb4_0"))
    assert "tx_bytes=-" in line


def test_saturated_error_counters_are_flagged_not_pushed(tree):
    c, _ = make(tree)
    c.start()
    r = c.collect(1.0)
    port = {"device": "mlx4_0", "port": "1"}
    flags = by_counter(r, "xtrace_rdma_counter_saturated", **port)
    assert {k for k, v in flags.items() if v == 1} == {
        "symbol_error", "link_error_recovery", "local_link_integrity_errors"}
    assert flags["port_rcv_errors"] == 0 and flags["port_xmit_wait"] == 0
    counters = by_counter(r, "xtrace_rdma_port_counter_total", **port)
    assert "symbol_error" not in counters and counters["port_rcv_errors"] == 12
    # only counters that can stick at their maximum get a flag
    assert "port_xmit_data" not in flags
    assert "saturated=link_error_recovery,local_link_integrity_errors,symbol_error" in c.text.lines(r)[1]


def test_32_bit_counters_wrap_between_reads(tree):
    c, health = make(tree)
    c.start()
    port = {"device": "mlx5_0", "port": "1"}
    r1 = c.collect(1.0)
    assert by_counter(r1, "xtrace_rdma_port_counter_total", **port)["port_xmit_wait"] == 4_294_967_000
    assert by_counter(r1, "xtrace_rdma_hw_counter_total", **port)["out_of_buffer"] == 4_294_967_290
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_wait", "200\n")  # +296 to the wrap, +200 after
    write_counter(tree, "mlx5_0", 1, "hw_counters", "out_of_buffer", "4\n")  # +6, +4
    r2 = c.collect(2.0)
    assert by_counter(r2, "xtrace_rdma_port_counter_total", **port)["port_xmit_wait"] == 4_294_967_000 + 496
    assert by_counter(r2, "xtrace_rdma_hw_counter_total", **port)["out_of_buffer"] == 4_294_967_290 + 10
    assert health.get(sm.RDMA_WRAPS) == 2


def test_64_bit_drop_is_a_reset_and_totals_never_go_backwards(tree):
    c, health = make(tree)
    c.start()
    port = {"device": "mlx5_1", "port": "1"}
    c.collect(1.0)
    write_counter(tree, "mlx5_1", 1, "counters", "port_xmit_data", "1500000\n")
    r = c.collect(2.0)
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", **port) == 6_000_000
    write_counter(tree, "mlx5_1", 1, "counters", "port_xmit_data", "25\n")  # device re-probed
    r = c.collect(3.0)
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", **port) == (1_500_000 + 25) * 4
    assert health.get(sm.RDMA_RESETS) == 1


def test_text_line_totals_first_then_rates_per_second(tree, clock):
    c, _ = make(tree, clock=clock)
    c.start()
    first = c.text.lines(c.collect(1.0))
    assert len(first) == 6
    line = next(x for x in first if x.startswith("mlx5_0 "))
    assert line == ("mlx5_0 port=1 netdev=ib0 link_layer=InfiniBand state=ACTIVE rate=100Gb/sec "
                    "tx_bytes=1000000000000 rx_bytes=500000000000 tx_packets=900000000 rx_packets=800000000")
    clock.now += 2.0
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_data", f"{250_000_000_000 + 500_000_000}\n")
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_packets", f"{900_000_000 + 3000}\n")
    line = next(x for x in c.text.lines(c.collect(3.0)) if x.startswith("mlx5_0 "))
    # 2e9 bytes in 2 s; 3000 packets in 2 s
    assert line.endswith("tx_bytes/s=1.00G rx_bytes/s=0 tx_packets/s=1.50k rx_packets/s=0")


def test_select_devices_and_globs(tree):
    c, _ = make(tree, devices=("mlx5_1", "mlx4_*"))
    c.start()
    r = c.collect(1.0)
    assert {s.labels["device"] for s in r.samples} == {"mlx5_1", "mlx4_0"}


def test_unknown_device_on_command_line_is_a_usage_error(tree):
    c, _ = make(tree, devices=("mlx5_9",))
    with pytest.raises(UsageError) as e:
        c.start()
    assert str(e.value) == "unknown RDMA device mlx5_9 (found: cxgb4_0, mlx4_0, mlx5_0, mlx5_1, mlx5_bond_0)"


def test_no_devices_on_command_line_is_a_usage_error(tmp_path):
    c, _ = make(str(tmp_path))
    with pytest.raises(UsageError, match="no RDMA devices in"):
        c.start()


def test_unknown_device_from_config_file_waits_not_ready(tmp_path):
    root = str(tmp_path / "sys")
    make_sysfs.build(root)
    hidden = str(tmp_path / "hidden")
    shutil.move(os.path.join(root, "class/infiniband/mlx5_1"), hidden)
    c, health = make(root, devices=("mlx5_1",), from_file=True)
    c.start()
    assert "rdma:mlx5_1" in health.reasons()
    assert c.collect(1.0).samples == []
    shutil.move(hidden, os.path.join(root, "class/infiniband/mlx5_1"))  # driver loaded later
    r = c.collect(2.0)
    assert health.reasons() == {}
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", device="mlx5_1") == 4_000_000


def test_no_devices_from_config_file_is_not_ready(tmp_path):
    c, health = make(str(tmp_path), from_file=True)
    c.start()
    assert c.collect(1.0).samples == []
    assert "rdma" in health.reasons()


def test_device_vanishing_between_listing_and_reading(tree, monkeypatch):
    real = sysfs.devices

    def devices_then_unplug(root):
        found = real(root)
        shutil.rmtree(os.path.join(root, "class/infiniband/mlx5_1"), ignore_errors=True)
        return found

    c, health = make(tree)
    c.start()
    monkeypatch.setattr(sysfs, "devices", devices_then_unplug)
    r = c.collect(1.0)
    assert not [s for s in r.samples if s.labels["device"] == "mlx5_1"]
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", device="mlx5_0") == 1_000_000_000_000
    assert health.get(sm.COLLECTOR_ERRORS, ERRORS) >= 1


def test_einval_on_one_counter_leaves_the_rest(tree, monkeypatch):
    real = sysfs._raw
    c, health = make(tree)
    c.start()
    monkeypatch.setattr(sysfs, "_raw", einval_on(counter_path(tree, "mlx5_1", 1, "hw_counters", "np_cnp_sent")))
    r = c.collect(1.0)
    hw = by_counter(r, "xtrace_rdma_hw_counter_total", device="mlx5_1")
    assert "np_cnp_sent" not in hw and hw["rp_cnp_handled"] == 17
    assert health.get(sm.COLLECTOR_ERRORS, ERRORS) == 16 + 1  # + the iWARP files
    monkeypatch.setattr(sysfs, "_raw", real)
    r = c.collect(2.0)  # readable again: back, from where it was
    assert by_counter(r, "xtrace_rdma_hw_counter_total", device="mlx5_1")["np_cnp_sent"] == 42


def test_garbage_in_counter_files_does_not_crash(tree):
    write_counter(tree, "mlx5_0", 1, "counters", "symbol_error", "\x00\xff garbage")
    write_counter(tree, "mlx5_0", 1, "counters", "port_xmit_data", "")
    with open(os.path.join(tree, "class/infiniband/mlx5_0/ports/1/state"), "wb") as f:
        f.write(b"\xff\xfe")
    c, _ = make(tree)
    c.start()
    r = c.collect(1.0)
    counters = by_counter(r, "xtrace_rdma_port_counter_total", device="mlx5_0")
    assert "symbol_error" not in counters and "port_xmit_data" not in counters
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", device="mlx5_0") is None
    assert value(r, "xtrace_rdma_port_receive_bytes_total", device="mlx5_0") == 500_000_000_000


def test_counters_ext_64_bit_copies_feed_the_byte_totals(tree):
    ext = os.path.join(tree, "class/infiniband/mlx4_0/ports/1/counters_ext")
    os.makedirs(ext)
    for name, text in (("port_xmit_data_64", "99000000\n"), ("port_xmit_packets_64", "0\n")):
        with open(os.path.join(ext, name), "w") as f:
            f.write(text)
    c, _ = make(tree)
    c.start()
    r = c.collect(1.0)
    port = {"device": "mlx4_0", "port": "1"}
    assert value(r, "xtrace_rdma_port_transmit_bytes_total", **port) == 99_000_000 * 4
    # a *_64 file stuck at 0 below its 32-bit twin is ignored
    assert value(r, "xtrace_rdma_port_transmit_packets_total", **port) == 80_000


def test_health_records_duration(tree):
    c, health = make(tree)
    c.start()
    c.collect(1.0)
    assert health.get(sm.COLLECTOR_DURATION, ERRORS) > 0
    c.close()
    c.close()  # idempotent


@pytest.mark.parametrize("mode", ["rdma", "nccl"])
def test_every_sample_is_a_defined_data_metric_with_its_declared_labels(tree, mode):
    from xtrace_agent import datametrics as dm

    c, _ = make(tree, mode=mode)
    c.start()
    seen = set()
    for s in c.collect(1.0).samples + c.collect(2.0).samples:
        metric = dm.BY_NAME.get(s.name)
        assert metric is not None and metric.source == "rdma", s
        assert metric.allows(s.labels), (s.name, sorted(s.labels))
        seen.add(s.name)
    expected = {m.name for m in dm.BY_NAME.values() if m.source == "rdma"}
    assert seen == (expected if mode == "nccl" else expected - {dm.RDMA_HW_COUNTER.name})
