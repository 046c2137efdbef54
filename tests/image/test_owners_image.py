"""The agent image with pod attribution: its gRPC client (grpcio and protobuf, installed from PyPI in
the Dockerfile, with the libraries they load copied into the shell-free image) asks the kubelet
stand-in (tests/owners/kubelet.py, the real v1 protocol; no kubelet runs here) through its socket
directory mounted read-only, as the rendered DaemonSet mounts /var/lib/kubelet/pod-resources, and
labels the held devices of an SR-IOV host's sysfs tree. Opt-in, like every image test."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import pytest

from tests.fixtures import make_pci
from tests.image.test_images import AGENT_IMAGE, LABEL, podman
from tests.owners.kubelet import FakeKubelet

pytestmark = pytest.mark.skipif(
    os.environ.get("XTRACE_IMAGE_TESTS") != "1",
    reason="image tests are opt-in: `make image-test` builds the images with podman and runs them")

SOCKET_DIR = "/var/lib/kubelet/pod-resources"  # where the DaemonSet mounts it, and the agent's default


def test_agent_image_attributes_held_devices_through_the_mounted_socket(tmp_path):
    where = tempfile.mkdtemp(prefix="xk", dir="/tmp")
    kubelet = FakeKubelet(os.path.join(where, "kubelet.sock")).start()
    try:
        kubelet.set({("train", "job-0"): {"worker": {"nvidia.com/sriov_rdma_vf": [make_pci.VF_NETNS]}}})
        root = tmp_path / "sys"
        make_pci.build(str(root))
        out = podman("run", "--rm", "--network", "host", "--read-only", "--label", LABEL,
                     "--name", f"xtrace-owners-{uuid.uuid4().hex[:6]}",
                     "-v", f"{root}:/host/sys:ro", "-v", f"{where}:{SOCKET_DIR}:ro",
                     AGENT_IMAGE, "-m", "rdma", "--sysfs", "/host/sys", "--pod-attribution",
                     "--count", "1", "--interval", "0.1", "--output", "json", "--http-listen", "", timeout=120)
        assert out.returncode == 0, out.stderr
        held = {s["labels"]["device"]: s["labels"].get("pod") for s in json.loads(out.stdout)["samples"]
                if s["name"] == "xtrace_rdma_port_info"}
        assert held["mlx5_2"] == "job-0" and held["mlx5_0"] is None
        assert "Traceback" not in out.stderr and kubelet.calls >= 1
    finally:
        kubelet.stop()
        shutil.rmtree(where, ignore_errors=True)
