"""`xtrace-operator render`: the installed command prints valid objects and fails cleanly on bad input."""

from __future__ import annotations

import pathlib
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.operator.conftest import ROOT, SAMPLES

CLI = str(ROOT / ".venv" / "bin" / "xtrace-operator")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, input=stdin, timeout=60)


def test_render_every_sample():
    proc = run("render", *[a for p in SAMPLES for a in ("-f", str(p))])
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert len(docs) == 5 * len(SAMPLES)  # ServiceAccount, Role, RoleBinding, ConfigMap, DaemonSet
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
    assert "agent.yaml: |" in proc.stdout  # the config is readable in a review


@pytest.mark.parametrize("content,expected", [
    ("apiVersion: xtrace.io/v1alpha1\nkind: XTraceMonitor\nmetadata: {name: a}\nspec: {mode: rdma, interfaces: [x]}\n",
     "spec.interfaces: rdma mode reads RDMA devices"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n", "expected apiVersion xtrace.io/v1alpha1"),
    ("spec: [unclosed\n", "is not valid YAML"),
    ("", "no XTraceMonitor found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: pathlib.Path, content, expected):
    f = tmp_path / "m.yaml"
    f.write_text(content)
    proc = run("render", "-f", str(f))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


def test_missing_file_and_stdin():
    proc = run("render", "-f", "/nonexistent.yaml")
    assert proc.returncode == 2 and "cannot read /nonexistent.yaml" in proc.stderr
    proc = run("render", "-f", "-", stdin=SAMPLES[0].read_text())
    assert proc.returncode == 0 and "kind: DaemonSet" in proc.stdout


@pytest.mark.parametrize("args,expected", [
    (["run", "--connect-timeout", "-5"], "must be more than 0"),
    (["run", "--connect-timeout", "soon"], "must be a number of seconds"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_one_line_and_exit_2(args, expected):
    proc = run(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
