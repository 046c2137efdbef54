"""The images through a real registry: `make push` into the CNCF distribution registry (Debian's
`docker-registry`) on 127.0.0.1, both images pulled back by digest into an empty podman storage (so
every byte comes from the registry), their OCI labels read, and the pulled agent image run through the
README's single-host check (tests/image/test_images.py) on a veth test host.

Opt-in with the other image tests (`make image-test`, which exports the podman configuration and the
build flags this host needs as XTRACE_BUILD_FLAGS / XTRACE_BUILD_MOUNTS).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.netns import wait_for
from tests.image import test_images
from tests.image.test_images import image_host  # noqa: F401, F811 (a fixture)

pytestmark = pytest.mark.skipif(os.environ.get("XTRACE_IMAGE_TESTS") != "1", reason="image tests are opt-in")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REGISTRY_BIN = "/usr/bin/docker-registry"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.index.v1+json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """`docker-registry serve` with a config of its own: 127.0.0.1 only, storage in a temp dir, no auth."""
    missing = [what for what, there in (("podman", shutil.which("podman")), ("docker-registry", os.path.exists(REGISTRY_BIN)))
               if not there]
    if missing:  # opted in (XTRACE_IMAGE_TESTS=1): a missing part fails, never skips
        pytest.fail(f"{' and '.join(missing)} not installed: `make image-test` (tools/image_test.sh) installs "
                    "podman, runc, debootstrap and docker-registry", pytrace=False)
    tmp = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (tmp / "config.yml").write_text(json.dumps({  # JSON is YAML
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = open(tmp / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(tmp / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200
        except OSError:
            return proc.poll() is not None
    try:
        wait_for(up, 30, "the registry's /v2/")
        assert proc.poll() is None, (tmp / "registry.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _digest(registry: str, repo: str, tag: str) -> str:
    """The manifest digest as the registry states it (its Docker-Content-Digest header)."""
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def pushed(registry: str) -> dict[str, str]:
    """`make push REGISTRY=127.0.0.1:PORT/xtrace`, as a user runs it; {image: pulled-by-digest reference}."""
    target = f"{registry}/xtrace"
    flags = " ".join(filter(None, [os.environ.get("XTRACE_BUILD_FLAGS", ""), os.environ.get("XTRACE_BUILD_MOUNTS", "")]))
    r = subprocess.run(["make", "-s", "--no-print-directory", "push", f"REGISTRY={target}", "ENGINE=podman",
                        f"BUILD_FLAGS={flags}", "PUSH_FLAGS=--tls-verify=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    refs = {}
    for image in ("xtrace-agent", "xtrace-operator"):
        digest = _digest(registry, f"xtrace/{image}", PROJECT["version"])
        # what make push printed is what the registry holds
        assert f"pushed {target}/{image}@{digest}" in r.stdout, r.stdout
        refs[image] = f"{target}/{image}@{digest}"
    return refs


@pytest.fixture(scope="module")
def fresh_storage(tmp_path_factory):
    """An empty podman storage: a pull into it fetches every layer from the registry."""
    tmp = tmp_path_factory.mktemp("pulled")
    conf = tmp / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp}/root"\nrunroot = "{tmp}/run"\n')
    before = os.environ.get("CONTAINERS_STORAGE_CONF")
    os.environ["CONTAINERS_STORAGE_CONF"] = str(conf)
    try:
        yield tmp
    finally:
        subprocess.run(["podman", "rmi", "-a", "-f"], capture_output=True)
        if before is None:
            os.environ.pop("CONTAINERS_STORAGE_CONF")
        else:
            os.environ["CONTAINERS_STORAGE_CONF"] = before
        shutil.rmtree(tmp, ignore_errors=True)


def _labels(ref: str) -> dict[str, str]:
    r = test_images.podman("image", "inspect", "--format", "{{json .Labels}}", ref)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_pulled_by_digest_with_the_oci_labels(pushed: dict[str, str], fresh_storage: Path):
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert test_images.podman("images", "-q").stdout.strip() == ""  # nothing local to fall back on
    for image, ref in pushed.items():
        r = test_images.podman("pull", "--tls-verify=false", ref, timeout=600)
        assert r.returncode == 0, r.stderr
        # the pulled image is the one the registry named: podman lists it under that digest
        digests = test_images.podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip()
        assert digests == ref.rsplit("@", 1)[1], (digests, ref)
        labels = _labels(ref)
        assert {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()
                if k.startswith("org.opencontainers.image.")} == {
            "title": image, "version": PROJECT["version"], "revision": revision,
            "source": PROJECT["urls"]["Source"], "licenses": PROJECT.get("license") or "NOASSERTION"}


def test_the_pulled_agent_passes_the_single_host_check(pushed: dict[str, str], fresh_storage: Path,
                                                       image_host, victoria_metrics, monkeypatch):  # noqa: F811
    """tests/image/test_images.py's README single-host test, run on the image pulled by digest."""
    if test_images.podman("image", "exists", pushed["xtrace-agent"]).returncode != 0:
        assert test_images.podman("pull", "--tls-verify=false", pushed["xtrace-agent"], timeout=600).returncode == 0
    monkeypatch.setattr(test_images, "AGENT_IMAGE", pushed["xtrace-agent"])
    test_images.test_readme_single_host_line_pushes_exact_counts_and_refuses_a_second_agent(
        image_host, victoria_metrics)
