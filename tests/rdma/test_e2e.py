"""End to end: the installed `xtrace-agent` binary on the committed fixture tree, against a golden file.

Regenerate the golden file after an intended change:
    XTRACE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/rdma/test_e2e.py
"""

import json
import os
import subprocess
import sys

import pytest

from tests.rdma.util import FIXTURE, FIXTURES

BINARY = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")
GOLDEN = os.path.join(FIXTURES, "golden", "nccl.json")


def _run(*args: str) -> subprocess.CompletedProcess:
    if not os.path.exists(BINARY):
        pytest.skip(f"{BINARY} not installed (pip install -e .)")
    return subprocess.run([BINARY, *args, "--http-listen", ""], capture_output=True, text=True, timeout=30)


def normalise(line: str) -> dict:
    """The report's RDMA data, without what changes from run to run: its timestamp, and the agent's
    self-metrics that travel with it (durations, wrap/reset counters)."""
    doc = json.loads(line)
    doc["timestamp"] = 0
    doc["samples"] = [s for s in doc["samples"] if s["name"].startswith("xtrace_rdma_") and s["labels"]]
    return doc


def test_nccl_json_matches_golden():
    out = _run("-m", "nccl", "--sysfs", FIXTURE, "--count", "1", "--interval", "0.1", "--output", "json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    got = normalise(lines[0])
    if os.environ.get("XTRACE_UPDATE_GOLDEN") == "1":
        with open(GOLDEN, "w") as f:  # one sample per line: reviewable diffs
            f.write('{"timestamp": 0, "samples": [\n')
            f.write(",\n".join(json.dumps(s) for s in got["samples"]))
            f.write("\n]}\n")
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert got == golden
    # and the golden file itself says what the fixture holds (not just what the code printed once)
    values = {(s["name"], s["labels"]["device"] + "/" + s["labels"]["port"], s["labels"].get("counter")): s["value"]
              for s in golden["samples"]}
    assert values[("xtrace_rdma_port_transmit_bytes_total", "mlx5_0/1", None)] == 250_000_000_000 * 4
    assert values[("xtrace_rdma_port_rate_bytes_per_second", "mlx5_1/1", None)] == 200e9 / 8
    assert values[("xtrace_rdma_hw_counter_total", "mlx5_bond_0/1", "np_cnp_sent")] == 5
    assert values[("xtrace_rdma_counter_saturated", "mlx4_0/1", "symbol_error")] == 1
    assert ("xtrace_rdma_port_counter_total", "mlx4_0/1", "symbol_error") not in values
    assert ("xtrace_rdma_port_counter_total", "cxgb4_0/1", "port_xmit_data") not in values


def test_text_output_one_line_per_port():
    out = _run("-m", "rdma", "--sysfs", FIXTURE, "--count", "1", "--interval", "0.1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6
    assert ("mlx5_0 port=1 netdev=ib0 link_layer=InfiniBand state=ACTIVE rate=100Gb/sec tx_bytes=1000000000000 "
            "rx_bytes=500000000000 tx_packets=900000000 rx_packets=800000000") in lines


def test_unknown_device_exits_2_with_one_line():
    out = _run("-m", "rdma", "--sysfs", FIXTURE, "-d", "mlx5_7", "--count", "1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "xtrace-agent: error: unknown RDMA device mlx5_7 (found: cxgb4_0, mlx4_0, mlx5_0, mlx5_1, mlx5_bond_0)")
    assert "Traceback" not in out.stderr


def test_list_shows_rdma_ports():
    out = _run("-l", "--sysfs", FIXTURE)
    assert out.returncode == 0, out.stderr
    assert "mlx5_bond_0" in out.stdout and "netdev=bond0" in out.stdout
