"""The installed `xtrace-agent` in nccl and rdma mode on a captured bundle: the fixture sysfs tree beside
`--ethtool-dir` holding mlx5 dumps of its ports' netdevs. NIC series carry the port they belong to
(bond members for the bonded device), the config's extra interfaces and raw patterns take effect,
a dump that moves backwards (driver reload) does not make a series go backwards, `-l` lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.fixtures import make_sysfs
from tests.nic import dumps

BINARY = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")


def _bundle(tmp_path) -> tuple[str, str]:
    root = str(tmp_path / "sys")
    make_sysfs.build(root)
    net = os.path.join(root, "class", "net")
    os.makedirs(os.path.join(net, "bond0"))
    for member in ("ens2f0np0", "ens2f1np1", "ens1f0np0", "ib0", "eth9"):
        os.makedirs(os.path.join(net, member))
        with open(os.path.join(net, member, "carrier_changes"), "w") as f:
            f.write("4\n")
    for member in ("ens2f0np0", "ens2f1np1"):
        os.symlink(f"../{member}", os.path.join(net, "bond0", f"lower_{member}"))
    ethtool = str(tmp_path / "ethtool")
    os.makedirs(ethtool)
    for netdev in ("ens1f0np0", "ens2f0np0", "ens2f1np1", "eth9"):
        _dump(ethtool, netdev, {"rx_prio3_pause": 100, "rx_discards_phy": 7})
    return root, ethtool


def _dump(ethtool: str, netdev: str, values: dict) -> None:
    with open(os.path.join(ethtool, f"{netdev}.txt"), "w") as f:
        f.write(dumps.render(dumps.mlx5("6.8", channels=2, values=values)))


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if not os.path.exists(BINARY):
        pytest.skip(f"{BINARY} not installed (pip install -e .)")
    return subprocess.run([BINARY, *args, "--http-listen", ""], capture_output=True, text=True, timeout=timeout)


def _nic(doc: dict) -> dict[tuple, float]:
    return {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in doc["samples"]
            if s["name"].startswith("xtrace_nic_")}


@pytest.mark.parametrize("mode", ["nccl", "rdma"])
def test_nic_series_of_every_roce_port(tmp_path, mode):
    root, ethtool = _bundle(tmp_path)
    r = _run("-m", mode, "--sysfs", root, "--ethtool-dir", ethtool, "--count", "1", "--output", "json")
    assert r.returncode == 0, r.stderr
    got = _nic(json.loads(r.stdout))
    pause = {dict(k[1])["netdev"]: (dict(k[1]).get("device"), v) for k, v in got.items()
             if k[0] == "xtrace_nic_pause_frames_total" and dict(k[1])["priority"] == "3"
             and dict(k[1])["direction"] == "rx"}
    # mlx5_1's GIDs name ens1f0np0; mlx5_bond_0's name bond0, read as its two members; ib0 has no dump
    assert pause == {"ens1f0np0": ("mlx5_1", 100), "ens2f0np0": ("mlx5_bond_0", 100),
                     "ens2f1np1": ("mlx5_bond_0", 100)}
    carrier = {dict(k[1])["netdev"] for k in got if k[0] == "xtrace_nic_carrier_changes_total"}
    assert carrier == {"ens1f0np0", "ens2f0np0", "ens2f1np1"}
    assert not [k for k in got if k[0] == "xtrace_nic_stat"]  # the raw table is off by default


def test_config_interfaces_raw_patterns_and_reload(tmp_path):
    root, ethtool = _bundle(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"mode": "nccl", "sysfs": root, "ethtoolDir": ethtool, "interval": 0.3,
                                      "output": "json", "nic": {"interfaces": ["eth*"],
                                                                "rawInclude": ["rx_crc_errors_phy", "rx0_*"]}}))
    proc = subprocess.Popen([BINARY, "--config", str(config), "--count", "4", "--http-listen", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if len(lines) == 2:  # a driver reload: counters restart below what they were
                _dump(ethtool, "ens1f0np0", {"rx_prio3_pause": 5, "rx_discards_phy": 1})
                time.sleep(0.05)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        proc.kill()
    first = _nic(lines[0])
    raw = {dict(k[1])["stat"] for k in first if k[0] == "xtrace_nic_stat"}
    assert raw == {"rx_crc_errors_phy"}  # per-queue rx0_* not without rawPerQueue
    eth9 = {dict(k[1]).get("device") for k in first if dict(k[1])["netdev"] == "eth9"}
    assert eth9 == {None}  # a config interface carries no RDMA port
    key = ("xtrace_nic_pause_frames_total", (("device", "mlx5_1"), ("direction", "rx"), ("netdev", "ens1f0np0"),
                                             ("port", "1"), ("priority", "3")))
    assert [_nic(doc)[key] for doc in lines] == [100, 100, 105, 105]


def test_listing_and_bad_ethtool_dir(tmp_path):
    root, ethtool = _bundle(tmp_path)
    r = _run("-l", "--sysfs", root, "--ethtool-dir", ethtool)
    assert r.returncode == 0, r.stderr
    nic = r.stdout.split("NIC statistics (rdma/nccl):\n", 1)[1]
    assert "ens2f0np0 (mlx5_bond_0 port 1): 303 statistics, 45 named series" in nic
    assert "ib0 (mlx5_0 port 1): no statistics" in nic
    r = _run("-m", "nccl", "--sysfs", root, "--ethtool-dir", str(tmp_path / "nowhere"), "--count", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--ethtool-dir" in r.stderr


def test_without_pyroute2_the_rdma_counters_go_on(tmp_path):
    """An image or host without pyroute2 (a package shadowing it that fails to import, first on the
    path): one warning line, no NIC series, the RDMA port counters exactly as always."""
    root, _ = _bundle(tmp_path)
    shadow = tmp_path / "shadow" / "pyroute2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    r = subprocess.run([BINARY, "-m", "nccl", "--sysfs", root, "--count", "1", "--output", "json", "--http-listen", ""],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stderr.splitlines() if "NIC statistics off" in line]) == 1
    assert "pyroute2 cannot be imported" in r.stderr and "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert not _nic(doc) and any(s["name"] == "xtrace_rdma_port_transmit_bytes_total" for s in doc["samples"])
