"""Fixtures for the operator's own tests: the samples and the CRD as files.

Everything that needs an API server runs against a real one (tests/k8s/); these tests need none.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "crds" / "xtrace.io_xtracemonitors.yaml"
SAMPLES = sorted((ROOT / "deploy" / "manifests" / "samples").glob("*.yaml"))


def load_sample(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request) -> dict[str, Any]:
    return load_sample(request.param)
