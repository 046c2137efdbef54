"""The built container images, run for real: the agent image on XDP against a veth test host (with
the host's kernel headers, without any, as the DaemonSet runs it, and as the README's single-host
`podman run` line runs it, pushing into a real VictoriaMetrics), the operator image rendering a
sample monitor and giving up cleanly with a read-only root; their sizes.

Opt-in: `make image-test` (tools/image_test.sh) installs podman, builds both Dockerfiles and runs
these with XTRACE_IMAGE_TESTS=1 and its podman configuration (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF) in the environment. Under `make test` they skip.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers.netns import VethPair, _free_subnet, readyz, wait_for, xdp_prog
from tests.helpers.vm import VictoriaMetrics

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
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# the targets, uncompressed as podman counts them (MB = 10^6 bytes)
MAX_AGENT_MB, MAX_OPERATOR_MB = 400, 200


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture
def image_host():
    """A veth test host named xtim*: tools/image_test.sh removes what an interrupted run leaves."""
    if os.geteuid() != 0:
        pytest.fail("image tests need root (XDP, network namespaces)", pytrace=False)
    pair = VethPair(tag="im" + uuid.uuid4().hex[:4], n=_free_subnet())
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


V4 = (40101, 9999, 100)  # source port, destination port, payload bytes of the test host's UDP datagrams
V6 = (40102, 9998, 300)


def send(host: VethPair, v4_packets: int, v6_packets: int) -> None:
    """UDP from test host a to b's veth end (where the agent watches), over IPv4 and IPv6."""
    for family, src, dst, (sport, dport, size), count in (
            (socket.AF_INET, host.ip4_a, host.ip4_b, V4, v4_packets),
            (socket.AF_INET6, host.ip6_a, host.ip6_b, V6, v6_packets)):
        s = host.socket("a", family, socket.SOCK_DGRAM)
        s.bind((src, sport))
        for _ in range(count):
            s.sendto(b"x" * size, (dst, dport))
        s.close()


def expected(host: VethPair, v4_packets: int, v6_packets: int) -> dict[tuple, tuple[int, int]]:
    """{flow labels: (packets, bytes)} the agent must report for send(): the frame's length, Ethernet header on."""
    return {flow(host.dev_b, host.ip4_a, host.ip4_b, V4[0], V4[1], 17): (v4_packets, v4_packets * (14 + 20 + 8 + V4[2])),
            flow(host.dev_b, host.ip6_a, host.ip6_b, V6[0], V6[1], 17): (v6_packets, v6_packets * (14 + 40 + 8 + V6[2]))}


def samples(report: dict, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s["labels"].items())): s["value"] for s in report["samples"] if s["name"] == name}


def flow(dev: str, src: str, dst: str, sport: int, dport: int, proto: int) -> tuple:
    labels = {"interface": dev, "src_ip": src, "dst_ip": dst, "src_port": str(sport), "dst_port": str(dport),
              "protocol": str(proto), "traffic_type": "ethernet"}
    return tuple(sorted(labels.items()))


def headers_line(*podman_args: str) -> str:
    """What `xtrace-agent -l` in the image, run with these flags, says about the kernel headers."""
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", *podman_args, AGENT_IMAGE, "-l", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return lines[lines.index("Kernel headers (XDP compile):") + 1].strip()


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
        send(host, v4_packets, v6_packets)
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
    for key, want in expected(host, v4_packets, v6_packets).items():
        assert (packets.get(key), bytes_.get(key)) == want, sorted(packets)
    iface = samples(reports[-1], "xtrace_interface_packets_total")[(("interface", host.dev_b),)]
    assert iface >= v4_packets + v6_packets
    return reports


