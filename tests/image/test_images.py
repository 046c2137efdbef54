"""The built container images, run for real: the agent image on XDP against a veth test host, the
operator image rendering a sample monitor.

Opt-in: `make image-test` (tools/image_test.sh) installs podman, builds both Dockerfiles and runs
these with XTRACE_IMAGE_TESTS=1 and its podman configuration (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF) in the environment. Under `make test` they skip.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers.netns import VethPair, wait_for, xdp_prog

pytestmark = pytest.mark.skipif(
    os.environ.get("XTRACE_IMAGE_TESTS") != "1",
    reason="image tests are opt-in: `make image-test` builds the images with podman and runs them "
           "(sets XTRACE_IMAGE_TESTS=1)")

ROOT = Path(__file__).resolve().parents[2]
AGENT_IMAGE = os.environ.get("XTRACE_AGENT_IMAGE", "localhost/xtrace-agent:test")
OPERATOR_IMAGE = os.environ.get("XTRACE_OPERATOR_IMAGE", "localhost/xtrace-operator:test")
LABEL = os.environ.get("XTRACE_IMAGE_LABEL", "xtrace-image-test")
# BCC compiles inside the container on its first start: slower than on the host, never minutes
ATTACH_TIMEOUT = 120.0


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture
def image_host():
    """A veth test host named xtim*: tools/image_test.sh removes what an interrupted run leaves."""
    if os.geteuid() != 0:
        pytest.fail("image tests need root (XDP, network namespaces)", pytrace=False)
    # 198.18.251-254.0/24: outside the range the kernel tests' fixture uses, which may run meanwhile
    pair = VethPair(tag="im" + uuid.uuid4().hex[:4], n=random.randint(251, 254))
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


def samples(report: dict, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s["labels"].items())): s["value"] for s in report["samples"] if s["name"] == name}


def flow(dev: str, src: str, dst: str, sport: int, dport: int, proto: int) -> tuple:
    labels = {"interface": dev, "src_ip": src, "dst_ip": dst, "src_port": str(sport), "dst_port": str(dport),
              "protocol": str(proto), "traffic_type": "ethernet"}
    return tuple(sorted(labels.items()))


def run_agent(host: VethPair, *podman_args: str, v4_packets: int = 9, v6_packets: int = 4) -> list[dict]:
    """Run the agent image on host b's veth end for two 1 s reports while host a sends UDP; its reports."""
    name = f"xtrace-image-agent-{host.tag}"
    cmd = ["podman", "run", "--rm", "--name", name, "--label", LABEL, "--network", "host", *podman_args,
           AGENT_IMAGE, "-i", host.dev_b, "--count", "2", "--interval", "1", "--output", "json", "--http-listen", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        prog = wait_for(lambda: xdp_prog(host.dev_b) or proc.poll() is not None, ATTACH_TIMEOUT,
                        "the containerised agent to attach XDP")
        assert proc.poll() is None, f"agent container exited {proc.returncode}: {proc.stderr.read()}"
        assert prog["name"].startswith("xtrace_"), prog
        s4 = host.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
        s4.bind((host.ip4_a, 40101))
        for _ in range(v4_packets):
            s4.sendto(b"i" * 100, (host.ip4_b, 9999))
        s4.close()
        s6 = host.socket("a", socket.AF_INET6, socket.SOCK_DGRAM)
        s6.bind((host.ip6_a, 40102))
        for _ in range(v6_packets):
            s6.sendto(b"m" * 300, (host.ip6_b, 9998))
        s6.close()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            podman("rm", "-f", "-t", "0", name)
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    # --count exits 0 after detaching: nothing attached to either end, no container left
    assert xdp_prog(host.dev_b) is None
    assert xdp_prog(host.dev_a, host.ns_a) is None
    assert podman("ps", "-aq", "--filter", f"name=^{name}$").stdout.strip() == ""
    reports = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(reports) == 2, out
    packets = samples(reports[-1], "xtrace_network_packets_total")
    bytes_ = samples(reports[-1], "xtrace_network_bytes_total")
    udp4 = flow(host.dev_b, host.ip4_a, host.ip4_b, 40101, 9999, 17)
    udp6 = flow(host.dev_b, host.ip6_a, host.ip6_b, 40102, 9998, 17)
    assert (packets.get(udp4), bytes_.get(udp4)) == (v4_packets, v4_packets * (14 + 20 + 8 + 100)), sorted(packets)
    assert (packets.get(udp6), bytes_.get(udp6)) == (v6_packets, v6_packets * (14 + 40 + 8 + 300)), sorted(packets)
    iface = samples(reports[-1], "xtrace_interface_packets_total")[(("interface", host.dev_b),)]
    assert iface >= v4_packets + v6_packets
    return reports


def render_sample() -> list[dict]:
    """The objects the operator image renders for the xdp sample monitor."""
    sample = (ROOT / "deploy/manifests/samples/xdp.yaml").read_text()
    r = podman("run", "--rm", "-i", "--label", LABEL, "--network", "host", OPERATOR_IMAGE, "render", "-f", "-",
               input=sample, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def pod_as_podman_args(pod: dict, scratch: Path) -> list[str]:
    """podman flags for the agent container as a kubelet would run it: its securityContext and its
    hostPath/emptyDir mounts (hostPaths the kubelet would create go to `scratch` instead)."""
    container = pod["containers"][0]
    sc = container.get("securityContext", {})
    args = ["--privileged"] if sc.get("privileged") else []
    caps = sc.get("capabilities", {})
    args += [f"--cap-drop={c}" for c in caps.get("drop", [])] + [f"--cap-add={c}" for c in caps.get("add", [])]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # writable only where the pod mounts a volume
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        ro = ":ro" if m.get("readOnly") else ""
        if "emptyDir" in vol:
            args += ["--tmpfs", m["mountPath"]]
        elif "hostPath" in vol and vol["hostPath"].get("type") == "DirectoryOrCreate":
            (scratch / m["name"]).mkdir()
            args += ["-v", f"{scratch / m['name']}:{m['mountPath']}{ro}"]
        elif "hostPath" in vol:
            args += ["-v", f"{vol['hostPath']['path']}:{m['mountPath']}{ro}"]
    return args


def test_agent_image_privileged_counts_a_veth_flow_exactly_and_detaches(image_host: VethPair):
    # as on a node: host network, the host's kernel headers at the same paths (BCC compiles in the pod)
    run_agent(image_host, "--privileged", "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro")


def test_agent_image_runs_as_the_rendered_daemonset_runs_it(image_host: VethPair, tmp_path: Path):
    """Unprivileged, the capabilities and read-only root the operator asks for: still attaches and counts."""
    ds = next(d for d in render_sample() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    args = pod_as_podman_args(pod, tmp_path)
    assert "--privileged" not in args and "--read-only" in args, args
    run_agent(image_host, *args, v4_packets=3, v6_packets=2)


def test_operator_image_renders_the_sample_daemonset():
    docs = render_sample()
    daemonsets = [d for d in docs if d.get("kind") == "DaemonSet"]
    assert len(daemonsets) == 1, [d.get("kind") for d in docs]
    ds = daemonsets[0]
    assert (ds["apiVersion"], ds["metadata"]["name"], ds["metadata"]["namespace"]) == \
        ("apps/v1", "xtrace-uplinks", "xtrace-system")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    # the mounts the agent image test above relies on: the node's headers at the same paths
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for path in ("/lib/modules", "/usr/src"):
        assert mounts[path].get("readOnly") is True, path
    # the image runs unprivileged, as built
    user = podman("image", "inspect", "--format", "{{.Config.User}}", OPERATOR_IMAGE).stdout.strip()
    assert user == "65532:65532"


KUBECONFIG_NOWHERE = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def test_operator_image_run_has_its_dependencies_and_gives_up_in_one_line(tmp_path: Path):
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", "--entrypoint", "python3", OPERATOR_IMAGE,
               "-c", "import kopf, kubernetes, xtrace_operator.cli", timeout=120)
    assert r.returncode == 0, r.stderr
    # the real `run` path as the unprivileged image user: a bounded wait for the API, then exit 1
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG_NOWHERE)
    config.chmod(0o644)
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", "-v", f"{config}:/kube/config:ro",
               "-e", "KUBECONFIG=/kube/config", OPERATOR_IMAGE, "run", "--connect-timeout", "2", timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot reach the Kubernetes API at https://127.0.0.1:1" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
