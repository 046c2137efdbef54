"""The live NIC reader on a real kernel: a veth's driver statistics through SIOCETHTOOL equal what the
`ethtool` command prints for it at the same moment, move with traffic sent from another namespace, and
an interface that vanishes or a driver without pause statistics is a debug line and no series."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.conftest import need
from tests.helpers.netns import VethPair, veth  # noqa: F401 (fixture)
from xtrace_agent.nic import dump, names
from xtrace_agent.nic.accounting import NicStats
from xtrace_agent.nic.ethtool import EthtoolFailure, PauseReader, StatsReader
from xtrace_agent.nic.source import Target
from xtrace_agent.samples import Report

pytestmark = pytest.mark.kernel


def ethtool_s(dev: str) -> dump.Table:
    need(shutil.which("ethtool") is not None, "ethtool is not installed (Makefile APT_PACKAGES)")
    out = subprocess.run(["ethtool", "-S", dev], capture_output=True, text=True, check=True).stdout
    return dump.parse(out)


def stable_read(reader: StatsReader, dev: str) -> tuple[dump.Table, dump.Table]:
    """Our read between two `ethtool -S` runs that agree (nothing moved in between)."""
    for _ in range(20):
        before = ethtool_s(dev)
        ours = reader.read(dev)
        if ethtool_s(dev) == before:
            return ours, before
    raise AssertionError(f"{dev}'s statistics never held still")


def send_udp(pair: VethPair, n: int) -> None:
    s = pair.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(n):
            s.sendto(b"x" * 200, (pair.ip4_b, 9))
    finally:
        s.close()


def test_equal_to_ethtool_and_moves_with_traffic(veth):  # noqa: F811
    pair: VethPair = veth
    # GRO puts the veth's receive side on NAPI, where it counts per-queue packets (rx_queue_0_xdp_packets);
    # the sender's frames go that way only without TSO (veth_skb_is_eligible_for_gro)
    need(shutil.which("ethtool") is not None, "ethtool is not installed (Makefile APT_PACKAGES)")
    subprocess.run(["ethtool", "-K", pair.dev_b, "gro", "on"], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "exec", pair.ns_a, "ethtool", "-K", pair.dev_a, "tso", "off"], check=True,
                   capture_output=True)
    reader = StatsReader()
    try:
        ours, theirs = stable_read(reader, pair.dev_b)
        assert ours.names == theirs.names and ours.values == theirs.values
        assert "peer_ifindex" in ours.names and reader.name_reads == 1
        packets = ours.names.index("rx_queue_0_xdp_packets")
        send_udp(pair, 50)
        after, theirs = stable_read(reader, pair.dev_b)
        assert after.values == theirs.values
        assert after.values[packets] - ours.values[packets] >= 50
        assert reader.name_reads == 1  # the string set is read once, while its count holds
    finally:
        reader.close()


def test_source_samples_equal_ethtool(veth):  # noqa: F811
    pair: VethPair = veth
    src = NicStats(raw=names.RawSelection(include=("*",), per_queue=True))
    try:
        for _ in range(20):
            before = ethtool_s(pair.dev_b)
            report = Report(timestamp=0.0)
            src.collect([Target(pair.dev_b)], report)
            if ethtool_s(pair.dev_b) == before:
                break
        raw = {s.labels["stat"]: s.value for s in report.samples if s.name == names.RAW}
        assert raw == dict(zip(before.names, before.values, strict=True))
        carrier = [s.value for s in report.samples if s.name == names.CARRIER_CHANGES]
        with open(f"/sys/class/net/{pair.dev_b}/carrier_changes") as f:
            assert carrier == [int(f.read())]
        # no pause statistics on a veth: no series for them
        assert not [s for s in report.samples if s.name == names.STANDARD_PAUSE]
    finally:
        src.close()


def test_vanishing_interface_and_no_pause_statistics(veth, caplog):  # noqa: F811
    pair: VethPair = veth
    caplog.set_level("DEBUG", logger="xtrace_agent.nic")
    src = NicStats()
    try:
        for _ in range(3):
            report = Report(timestamp=0.0)
            src.collect([Target(pair.dev_b, "mlx5_0", "1"), Target("xtgone0")], report)
            assert {s.labels["netdev"] for s in report.samples} == {pair.dev_b}
        pair.delete_link()
        for _ in range(3):
            report = Report(timestamp=0.0)
            src.collect([Target(pair.dev_b, "mlx5_0", "1"), Target("xtgone0")], report)
            assert report.samples == []
    finally:
        src.close()
    # Only the NIC source's own lines: pyroute2 logs at DEBUG too when an earlier test (the agent run
    # in process) left the root logger at DEBUG.
    lines = sorted(r.getMessage() for r in caplog.records if r.name.startswith("xtrace_agent.nic"))
    assert lines == sorted([
        f"nic {pair.dev_b}: no pause statistics (driver has no such statistics)",
        f"nic {pair.dev_b}: no statistics (no such interface)",
        "nic xtgone0: no statistics (no such interface)",
    ])


def test_pause_reader_reaches_the_kernel(veth):  # noqa: F811
    """The PAUSE_GET request is well formed: the kernel answers for the device (EOPNOTSUPP: veth has no
    pause settings) and refuses an unknown name (ENODEV), rather than rejecting the message."""
    pair: VethPair = veth
    reader = PauseReader()
    try:
        with pytest.raises(EthtoolFailure, match="driver has no such statistics"):
            reader.read(pair.dev_b)
        with pytest.raises(EthtoolFailure, match="no such interface"):
            reader.read("xtgone0")
    finally:
        reader.close()


def test_pause_reply_decoding():
    """The reply layout of ETHTOOL_MSG_PAUSE_GET (uapi/linux/ethtool_netlink.h), as a driver with pause
    statistics answers: header nest, autoneg/rx/tx, a stats nest with a pad attribute and two u64s.
    (No NIC with pause statistics exists on the test machine, so the kernel's answer is built here.)"""
    import struct

    from xtrace_agent.nic import ethtool

    def nla(kind, payload):
        return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)

    stats = nla(1, b"") + nla(2, struct.pack("=Q", 7)) + nla(3, struct.pack("=Q", 1 << 40))
    reply = (nla(1 | 0x8000, nla(1, struct.pack("=I", 3)) + nla(2, b"eth2\0")) + nla(2, b"\1") + nla(3, b"\1")
             + nla(4, b"\1") + nla(5 | 0x8000, stats))
    assert ethtool._pause_stats(reply) == {"tx": 7, "rx": 1 << 40}
    with pytest.raises(EthtoolFailure, match="no pause statistics"):
        ethtool._pause_stats(nla(2, b"\1"))  # a driver that fills no counter: the kernel sends no stats nest


