"""The committed dashboards and rule files are exactly what their generators write, and the three
rule formats carry the same groups. The generators run as programs: tests never import tools/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import need
from tests.query.conftest import vm_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "deploy", "rules")


@pytest.mark.parametrize("tool", ["tools/dashboards.py", "tools/rules.py"])
def test_committed_output_is_generated(tool):
    r = subprocess.run([sys.executable, os.path.join(ROOT, tool), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_check_reports_a_stale_file(tmp_path):
    """--check must fail (one line naming the fix) when a generated file was edited by hand."""
    out = tmp_path / "rules"
    shutil.copytree(RULES, out)
    (out / "vmrule.yaml").write_text((out / "vmrule.yaml").read_text().replace("> 0.2", "> 0.3"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/rules.py"), "--check", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "> 0.3" in r.stdout and r.stderr.count("\n") == 1 and "run tools/rules.py" in r.stderr


def test_rule_formats_carry_the_same_groups():
    def load(name):
        with open(os.path.join(RULES, name)) as f:
            return yaml.safe_load(f)

    plain = load("xtrace.rules.yml")["groups"]
    vmrule, promrule = load("vmrule.yaml"), load("prometheusrule.yaml")
    assert (vmrule["apiVersion"], vmrule["kind"]) == ("operator.victoriametrics.com/v1beta1", "VMRule")
    assert (promrule["apiVersion"], promrule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert vmrule["spec"]["groups"] == plain == promrule["spec"]["groups"]
    alerts = {r["alert"] for g in plain for r in g["rules"] if "alert" in r}
    assert alerts == {"XTraceAgentNotPushing", "XTraceAgentsNotReady", "XTraceSamplesDropped", "XTraceFlowTableOverflow",
                      "XTraceOtherShareHigh", "XTraceDropRateHigh", "XTraceTcpRetransmitRatioHigh",
                      "XTraceRdmaLinkDown", "XTraceRdmaLinkFlapping", "XTraceRdmaPortErrors",
                      "XTraceRdmaTransportErrors", "XTraceRdmaCongestion", "XTraceRdmaCounterSaturated",
                      # one per verdict other than healthy (tests/nic/test_verdicts.py)
                      "XTraceRdmaPortLinkDegraded", "XTraceRdmaPortPcieStall", "XTraceRdmaPortHostBackpressure",
                      "XTraceRdmaPortFabricCongestion", "XTraceRdmaPortPfcBlocking", "XTraceRdmaPortLossyTransport"}


def test_vmalert_accepts_the_rule_file():
    vmalert = vm_binary("vmalert")
    need(os.access(vmalert, os.X_OK), f"{vmalert} not installed (make vm, or apt-get install victoria-metrics)")
    r = subprocess.run([vmalert, "-dryRun", f"-rule={os.path.join(RULES, 'xtrace.rules.yml')}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
