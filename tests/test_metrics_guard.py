"""httpAuth that cannot be had: one line and exit 1 (2 for a config mistake), before anything listens."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.rdma.util import FIXTURE
from xtrace_agent import servingtls

AGENT = str(pathlib.Path(sys.executable).parent / "xtrace-agent")


def _run(tmp_path, auth: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"mode": "rdma", "sysfs": FIXTURE, "httpListen": "127.0.0.1:0", "output": "none",
                                   "httpAuth": auth}))
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    return subprocess.run([AGENT, "--config", str(cfg), "--count", "1", "--interval", "0.1"], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def _pair(tmp_path, cert: bytes, key: bytes) -> dict:
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    return {"mode": "kubernetes", "certFile": str(tmp_path / "tls.crt"), "keyFile": str(tmp_path / "tls.key")}


@pytest.mark.parametrize("case, code, line", [
    ("outside a pod", 1, "httpAuth: kubernetes needs the API server (KUBERNETES_SERVICE_HOST)"),
    ("key of another certificate", 1, "are not a usable certificate and key"),
    ("no such file", 1, "httpAuth: cannot read /nonexistent/tls.crt: No such file or directory"),
    ("certificate without key", 2, "config: httpAuth: certFile and keyFile go together"),
    ("unknown mode", 2, "config: httpAuth.mode: must be one of 'none', 'kubernetes', got 'mtls'"),
])
def test_unusable_http_auth_is_one_line(tmp_path, case, code, line):
    cert, _ = servingtls.self_signed(["a"])
    _, other_key = servingtls.self_signed(["b"])
    auth = {
        "outside a pod": {"mode": "kubernetes"},
        "key of another certificate": _pair(tmp_path, cert, other_key),
        "no such file": {"mode": "kubernetes", "certFile": "/nonexistent/tls.crt", "keyFile": "/nonexistent/tls.key"},
        "certificate without key": {"mode": "kubernetes", "certFile": "/x"},
        "unknown mode": {"mode": "mtls"},
    }[case]
    r = _run(tmp_path, auth)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and line in lines[0], (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
