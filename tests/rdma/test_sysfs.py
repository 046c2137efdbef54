"""Parsing sysfs into typed values: formats, quirks, net devices and the committed fixture tree."""

import filecmp
import os
import shutil

import pytest

from tests.fixtures import make_sysfs
from tests.rdma.util import FIXTURE, counter_path, einval_on
from xtrace_agent.rdma import sysfs


@pytest.mark.parametrize("text,expected", [
    ("123\n", (123, None)),
    ("123", (123, None)),  # no trailing newline
    ("\n\n42\n\n", (42, None)),  # blank lines around the value
    ("18446744073709551615\n", (2**64 - 1, None)),
    ("N/A (no PMA)\n", (None, sysfs.NO_PMA)),
    ("", (None, "empty")),
    ("\n", (None, "empty")),
    ("-1\n", (None, "not a number")),
    ("0x10\n", (None, "not a number")),
    (None, (None, "unreadable")),
])
def test_parse_counter(text, expected):
    assert sysfs.parse_counter(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("4: ACTIVE\n", "ACTIVE"),
    ("1: DOWN\n", "DOWN"),
    ("5: LinkUp", "LinkUp"),
    ("7: Phy Test\n", "Phy Test"),
    ("ACTIVE\n", "ACTIVE"),
    ("", None),
    (None, None),
])
def test_parse_enum(text, expected):
    assert sysfs.parse_enum(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("100 Gb/sec (4X EDR)", 12.5e9),
    ("400 Gb/sec (4X NDR)\n", 50e9),
    ("2.5 Gb/sec (1X SDR)", 312.5e6),
    ("56 Gb/sec (4X FDR)", 7e9),
    ("10 Gb/sec (4X)", 1.25e9),
    ("garbage", None),
    ("", None),
    (None, None),
])
def test_parse_rate(text, expected):
    assert sysfs.parse_rate(text) == expected


def test_devices_are_naturally_sorted(tmp_path):
    for name in ("mlx5_10", "mlx5_2", "mlx5_bond_0", "irdma0"):
        os.makedirs(tmp_path / "class" / "infiniband" / name)
    assert sysfs.devices(str(tmp_path)) == ["irdma0", "mlx5_2", "mlx5_10", "mlx5_bond_0"]


def test_no_infiniband_class_means_no_devices(tmp_path):
    assert sysfs.devices(str(tmp_path)) == []
    assert sysfs.ports(str(tmp_path), "mlx5_0") == []
    assert sysfs.list_devices(str(tmp_path)) == []


def test_read_mlx5_infiniband_port(tree):
    p = sysfs.read_port(tree, "mlx5_0", 1, hw_counters=True, clock=lambda: 5.0)
    assert (p.device, p.port, p.timestamp) == ("mlx5_0", 1, 5.0)
    assert (p.state, p.phys_state, p.link_layer) == ("ACTIVE", "LinkUp", "InfiniBand")
    assert p.rate == "100 Gb/sec (4X EDR)" and p.rate_bytes_per_second == 12.5e9
    assert p.counters["port_xmit_data"] == 250_000_000_000
    assert p.counters["port_rcv_packets"] == 800_000_000  # the file has no trailing newline
    assert p.counters["VL15_dropped"] == 0  # the file has blank lines
    assert p.hw_counters["new_fw_counter"] == 7  # unknown names are kept
    assert "lifespan" not in p.hw_counters  # a setting, not a counter
    assert p.problems == ()


def test_hw_counters_only_when_asked(tree):
    assert sysfs.read_port(tree, "mlx5_0", 1).hw_counters == {}


def test_iwarp_without_pma_reads_as_absent_values(tree):
    p = sysfs.read_port(tree, "cxgb4_0", 1)
    assert p.counters and all(v is None for v in p.counters.values())
    assert {why for _, why in p.problems} == {sysfs.NO_PMA}
    assert p.state == "ACTIVE"


def test_down_port(tree):
    p = sysfs.read_port(tree, "mlx4_0", 2)
    assert (p.state, p.phys_state) == ("DOWN", "Polling")


