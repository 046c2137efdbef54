"""One project version everywhere an image is named: pyproject.toml's (what `make images` tags), the
agent package's, the kustomization's operator tag, the operator's and the CRD's default agent image
and the README's commands. Part of `make test` (no images needed): a version bump that misses one
fails here, not on a cluster pulling a tag nobody pushed."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

import xtrace_agent
from xtrace_operator import model

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
REGISTRY = "ghcr.io/xtrace-io"


def test_the_package_and_the_makefile_tag_the_pyproject_version():
    assert xtrace_agent.__version__ == VERSION
    r = subprocess.run(["make", "-s", "--no-print-directory", "-n", "images", "ENGINE=podman"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    tags = re.findall(r"-t (\S+)", r.stdout)
    assert tags == [f"{REGISTRY}/xtrace-agent:{VERSION}", f"{REGISTRY}/xtrace-operator:{VERSION}"], r.stdout
    assert r.stdout.count(f"--build-arg VERSION={VERSION}") == 2, r.stdout


def test_kustomization_operator_and_crd_defaults_follow_the_version():
    kustomization = yaml.safe_load((ROOT / "deploy/manifests/kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": f"{REGISTRY}/xtrace-operator",
                                        "newName": f"{REGISTRY}/xtrace-operator", "newTag": VERSION}]
    assert model.DEFAULT_IMAGE == f"{REGISTRY}/xtrace-agent:{VERSION}"
    crd = (ROOT / "deploy/crds/xtrace.io_xtracemonitors.yaml").read_text()
    assert re.findall(r"default: (\S*xtrace-agent:\S+)", crd) == [model.DEFAULT_IMAGE]


def test_the_docs_and_manifests_name_the_current_images():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*.yaml")]:
        named = set(re.findall(r"xtrace-(?:agent|operator):(\d[\w.\-]*)", path.read_text()))
        assert named <= {VERSION}, (path, named)
    assert f"ghcr.io/xtrace-io/xtrace-agent:{VERSION}" in (ROOT / "README.md").read_text()  # the single-host line


def test_every_image_build_carries_the_oci_labels_and_push_prints_digests():
    """What tests/image/test_registry.py checks on pushed images, checked on the recipe where no engine runs:
    both builds pass the four label values, both Dockerfiles turn them into labels, push names each digest."""
    r = subprocess.run(["make", "-s", "--no-print-directory", "-n", "push", "ENGINE=podman",
                        "REGISTRY=127.0.0.1:5000/xtrace"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args = {"VERSION": VERSION, "REVISION": revision, "SOURCE": project["urls"]["Source"],
            "LICENSES": project.get("license") or "NOASSERTION"}
    builds = [line for line in r.stdout.splitlines() if " build " in line]
    assert len(builds) == 2, r.stdout
    for line in builds:
        for k, v in args.items():
            assert f"--build-arg {k}={v}" in line, (k, line)
    assert "--digestfile build/$image.digest" in r.stdout and "pushed 127.0.0.1:5000/xtrace/$image@" in r.stdout
    for dockerfile in ("Dockerfile.agent", "Dockerfile.operator"):
        text = (ROOT / dockerfile).read_text()
        for k, label in (("VERSION", "version"), ("REVISION", "revision"), ("SOURCE", "source"),
                         ("LICENSES", "licenses")):
            assert f"ARG {k}" in text and f'org.opencontainers.image.{label}="${k}"' in text, (dockerfile, k)
