"""Shared test policy.

Kernel tests need root, BPF and XDP. Where those are missing they skip, except under
XTRACE_REQUIRE_BPF=1 (what CI sets), where a missing capability is a failure: kernel tests
must run in CI, never silently skip.
"""

import os

import pytest

pytest_plugins = ["tests.helpers.vm", "tests.helpers.vmcluster", "tests.helpers.netns", "tests.helpers.bpf"]

REQUIRE_BPF = os.environ.get("XTRACE_REQUIRE_BPF") == "1"

# Image tests build with podman (minutes, apt and a debootstrap): only `make image-test` runs them.
collect_ignore = [] if os.environ.get("XTRACE_IMAGE_TESTS") == "1" else ["image"]


def need(condition: bool, why: str) -> None:
    """Skip (or fail, under XTRACE_REQUIRE_BPF=1) when a kernel prerequisite is missing."""
    if condition:
        return
    if REQUIRE_BPF:
        pytest.fail(f"XTRACE_REQUIRE_BPF=1 but {why}", pytrace=False)
    pytest.skip(why)
