"""Cost of the NIC statistics per interval (8 RoCE netdevs, mlx5-sized tables), and of `xtrace fabric`
and `xtrace top` against a VictoriaMetrics holding 1,000 nodes' RDMA series.

NIC statistics, each beside a same-run reference:
- captured dumps (`--ethtool-dir`): 8 mlx5 dumps of a 24-channel ConnectX port (1,425 statistics each),
  parsed, mapped and tracked every interval;
- the mapping and tracking alone on mlx5-sized tables (what the live path adds to the ioctl);
- the live ioctl path on 8 real veths in a private network namespace (small tables: no mlx5 here), and
  pyroute2's own get_statistics() and one `ethtool -S` process for comparison;
- reference: the nccl RDMA interval of 8 devices x 2 ports (bench_rdma.py's node), measured in this run.
On a real mlx5 the driver refreshes its counters inside the ioctl (firmware commands): that cost is
the driver's and cannot be measured here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchlib import median_ms  # noqa: E402

from tests.nic import dumps  # noqa: E402
from xtrace_agent import oncall  # noqa: E402
from xtrace_agent.collectors.rdma import RdmaCollector  # noqa: E402
from xtrace_agent.config import AgentConfig  # noqa: E402
from xtrace_agent.health import Health  # noqa: E402
from xtrace_agent.nic import dump  # noqa: E402
from xtrace_agent.nic.accounting import NicStats  # noqa: E402
from xtrace_agent.nic.ethtool import EthtoolFailure, PauseReader, StatsReader  # noqa: E402
from xtrace_agent.nic.source import Target  # noqa: E402
from xtrace_agent.ports import PortAccounting  # noqa: E402
from xtrace_agent.samples import Report  # noqa: E402

TARGET_MS = 20.0
ROUNDS = 50
NETDEVS = [f"eth{i}" for i in range(2, 10)]
TARGETS = [Target(n, f"mlx5_{i}", "1") for i, n in enumerate(NETDEVS)]


def _median_ms(fn, rounds: int = ROUNDS) -> float:
    return median_ms(fn, rounds)


def rdma_reference_ms(tmp: str) -> float:
    path = os.path.join(ROOT, "tests", "fixtures", "make_sysfs.py")
    spec = importlib.util.spec_from_file_location("make_sysfs", path)
    make_sysfs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sysfs)
    root = os.path.join(tmp, "sys")
    make_sysfs.big_tree(root, devices=8, ports=2)
    health = Health()
    collector = RdmaCollector(AgentConfig(mode="nccl", sysfs=root), health)
    accounting = PortAccounting(health)
    collector.start()

    def once():
        now = time.time()
        accounting.report(collector.collect(now), now)
    return _median_ms(once)


def dumps_ms(tmp: str) -> tuple[float, int]:
    d = os.path.join(tmp, "ethtool")
    os.makedirs(d)
    for n in NETDEVS:
        with open(os.path.join(d, f"{n}.txt"), "w") as f:
            f.write(dumps.render(dumps.mlx5("6.8", pfc=(3,), channels=24)))
    src = NicStats(root=os.path.join(tmp, "sys"), ethtool_dir=d)
    count = [0]

    def once():
        report = Report(timestamp=0.0)
        src.collect(TARGETS, report)
        count[0] = len(report.samples)
    return _median_ms(once), count[0]


class _Tables:
    """mlx5-sized tables handed to NicStats in place of the ioctl (values move every read)."""

    def __init__(self):
        stats = dumps.mlx5("6.8", pfc=(3,), channels=24)
        self.names = tuple(n for n, _ in stats)
        self.values = [v for _, v in stats]

    def read(self, netdev: str) -> dump.Table:
        self.values = [v + 1 for v in self.values]
        return dump.Table(self.names, self.values)

    def close(self):
        pass


def mapping_ms(tmp: str) -> float:
    src = NicStats(root=os.path.join(tmp, "sys"))
    src.close()
    src.source._stats, src.source._pause = _Tables(), None  # the ioctl replaced by in-memory tables: mapping cost only

    def once():
        src.collect(TARGETS, Report(timestamp=0.0))
    return _median_ms(once)


def _in_netns(ns: str, fn):
    netns = importlib.import_module("tests.helpers.netns")
    return netns.run_in_netns(ns, fn)


def _pyroute2_pause(devs):
    """The PAUSE_GET request through pyroute2's own request path: what nic/ethtool.py measured and left."""
    from pyroute2.netlink import NLM_F_REQUEST
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    from xtrace_agent.nic.ethtool import ETHTOOL_FLAG_STATS, ETHTOOL_MSG_PAUSE_GET, pause_msg
    sock = GenericNetlinkSocket()
    sock.bind("ethtool", pause_msg)

    def once():
        for d in devs:
            msg = pause_msg()
            msg["cmd"], msg["version"] = ETHTOOL_MSG_PAUSE_GET, 1
            msg["attrs"].append(("ETHTOOL_A_PAUSE_HEADER", {"attrs": [
                ("ETHTOOL_A_HEADER_DEV_NAME", d.netdev), ("ETHTOOL_A_HEADER_FLAGS", ETHTOOL_FLAG_STATS)]}))
            try:
                sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST)
            except NetlinkError:
                pass
    return once


