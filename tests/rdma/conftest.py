"""Fixtures for the RDMA tests: a fresh fixture sysfs tree per test (tests mutate it) and a fake clock."""

from __future__ import annotations

import pytest

from tests.fixtures import make_sysfs


@pytest.fixture
def tree(tmp_path) -> str:
    """A writable copy of the fixture node (built by make_sysfs, as the committed tree is)."""
    root = str(tmp_path / "sys")
    make_sysfs.build(root)
    return root


class FakeClock:
    """Stands in for time.time in port readings, so per-second rates are exact in tests."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