def test_einval_on_read_is_absent_and_reported(tree, monkeypatch):
    # A live kernel answers some reads with EINVAL; a plain file cannot, so the one low-level read
    # raises what the kernel would, and everything above it runs for real.
    monkeypatch.setattr(sysfs, "_raw", einval_on(counter_path(tree, "mlx5_0", 1, "counters", "symbol_error")))
    p = sysfs.read_port(tree, "mlx5_0", 1)
    assert p.counters["symbol_error"] is None
    assert p.counters["port_xmit_data"] == 250_000_000_000
    assert p.problems == (("counters/symbol_error", "EINVAL"),)


def test_unreadable_file_on_disk_is_absent(tree):
    path = counter_path(tree, "mlx5_0", 1, "counters", "link_downed")
    os.remove(path)
    os.mkdir(path)  # read() fails with EISDIR: a real OSError from the filesystem
    p = sysfs.read_port(tree, "mlx5_0", 1)
    assert p.counters["link_downed"] is None
    assert p.problems == (("counters/link_downed", "EISDIR"),)


def test_missing_attribute_file_is_no_data_not_a_problem(tree):
    os.remove(os.path.join(tree, "class/infiniband/mlx5_0/ports/1/rate"))
    p = sysfs.read_port(tree, "mlx5_0", 1)
    assert p.rate is None and p.rate_bytes_per_second is None and p.problems == ()


def test_vanished_port_reads_as_none(tree):
    shutil.rmtree(os.path.join(tree, "class/infiniband/mlx5_1"))
    assert sysfs.read_port(tree, "mlx5_1", 1) is None
    assert sysfs.ports(tree, "mlx5_1") == []


def test_counters_ext_files_join_the_counters(tree):
    ext = os.path.join(tree, "class/infiniband/mlx4_0/ports/1/counters_ext")
    os.makedirs(ext)
    with open(os.path.join(ext, "port_xmit_data_64"), "w") as f:
        f.write("99000000\n")
    assert sysfs.read_port(tree, "mlx4_0", 1).counters["port_xmit_data_64"] == 99_000_000


@pytest.mark.parametrize("device,port,expected", [
    ("mlx5_0", 1, ("ib0",)),  # InfiniBand: GIDs have no net device; the PCI function's IPoIB device
    ("mlx5_1", 1, ("ens1f0np0",)),  # RoCE: from the GID table
    ("mlx5_bond_0", 1, ("bond0",)),  # bonded RoCE: the GIDs name the bond, not the PF's netdev
    ("cxgb4_0", 1, ("enp3s0f4",)),
    ("mlx4_0", 1, ("ib0",)),  # two ports on one PCI function: dev_port 0
    ("mlx4_0", 2, ("ib1",)),  # dev_port 1
    ("nope", 1, ()),
])
def test_netdevs(tree, device, port, expected):
    assert sysfs.netdevs(tree, device, port) == expected


def test_list_devices(tree):
    lines = sysfs.list_devices(tree)
    assert len(lines) == 6
    assert lines[0].split() == ["cxgb4_0", "port=1", "link_layer=Ethernet", "state=ACTIVE", "phys_state=LinkUp",
                                "rate=25", "Gb/sec", "(1X", "EDR)", "netdev=enp3s0f4"]
    assert any("mlx4_0" in line and "port=2" in line and "state=DOWN" in line and "netdev=ib1" in line
               for line in lines)
    assert any(line.startswith("mlx5_bond_0") and line.endswith("netdev=bond0") for line in lines)


def test_committed_fixture_is_what_the_generator_writes(tmp_path):
    fresh = str(tmp_path / "sys")
    make_sysfs.build(fresh)

    def same(a: str, b: str) -> None:
        cmp = filecmp.dircmp(a, b)
        assert not cmp.left_only and not cmp.right_only, (a, cmp.left_only, cmp.right_only)
        _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
        assert not mismatch and not errors, (a, mismatch, errors)
        for sub in cmp.common_dirs:
            same(os.path.join(a, sub), os.path.join(b, sub))

    same(FIXTURE, fresh)
