"""The installed `xtrace-operator` command as a deployment runs it: a real process, found by its entry point.

The run against a real API server, with the ServiceAccount deploy/manifests ships, and its SIGTERM, is
tests/k8s/test_operator.py; these cover what happens without any API server, and `render`.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess

import pytest
import yaml

from tests.operator.conftest import ROOT, SAMPLES

CLI = str(ROOT / ".venv" / "bin" / "xtrace-operator")

def _kubeconfig(path: pathlib.Path, server: str) -> str:
    """A kubeconfig as `kubectl config` would write it for a plain-HTTP, unauthenticated server."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    return str(path)


def _env(kubeconfig: str | None, home: pathlib.Path) -> dict[str, str]:
    """The environment of a process outside any pod: no in-cluster variables, only this kubeconfig."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_") and k != "KUBECONFIG"}
    env["HOME"] = str(home)  # so ~/.kube/config cannot stand in for the file the test chose
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return env


@pytest.mark.parametrize("case", ["closed-port", "no-config"])
async def test_run_without_a_cluster_exits_with_one_line(tmp_path: pathlib.Path, case: str):
    """Without a reachable API the operator gives up after its bounded wait: exit 1, a line or two, no traceback.

    127.0.0.1:1 stands in for an API server that is down or unroutable at startup; the pod's
    restart backoff then does the waiting (kopf alone would retry ~1 minute, then print tracebacks).
    """
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1") if case == "closed-port" else None
    proc = await asyncio.create_subprocess_exec(CLI, "run", "--connect-timeout", "1",
                                                env=_env(kubeconfig, tmp_path),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = err.decode().splitlines()
    assert proc.returncode == 1 and out == b"" and "Traceback" not in err.decode(), err.decode()
    if case == "closed-port":
        assert len(lines) == 2 and lines[0].startswith("xtrace-operator: waiting up to 1 s"), lines
        assert lines[1] == ("xtrace-operator: cannot reach the Kubernetes API at http://127.0.0.1:1: "
                            "connection refused (gave up after 1 s)"), lines
    else:
        assert len(lines) == 1 and "no Kubernetes configuration" in lines[0], lines


def test_render_from_stdin_and_help():
    """`render -f -` reads a monitor from stdin (the `kubectl get -o yaml | xtrace-operator render -f -` case)."""
    proc = subprocess.run([CLI, "render", "-f", "-"], input=SAMPLES[0].read_text(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(proc.stdout)}
    assert {"ConfigMap", "DaemonSet", "ServiceAccount"} <= kinds, kinds

    proc = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: xtrace-operator"), proc.stderr
    for word in ("run", "render", "--namespace", "--connect-timeout"):
        assert word in proc.stdout