def render_sample(*podman_args: str) -> list[dict]:
    """The objects the operator image renders for the xdp sample monitor."""
    sample = (ROOT / "deploy/manifests/samples/xdp.yaml").read_text()
    r = podman("run", "--rm", "-i", "--label", LABEL, "--network", "host", *podman_args, OPERATOR_IMAGE,
               "render", "-f", "-", input=sample, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


HOST_HEADERS = ("/lib/modules", "/usr/src")


def pod_as_podman_args(pod: dict, scratch: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """podman flags for the agent container as a kubelet would run it: its securityContext and its
    hostPath/emptyDir mounts (hostPaths the kubelet would create go to `scratch` instead; mounts at
    the paths in `skip` are left out, as on a node that has nothing there)."""
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
        if m["mountPath"] in skip:
            continue
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


def image_mb(image: str) -> float:
    r = podman("image", "inspect", "--format", "{{.Size}}", image)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip()) / 1e6


def test_images_are_small_versioned_and_shell_free():
    """The sizes the README reports, as a bound; the project version on the images; no shell in either."""
    agent, operator = image_mb(AGENT_IMAGE), image_mb(OPERATOR_IMAGE)
    print(f"\nimage sizes: agent {agent:.0f} MB, operator {operator:.0f} MB")
    assert agent <= MAX_AGENT_MB and operator <= MAX_OPERATOR_MB, (agent, operator)
    for image in (AGENT_IMAGE, OPERATOR_IMAGE):
        label = podman("image", "inspect", "--format", '{{index .Labels "org.opencontainers.image.version"}}', image)
        assert label.stdout.strip() == VERSION, (image, label.stdout)
        r = podman("run", "--rm", "--label", LABEL, "--network", "host", "--entrypoint", "/usr/bin/python3", image,
                   "-c", "import os, shutil; print([p for p in ('/bin/sh', '/usr/bin/sh', '/bin/bash') "
                   "if os.path.lexists(p)], shutil.which('apt-get'), shutil.which('dpkg'))", timeout=120)
        assert (r.returncode, r.stdout.strip()) == (0, "[] None None"), (image, r.stdout, r.stderr)


def test_agent_image_privileged_with_the_host_headers_counts_exactly_and_detaches(image_host: VethPair):
    # as on a node whose headers are mounted: the host's own tree wins over the image's fallback,
    # the running kernel's own build tree when the host has one, else the closest under /usr/src
    # (the choice itself: tests/test_headers.py::test_mounted_host_headers_the_running_kernels_own_first)
    args = ["--privileged", "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro"]
    own = f"/lib/modules/{os.uname().release}/build"
    expected = f"from the host's {own} " if Path(own).is_dir() else "from the host's /usr/src/"
    assert expected in headers_line(*args)
    run_agent(image_host, *args)


def test_agent_image_without_host_headers_runs_as_the_rendered_daemonset_runs_it(image_host: VethPair,
                                                                                 tmp_path: Path):
    """A node with no /lib/modules and no /usr/src (COS, Bottlerocket, Talos...): unprivileged, with
    the capabilities and read-only root the operator asks for, the image's fallback headers compile."""
    ds = next(d for d in render_sample() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    args = pod_as_podman_args(pod, tmp_path, skip=HOST_HEADERS)
    assert "--privileged" not in args and "--read-only" in args, args
    assert not any(path in arg for arg in args for path in HOST_HEADERS), args
    line = headers_line(*args)
    assert line.startswith(f"{fallback_release()} from the image's fallback /usr/share/xtrace/kernel-headers/"), line
    run_agent(image_host, *args, v4_packets=3, v6_packets=2)


def fallback_release() -> str:
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", "--entrypoint", "/usr/bin/python3", AGENT_IMAGE,
               "-c", "import os; print(*os.listdir('/usr/share/xtrace/kernel-headers'))", timeout=120)
    releases = r.stdout.split()
    assert r.returncode == 0 and len(releases) == 1, (r.stdout, r.stderr)
    return releases[0]


def readme_single_host_line() -> list[str]:
    """The README's single-host `podman run` line, as a shell would split it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A single host"):]
    m = re.search(r"```sh\n(podman run .*?)\n```", section, re.S)
    assert m, "README: no podman run block under '## A single host'"
    return shlex.split(m.group(1).replace("\\\n", " "))


def as_tested(line: list[str], name: str, dev: str, write_url: str) -> list[str]:
    """The README line with this test's container name, interface, VictoriaMetrics and image; nothing else changes."""
    out = list(line)
    out[out.index("--name") + 1] = name
    for i, token in enumerate(out):
        if token.startswith("NETWORK_INTERFACE="):
            out[i] = f"NETWORK_INTERFACE={dev}"
        elif token.startswith("VICTORIAMETRICS_REMOTE_WRITE="):
            out[i] = f"VICTORIAMETRICS_REMOTE_WRITE={write_url}"
    assert out[-1] == f"ghcr.io/xtrace-io/xtrace-agent:{VERSION}", out[-1]
    out[-1] = AGENT_IMAGE
    return [*out[:2], "--label", LABEL, *out[2:]]


def test_readme_single_host_line_pushes_exact_counts_and_refuses_a_second_agent(
        image_host: VethPair, victoria_metrics: VictoriaMetrics):
    """The README's line as written (least capabilities, no --privileged, environment only), on a
    test veth, pushing into a local VictoriaMetrics; a second container on the same interface exits
    1 naming the interface and the first agent's pid, and the first keeps counting exactly."""
    line = readme_single_host_line()
    assert line[:2] == ["podman", "run"] and "--privileged" not in line and "-d" in line, line
    assert {"NETWORK_INTERFACE", "VICTORIAMETRICS_ENABLED", "VICTORIAMETRICS_REMOTE_WRITE"} <= \
        {t.split("=", 1)[0] for t in line}, line
    first, second = f"xtrace-image-single-{image_host.tag}", f"xtrace-image-second-{image_host.tag}"
    try:
        r = subprocess.run(as_tested(line, first, image_host.dev_b, victoria_metrics.write_url),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: xdp_prog(image_host.dev_b) or podman("ps", "-q", "--filter", f"name=^{first}$").stdout == "",
                 ATTACH_TIMEOUT, "the single-host agent to attach XDP")
        assert xdp_prog(image_host.dev_b), podman("logs", first).stderr
        # before its first report (one 5 s interval), /readyz names the kernel headers it compiled on
        status, body = readyz(9435)  # the agent's default port: the line leaves it as it is
        assert status == 503 and f"(compiling against kernel headers {fallback_release()} from the image's " \
            "fallback" in body, (status, body)
        # two agents, one interface: the second is refused while the first lives (its /metrics
        # elsewhere, or it would stop at the first one's port before it reaches the interface)
        r = subprocess.run([*as_tested(line, second, image_host.dev_b, victoria_metrics.write_url),
                            "--http-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        status = podman("wait", second, timeout=ATTACH_TIMEOUT).stdout.strip()
        err = podman("logs", second).stderr.strip().splitlines()
        assert status == "1", (status, err)
        assert re.search(rf"{image_host.dev_b} is watched by another XTrace agent \(pid \d+", err[-1]), err
        send(image_host, 7, 3)
        # SIGTERM: one last collection, pushed before the agent detaches and exits 0
        assert podman("stop", "-t", "60", first, timeout=90).returncode == 0
        assert podman("wait", first).stdout.strip() in ("0", "")
        assert xdp_prog(image_host.dev_b) is None
    finally:
        podman("rm", "-f", "-t", "0", first, second)
    want = {}
    for key, (packets, bytes_) in expected(image_host, 7, 3).items():
        want[("xtrace_network_packets_total", *key)] = packets
        want[("xtrace_network_bytes_total", *key)] = bytes_
    match = f'{{__name__=~"xtrace_network_(packets|bytes)_total",interface="{image_host.dev_b}",protocol="17"}}'

    def pushed() -> dict[tuple, float]:  # the node label is the host's name: not this test's business
        return {(name, *(kv for kv in labels if kv[0] != "node")): value
                for (name, *labels), value in victoria_metrics.latest(match).items()}

    # ingestion is asynchronous: poll until the flows arrive, then they must be exact
    wait_for(lambda: len(pushed()) >= len(want), 15, "the pushed flows in VictoriaMetrics")
    assert pushed() == want


def test_operator_image_renders_the_sample_daemonset_with_a_read_only_root():
    docs = render_sample("--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL")
    daemonsets = [d for d in docs if d.get("kind") == "DaemonSet"]
    assert len(daemonsets) == 1, [d.get("kind") for d in docs]
    ds = daemonsets[0]
    assert (ds["apiVersion"], ds["metadata"]["name"], ds["metadata"]["namespace"]) == \
        ("apps/v1", "xtrace-uplinks", "xtrace-system")
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
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
    locked = ["--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt", "no-new-privileges"]
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", *locked, "--entrypoint", "/usr/bin/python3",
               OPERATOR_IMAGE, "-c", "import kopf, kubernetes, xtrace_operator.cli", timeout=120)
    assert r.returncode == 0, r.stderr
    # the real `run` path as the unprivileged image user, root filesystem read-only: a bounded
    # wait for the API, then exit 1
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG_NOWHERE)
    config.chmod(0o644)
    r = podman("run", "--rm", "--label", LABEL, "--network", "host", *locked, "-v", f"{config}:/kube/config:ro",
               "-e", "KUBECONFIG=/kube/config", OPERATOR_IMAGE, "run", "--connect-timeout", "2", timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot reach the Kubernetes API at https://127.0.0.1:1" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
