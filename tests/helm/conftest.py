"""Helm built from its Go module (tools/helm/build.sh, cached) and a control plane of this folder's own.

The control plane is tests/k8s/conftest.py's, started again for this folder: `helm install` must find
a cluster where the kustomize install of tests/k8s has not already created the same objects (Helm
refuses to adopt objects it did not make). Without Go or the built binaries the tests skip, except
under XTRACE_REQUIRE_CLUSTER=1, where they fail.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import REQUIRE, ROOT, Cluster, cluster  # noqa: F401 (a fixture, used by the tests)

CHART = ROOT / "deploy" / "helm" / "xtrace"


def _built(script: str, what: str) -> str:
    if shutil.which("go") is None and not REQUIRE:
        pytest.skip(f"no Go toolchain to build {what}")
    proc = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if REQUIRE:
            pytest.fail(f"XTRACE_REQUIRE_CLUSTER=1 but {what} did not build: {why}", pytrace=False)
        pytest.skip(f"{what} did not build: {why}")
    return proc.stdout.strip().splitlines()[-1]


class Helm:
    """The helm binary with its cache, config and data under a temp dir (nothing of the user's)."""

    def __init__(self, binary: str, home: pathlib.Path):
        self.binary = binary
        self.env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    def __call__(self, *args: str, check: bool = True, kubeconfig: str | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**self.env, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def template(self, *args: str) -> list[dict[str, Any]]:
        out = self("template", "xtrace", str(CHART), "--namespace", "xtrace-system", *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    return Helm(_built("tools/helm/build.sh", "helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    """The control plane's kubectl (its built-in kustomize renders deploy/manifests)."""
    return str(pathlib.Path(_built("tools/cluster/build.sh", "the control plane")) / "kubectl")


def kustomize(kubectl: str, path: pathlib.Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def as_json(objs: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(o) for o in objs)
