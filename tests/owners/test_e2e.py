"""The installed `xtrace-agent` with pod attribution, end to end: its JSON report and `-l`, against an
SR-IOV host's sysfs tree and the kubelet stand-in (tests/owners/kubelet.py) over its unix socket."""

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures import make_pci
from tests.owners.test_table import VF, allocations

BINARY = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")


def _run(*args: str) -> subprocess.CompletedProcess:
    if not os.path.exists(BINARY):
        pytest.skip(f"{BINARY} not installed (pip install -e .)")
    return subprocess.run([BINARY, *args, "--http-listen", ""], capture_output=True, text=True, timeout=60)


def test_json_report_labels_held_devices(host, kubelet):
    kubelet.set(allocations())
    out = _run("-m", "nccl", "--sysfs", host, "--pod-attribution", "--pod-resources-socket", kubelet.socket_path,
               "--count", "1", "--interval", "0.1", "--output", "json")
    assert out.returncode == 0, out.stderr
    samples = json.loads(out.stdout)["samples"]
    rdma = [s for s in samples if s["name"].startswith("xtrace_rdma_") and "device" in s["labels"]]
    held = {s["labels"]["device"]: s["labels"].get("pod") for s in rdma}
    assert held == {"mlx5_0": None, "mlx5_1": "big", "mlx5_2": "job-0", "mlx5_3": None, "mlx5_4": None,
                    "mlx5_5": "sf"}
    assert all(s["labels"]["resource"] == VF for s in rdma if s["labels"]["device"] == "mlx5_2")
    # each problem once on stderr: the exclusive VF, the vfio VF, two GPUs
    assert out.stderr.count("exclusive RDMA namespace mode") == 1
    assert "Traceback" not in out.stderr


def test_text_line_names_the_pod(host, kubelet):
    kubelet.set(allocations())
    out = _run("-m", "rdma", "--sysfs", host, "--pod-attribution", "--pod-resources-socket", kubelet.socket_path,
               "--count", "1", "--interval", "0.1")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert " pod=train/job-0 " in lines["mlx5_2"] and "pod=" not in lines["mlx5_0"]


def test_list_shows_owners_and_the_exclusive_device(host, kubelet):
    kubelet.set(allocations())
    out = _run("-l", "--sysfs", host, "--pod-attribution", "--pod-resources-socket", kubelet.socket_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "RDMA device owners (kubelet pod-resources" in text
    assert f"{make_pci.VF_EXCLUSIVE} ({VF}): device held by pod train/job-1 in exclusive RDMA namespace mode: " \
           "not readable from the host" in text
    assert "pod=train/job-0 container=worker" in text


def test_no_kubelet_is_one_line_and_the_report_goes_on(host, tmp_path):
    out = _run("-m", "rdma", "--sysfs", host, "--pod-attribution", "--pod-resources-socket", str(tmp_path / "none"),
               "--count", "2", "--interval", "0.1", "--output", "json")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no kubelet pod-resources socket") == 1
    assert len(out.stdout.splitlines()) == 2
    assert all("pod" not in s["labels"] for line in out.stdout.splitlines() for s in json.loads(line)["samples"])


def test_attribution_in_xdp_mode_is_a_usage_error(tmp_path):
    out = _run("-m", "xdp", "-i", "lo", "--pod-attribution", "--count", "1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("xtrace-agent: error: pod attribution labels RDMA devices")
    config = tmp_path / "agent.yaml"
    config.write_text("mode: xdp\ninterfaces: [lo]\nrdma: {podAttribution: true}\n")
    out = _run("--config", str(config))
    assert out.returncode == 2 and "rdma.podAttribution" in out.stderr and "Traceback" not in out.stderr
