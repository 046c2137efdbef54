"""The CRD as a document, and the operator's own validation of every mistake the CRD refuses.

What the API server does with the CRD (defaulting, structural schema, CEL and its cost budget) is
tested against a real kube-apiserver in tests/k8s/test_admission.py, on the same INVALID table:
the operator's validation (model.py) must refuse each case too, for monitors applied before the
CRD changed or objects that reach it another way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import kubernetes_validate
import pytest

from tests.operator.conftest import CRD_FILE, ROOT
from xtrace_agent import config as agent_config
from xtrace_operator import model

K8S_VERSION = "1.33"


def monitor(spec: dict, name: str = "m") -> dict:
    return {"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def test_crd_is_a_valid_customresourcedefinition(crd):
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["xtm"] and crd["spec"]["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Mode", "Ready", "Desired", "Reason", "Age"]


def test_printer_columns_point_at_schema_fields(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue  # ObjectMeta: not part of the CRD's schema
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            node = (node.get("properties") or {}).get(part)
            assert node is not None, column["jsonPath"]


INVALID = [
    # (spec, message from the API server (tests/k8s/test_admission.py), message from the operator)
    ({"mode": "xdp"}, "xdp mode needs at least one interface", "xdp mode needs at least one interface"),
    ({"mode": "xdp", "interfaces": []}, "xdp mode needs at least one interface", "needs at least one interface"),
    ({"mode": "rdma", "interfaces": ["eth0"]}, "spec.interfaces: rdma and nccl modes read RDMA devices",
     "spec.interfaces: rdma mode reads RDMA devices"),
    ({"mode": "nccl", "interfaces": ["ib0"]}, "use spec.devices", "use spec.devices"),
    ({"interfaces": ["eth0"], "devices": ["mlx5_0"]}, "only rdma and nccl modes read RDMA devices",
     "only rdma and nccl modes read RDMA devices"),
    ({"mode": "rdma", "xdp": {"sampling": 2}}, "spec.xdp: only valid in xdp mode", "spec.xdp: only valid in xdp mode"),
    ({"mode": "xdp", "interfaces": ["eth0"], "nic": {"rawPerQueue": True}}, "spec.nic: only valid in rdma and nccl",
     "spec.nic: only valid in rdma and nccl modes"),
    ({"mode": "nccl", "nic": {"rawInclude": [" rx_*"]}}, "spec.nic.rawInclude[0]", "spec.nic.rawInclude[0]"),
    ({"mode": "nccl", "nic": {"interfaces": ["eth 0"]}}, "spec.nic.interfaces[0]", "spec.nic.interfaces[0]"),
    ({"interfaces": ["eth0"], "rdma": {"podAttribution": True}}, "spec.rdma: only valid in rdma and nccl modes",
     "spec.rdma: only valid in rdma and nccl modes"),
    ({"mode": "rdma", "rdma": {"podResourcesSocket": "/x"}}, "podResourcesSocket", "spec.rdma.podResourcesSocket"),
    ({"mode": "tcp"}, "spec.mode", "spec.mode: must be one of"),
    ({"interfaces": ["eth 0"]}, "spec.interfaces[0]", "spec.interfaces[0]"),
    ({"interfaces": ["eth0"], "interval": 0}, "spec.interval: Invalid value: 0: must be at least 0.05",
     "spec.interval: must be between"),
    ({"interfaces": ["eth0"], "interval": 0.01}, "spec.interval", "spec.interval: must be between"),
    ({"interfaces": ["eth0"], "xdp": {"sampling": 0}}, "spec.xdp.sampling", "spec.xdp.sampling"),
    ({"interfaces": ["eth0"], "xdp": {"flowTableSize": 100}}, "spec.xdp.flowTableSize", "spec.xdp.flowTableSize"),
    ({"interfaces": ["eth0"], "xdp": {"attachMode": "offload"}}, "spec.xdp.attachMode", "spec.xdp.attachMode"),
    ({"interfaces": ["eth0"], "port": 80}, "spec.port", "spec.port"),
    ({"interfaces": ["eth0"], "bogus": 1}, 'unknown field "spec.bogus"', "spec.bogus: unknown field"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "http://a", "auth": {
        "basic": {"secretName": "b"}, "bearer": {"secretName": "t"}}}},
     "set basic or bearer, not both", "set basic or bearer, not both"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "ftp://a"}}, "spec.victoriaMetrics.url",
     "must be an http:// or https:// URL"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {}}, "set exactly one of url or urls", "set exactly one of url or urls"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "http://a", "urls": ["http://b"]}},
     "set exactly one of url or urls", "set exactly one of url or urls"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "http://a", "tenant": "abc"}},
     "spec.victoriaMetrics.tenant", "spec.victoriaMetrics.tenant"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "http://a", "headers": {"Authorization": "Bearer x"}}},
     "Authorization must not be set here", "Authorization must not be set here"),
    ({"interfaces": ["eth0"], "victoriaMetrics": {"url": "http://a", "extraLabels": {"__name__": "x"}}},
     "keys must be Prometheus label names", "not a valid Prometheus label name"),
    ({"interfaces": ["eth0"], "tolerations": [{"operator": "Equal", "value": "x"}]},
     "without a key, operator must be Exists", "without a key, operator must be Exists"),
    ({"interfaces": ["eth0"], "imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "spec.imagePullPolicy"),
    ({"interfaces": ["eth0"], "resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory",
     "is not a quantity"),
    ({"interfaces": ["eth0"], "metrics": {"auth": "tls"}}, "spec.metrics.auth", "spec.metrics.auth: must be one of"),
    ({"interfaces": ["eth0"], "metrics": {"tlsSecret": {"name": "agent-tls"}}}, "tlsSecret: only with auth: kubernetes",
     "tlsSecret: only with auth: kubernetes"),
    ({"interfaces": ["eth0"], "metrics": {"auth": "kubernetes", "tlsSecret": {"name": "Bad_Name"}}},
     "spec.metrics.tlsSecret.name", "spec.metrics.tlsSecret.name"),
]


@pytest.mark.parametrize("spec,server_says,operator_says", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_specs_are_refused_by_the_operator(spec, server_says, operator_says):
    with pytest.raises(model.InvalidSpec) as exc:
        model.from_body(monitor(spec))
    assert operator_says in str(exc.value)


def test_long_names_are_refused_by_the_operator():
    name = "a" * 57
    with pytest.raises(model.InvalidSpec, match="metadata.name"):
        model.from_body(monitor({"interfaces": ["eth0"]}, name=name))


def test_every_spec_field_has_a_description_or_is_obvious(crd):
    """Top-level spec fields are documented in the schema (kubectl explain shows them)."""
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    undocumented = [k for k, v in spec.items() if "description" not in v
                    and k not in ("imagePullPolicy", "imagePullSecrets")]
    assert undocumented == []


CRD_TOOL = ROOT / "tools" / "crd.py"


def test_committed_crd_is_generated_from_the_spec_description():
    """deploy/crds is tools/crd.py's output: the field descriptors are the only source of the schema."""
    r = subprocess.run([sys.executable, str(CRD_TOOL), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_crd_check_reports_a_hand_edit(tmp_path):
    shutil.copy(CRD_FILE, tmp_path / CRD_FILE.name)
    edited = (tmp_path / CRD_FILE.name).read_text().replace("maximum: 16777216", "maximum: 16777217")
    (tmp_path / CRD_FILE.name).write_text(edited)
    r = subprocess.run([sys.executable, str(CRD_TOOL), "--check", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "16777217" in r.stdout and "make crd" in r.stderr


def test_the_crd_bounds_and_defaults_are_the_agents(crd):
    """One source: the CRD's spec.xdp is the agent's xdp section, field for field."""
    xdp = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["xdp"]
    assert list(xdp["properties"]) == list(agent_config.XDP)
    defaults = agent_config.XdpConfig()
    for key, f in agent_config.XDP.items():
        node = xdp["properties"][key]
        if f.bounds:
            assert (node["minimum"], node["maximum"]) == agent_config.BOUNDS[f"xdp.{key}"], key
        default = getattr(defaults, f.attr)
        assert node["default"] == (list(default) if isinstance(default, tuple) else default), key