def live_ms() -> dict[str, float]:
    ns = f"xtbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for i in range(len(NETDEVS)):
            subprocess.run(["ip", "-n", ns, "link", "add", f"vb{i}", "type", "veth", "peer", "name", f"vp{i}"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", f"vb{i}", "up"], check=True)
        devs = [Target(f"vb{i}", f"mlx5_{i}", "1") for i in range(len(NETDEVS))]

        def measure():
            out = {}
            src = NicStats()
            out["nic (ioctl + netlink pause + sysfs), 8 veths"] = _median_ms(
                lambda: src.collect(devs, Report(timestamp=0.0)))
            src.close()
            reader = StatsReader()
            out["ioctl only (GSSET_INFO + GSTATS), 8 veths"] = _median_ms(lambda: [reader.read(d.netdev) for d in devs])
            reader.close()
            pause = PauseReader()

            def ask_pause():
                for d in devs:
                    try:
                        pause.read(d.netdev)
                    except EthtoolFailure:
                        pass  # veth: EOPNOTSUPP, after the same round trip a driver with statistics makes
            out["netlink pause request (raw socket), 8 veths"] = _median_ms(ask_pause)
            pause.close()
            out["same through pyroute2's nlm_request, 8 veths"] = _median_ms(_pyroute2_pause(devs))
            from pyroute2.ethtool.ioctl import IoctlEthtool
            ioctls = [IoctlEthtool(d.netdev) for d in devs]
            out["pyroute2 get_statistics(), 8 veths"] = _median_ms(lambda: [i.get_statistics() for i in ioctls])
            for i in ioctls:
                i.close()
            out["one `ethtool -S` process per veth, 8 veths"] = _median_ms(
                lambda: [subprocess.run(["ethtool", "-S", d.netdev], capture_output=True) for d in devs], 10)
            return out
        return _in_netns(ns, measure)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# --- the CLI against 1,000 nodes ------------------------------------------------------------------

NODES, PORTS, STEP, SPAN = 1000, 2, 30, 15 * 60


def _fill(vm) -> int:
    """1,000 nodes x 2 ports, 15 minutes at 30 s: port info and rate, bytes, the nccl hw counters, the NIC
    series the verdicts read. One node in ten is unhealthy in one way."""
    end = int(time.time())
    series = 0
    for start in range(0, NODES, 50):
        lines = []
        for n in range(start, start + 50):
            for p in range(PORTS):
                port = f'cluster="bench",node="gpu-{n:04d}",device="mlx5_{p}",port="1"'
                nic = f'{port},netdev="eth{p}"'
                per_s = {f"xtrace_rdma_port_transmit_bytes_total{{{port}}}": 5e9,
                         f"xtrace_rdma_port_receive_bytes_total{{{port}}}": 4e9,
                         f'xtrace_rdma_hw_counter_total{{{port},counter="np_ecn_marked_roce_packets"}}': 5000 if n % 10 == 1 else 10,
                         f'xtrace_rdma_hw_counter_total{{{port},counter="np_cnp_sent"}}': 3,
                         f'xtrace_rdma_hw_counter_total{{{port},counter="out_of_sequence"}}': 20 if n % 10 == 2 else 0.1,
                         f'xtrace_rdma_hw_counter_total{{{port},counter="out_of_buffer"}}': 0,
                         f'xtrace_nic_pause_duration_seconds_total{{{nic},direction="rx",priority="3"}}': 0.3 if n % 10 == 3 else 0.001,
                         f'xtrace_nic_pause_frames_total{{{nic},direction="tx",priority="3"}}': 1000 if n % 10 == 4 else 1,
                         f'xtrace_nic_discards_total{{{nic},direction="rx",cause="port_buffer"}}': 0,
                         f'xtrace_nic_symbol_errors_total{{{nic},layer="phy"}}': 3 if n % 10 == 5 else 0,
                         f"xtrace_nic_carrier_changes_total{{{nic}}}": 0,
                         f"xtrace_nic_fec_corrected_bits_total{{{nic}}}": 1000}
                gauges = {f'xtrace_rdma_port_info{{{port},state="ACTIVE",link_layer="Ethernet",netdev="eth{p}"}}': 1,
                          f"xtrace_rdma_port_rate_bytes_per_second{{{port}}}": 12.5e9}
                series += len(per_s) + len(gauges)
                for t in range(end - SPAN, end + 1, STEP):
                    for s, r in per_s.items():
                        lines.append(f"{s} {1e6 + r * (t - end + SPAN):.0f} {t * 1000}")
                    for s, v in gauges.items():
                        lines.append(f"{s} {v} {t * 1000}")
        req = urllib.request.Request(vm.import_url, data=("\n".join(lines) + "\n").encode(), method="POST")
        urllib.request.urlopen(req, timeout=120).read()
    vm.force_flush()
    return series


def cli_ms() -> dict[str, float]:
    from tests.helpers.vm import VM_BIN, VictoriaMetrics, free_port
    if not os.access(VM_BIN, os.X_OK):
        print(f"(skipped the CLI part: {VM_BIN} not built; make vm)")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(os.path.join(tmp, "data"), free_port(), dedup=False)
        vm.start()
        try:
            t = time.perf_counter()
            series = _fill(vm)
            fill = time.perf_counter() - t
            print(f"database: {NODES} nodes x {PORTS} ports, {series} series, {SPAN // STEP + 1} samples each "
                  f"(filled in {fill:.1f} s)")
            oncall.fabric(oncall.Client(vm.url), "15m")  # warm the caches once

            def run(fn):
                return _median_ms(fn, 5)
            out = {
                "reference: count(xtrace_rdma_port_info)": run(lambda: oncall.Client(vm.url).query(
                    "count(last_over_time(xtrace_rdma_port_info[15m]))")),
                "xtrace fabric --since 15m (2,000 ports)": run(lambda: oncall.fabric_text(
                    oncall.fabric(oncall.Client(vm.url), "15m"), "15m")),
                "xtrace fabric --node gpu-0042": run(lambda: oncall.fabric(oncall.Client(vm.url, "gpu-0042"), "15m")),
                "xtrace top --since 5m": run(lambda: oncall.top(oncall.Client(vm.url), "5m", 10)),
            }
            verdicts = {}
            for p in oncall.fabric(oncall.Client(vm.url), "15m"):
                verdicts[p["verdict"]] = verdicts.get(p["verdict"], 0) + 1
            print(f"verdicts: {verdicts}")
            return out
        finally:
            vm.stop()


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = rdma_reference_ms(tmp)
        dump_ms, samples = dumps_ms(tmp)
        map_ms = mapping_ms(tmp)
    rows.append(("reference: nccl RDMA interval, 8 devices x 2 ports", ref, None))
    rows.append((f"nic from 8 mlx5 dumps (--ethtool-dir, {samples} samples)", dump_ms, ref))
    rows.append(("nic mapping + tracking, 8 mlx5-sized tables", map_ms, ref))
    if os.geteuid() == 0:
        live = live_ms()
        for name, ms in live.items():
            rows.append((name, ms, ref))
        # veth has no pause statistics (asked once a minute): a driver that has them pays the request each interval
        nic = map_ms + live["nic (ioctl + netlink pause + sysfs), 8 veths"] + live["netlink pause request (raw socket), 8 veths"]
        rows.append(("nic per interval, mlx5-sized: mapping + live reads + pause requests", nic, ref))
        interval = ref + nic
        rows.append(("nccl interval estimate: RDMA + NIC", interval, ref))
    else:
        interval = ref + dump_ms
        print("(not root: no live veth measurement)")
    width = max(len(r[0]) for r in rows)
    print(f"NIC statistics per interval, median of {ROUNDS} (ratio: against the RDMA interval of this run)")
    for name, ms, against in rows:
        ratio = f"{ms / against:6.2f}x" if against else "      -"
        print(f"  {name:<{width}}  {ms:8.3f} ms  {ratio}")
    ok = interval < TARGET_MS
    print(f"  nccl interval with NIC statistics: {interval:.2f} ms (target < {TARGET_MS:g} ms): {'yes' if ok else 'NO'}"
          f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    cli = cli_ms()
    if cli:
        ref_q = cli["reference: count(xtrace_rdma_port_info)"]
        print("CLI query time, median of 5 (ratio: against one count query of this run)")
        for name, ms in cli.items():
            print(f"  {name:<44}  {ms:9.1f} ms  {ms / ref_q:7.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