def test_names_reread_when_the_driver_count_changes():
    """Channels changed with `ethtool -L` change a veth's statistics table (fewer, then more queues):
    the names are read again, and only then, and what is read stays equal to `ethtool -S`."""
    import uuid

    from tests.helpers.netns import _kernel_ready, ip, run_in_netns

    _kernel_ready()
    need(shutil.which("ethtool") is not None, "ethtool is not installed (Makefile APT_PACKAGES)")
    ns = f"xtnic{uuid.uuid4().hex[:6]}"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "vq0", "numrxqueues", "4", "numtxqueues", "4", "type", "veth", "peer", "name",
           "vq1", "numrxqueues", "4", "numtxqueues", "4")

        def in_ns():
            reader = StatsReader()
            seen = []
            try:
                for channels in (None, "2", "4", "4"):
                    if channels:
                        subprocess.run(["ethtool", "-L", "vq0", "rx", channels, "tx", channels], check=True,
                                       capture_output=True)
                    ours, theirs = stable_read(reader, "vq0")
                    assert ours == theirs
                    seen.append((len(ours.names), reader.name_reads))
            finally:
                reader.close()
            return seen
        sizes = run_in_netns(ns, in_ns)
    finally:
        ip("netns", "del", ns, check=False)
    (n4, _), (n2, _), _, _ = sizes
    assert n2 < n4
    assert sizes == [(n4, 1), (n2, 2), (n4, 3), (n4, 3)]
