"""Fixtures for the pod-attribution tests: an SR-IOV host's sysfs tree and a kubelet stand-in."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.fixtures import make_pci
from tests.owners.kubelet import FakeKubelet


@pytest.fixture
def host(tmp_path) -> str:
    root = str(tmp_path / "sys")
    make_pci.build(root)
    return root


@pytest.fixture
def kubelet():
    # a unix socket path must fit in 108 bytes: pytest's tmp_path may not
    where = tempfile.mkdtemp(prefix="xk", dir="/tmp")
    server = FakeKubelet(f"{where}/kubelet.sock").start()
    yield server
    server.stop()
    shutil.rmtree(where, ignore_errors=True)


class Monotonic:
    """Stands in for time.monotonic in the owner table, so the refresh period is exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()
