"""Cost of pod attribution: one owner-table refresh with 100 pods holding 64 VFs, and the rdma/nccl
interval with attribution on against off, in the same run on the same tree.

The node: 8 RoCE PFs with 8 RDMA VFs each (72 RDMA devices), its sysfs tree generated with the
links a real host has (tests/fixtures/make_pci.py). The kubelet is the tests' stand-in
(tests/owners/kubelet.py): a real gRPC server of the v1 protocol on a unix socket, so a refresh
pays the real List round trip and protobuf decoding, but not the kubelet's own work.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import median_ms, print_rows  # noqa: E402

from tests.fixtures import make_pci  # noqa: E402
from tests.owners.kubelet import FakeKubelet  # noqa: E402
from xtrace_agent.collectors.rdma import RdmaCollector  # noqa: E402
from xtrace_agent.config import AgentConfig  # noqa: E402
from xtrace_agent.health import Health  # noqa: E402
from xtrace_agent.owners.podresources import PodResourcesClient  # noqa: E402
from xtrace_agent.owners.table import REFRESH_SECONDS, OwnerTable  # noqa: E402
from xtrace_agent.ports import PortAccounting  # noqa: E402

PODS = 100
ROUNDS = 30
TARGET_REFRESH_MS = 50.0  # a tenth of the default 5 s interval's budget for the rdma source (20 ms x 2.5)
TARGET_RATIO = 1.5  # attribution may cost at most half an interval more


def allocations(vfs: list[str]) -> dict:
    """100 pods, the first 64 holding one VF each (in two containers for every eighth pod)."""
    out = {}
    for i in range(PODS):
        containers: dict = {"main": {}}
        if i < len(vfs):
            containers["main"] = {"nvidia.com/sriov_rdma_vf": [vfs[i]]}
            if i % 8 == 0:
                containers["sidecar"] = {"nvidia.com/sriov_rdma_vf": [vfs[i]]}
        out[("train", f"job-{i:03d}")] = containers
    return out


def intervals_ms(root: str, mode: str, owners: OwnerTable) -> tuple[float, float]:
    """Median interval (off, on): the two collectors take turns, so both see the same machine load."""
    pair = []
    for table in (None, owners):
        health = Health()
        source = RdmaCollector(AgentConfig(mode=mode, sysfs=root), health, owners=table)
        accounting = PortAccounting(health)
        source.start()

        def interval(source=source, accounting=accounting):  # source and accounting, as cli.run runs them
            now = time.time()
            return accounting.report(source.collect(now), now)

        interval()  # first interval: net device discovery, first owner refresh
        pair.append(interval)
    times: tuple[list, list] = ([], [])
    for _ in range(ROUNDS):
        for interval, out in zip(pair, times, strict=True):
            t = time.perf_counter()
            interval()
            out.append((time.perf_counter() - t) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="xb", dir="/tmp")  # short: a unix socket path fits in 108 bytes
    kubelet = FakeKubelet(os.path.join(tmp, "kubelet.sock")).start()
    rows = []
    try:
        root = os.path.join(tmp, "sys")
        vfs = make_pci.sriov_host(root, pfs=8, vfs=8)
        kubelet.set(allocations(vfs))
        client = PodResourcesClient(kubelet.socket_path)
        table = OwnerTable(root, client, period=1e9)  # refreshes only when told to
        table.refresh()
        assert len(table.by_rdma) == len(vfs), table.listing()[:3]
        list_ms = median_ms(client.list, ROUNDS, warmup=False)
        refresh_ms = median_ms(table.refresh, ROUNDS, warmup=False)
        for mode in ("rdma", "nccl"):
            off, on = intervals_ms(root, mode, table)
            ratio = on / off
            rows.append((f"{mode}: interval, 72 devices, attribution off", f"{off:.2f} ms", "-", True))
            rows.append((f"{mode}: interval, attribution on (no refresh due)", f"{on:.2f} ms",
                         f"x{ratio:.2f} of off (< x{TARGET_RATIO:g})", ratio < TARGET_RATIO))
        rows.append((f"owner refresh: {PODS} pods, {len(vfs)} VFs (List + sysfs map)", f"{refresh_ms:.2f} ms",
                     f"< {TARGET_REFRESH_MS:g} ms, x{refresh_ms / off:.2f} of an nccl interval",
                     refresh_ms < TARGET_REFRESH_MS))
        rows.append(("  of which the kubelet List round trip", f"{list_ms:.2f} ms", "-", True))
        rows.append((f"  per 5 s interval at one refresh per {REFRESH_SECONDS:g} s", f"{refresh_ms / 2:.2f} ms", "-",
                     True))
    finally:
        kubelet.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"node: 8 PFs x 8 VFs (72 RDMA devices, 1 port each); {PODS} pods; median of {ROUNDS} rounds")
    return print_rows(rows)


if __name__ == "__main__":
    sys.exit(main())
