"""The installed `xtrace-operator` command as a deployment runs it: a real process, found by its entry point.

The integration tests start kopf in-process on the handlers module; these start the console script
itself, so a broken `cli.main`, argument wiring, login fallback or signal handling fails here.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess

import pytest
import yaml

from tests.operator.conftest import REAL_CLUSTER, ROOT, SAMPLES

pytestmark = pytest.mark.cluster

CLI = str(ROOT / ".venv" / "bin" / "xtrace-operator")
CHILDREN = ("/api/v1/namespaces/{ns}/serviceaccounts/xtrace-entry",
            "/api/v1/namespaces/{ns}/configmaps/xtrace-entry",
            "/apis/apps/v1/namespaces/{ns}/daemonsets/xtrace-entry")


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


async def test_run_reconciles_and_stops_on_sigterm(api, tmp_path: pathlib.Path):
    """`xtrace-operator run` logs in from KUBECONFIG, creates a monitor's children, and stops cleanly on SIGTERM.

    kmock stands in for the API server the kubeconfig names (kopf's `login_via_client` and the
    handlers' `kubernetes` client both read the file); SIGTERM is what the kubelet sends when the
    operator's pod is deleted or rolled. On a real cluster (KUBECONFIG set) the same test runs
    against it, watching only the test's namespace.
    """
    if REAL_CLUSTER:
        env, scope = _env(os.environ["KUBECONFIG"], tmp_path), ["--namespace", api.namespace]
    else:
        env, scope = _env(_kubeconfig(tmp_path / "kubeconfig", str(api.kmock.url).rstrip("/")), tmp_path), []
    log_path = tmp_path / "operator.log"
    # A file, not a pipe: nobody has to drain it while the test waits on the API.
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(CLI, "run", "--connect-timeout", "5", *scope, env=env,
                                                    stdout=log, stderr=subprocess.STDOUT)

    async def child(path: str):
        if proc.returncode is not None:  # a broken entry point exits at once: say so, not "timed out"
            raise AssertionError(f"operator exited with {proc.returncode}:\n{log_path.read_text()}")
        return await api.get(path)

    try:
        await api.create_monitor("entry", {"mode": "xdp", "interfaces": ["eth0"]})
        for path in CHILDREN:
            obj = await api.eventually(lambda p=path: child(p), timeout=15, what=path)
            assert obj["metadata"]["ownerReferences"][0]["name"] == "entry"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = log_path.read_text()
    assert code == 0, out
    assert "Signal SIGTERM is received" in out and "Traceback" not in out, out


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
