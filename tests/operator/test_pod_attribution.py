"""Rendering a monitor with pod attribution: the kubelet's pod-resources directory, read-only, and
nothing else; without it, no such mount. (tests/k8s/test_pod_attribution.py applies both for real.)"""

import pytest
import yaml

from xtrace_operator import model, render
from xtrace_operator.model import InvalidSpec

SOCKET_DIR = "/var/lib/kubelet/pod-resources"


def _pod(spec: dict) -> dict:
    return render.daemonset(model.parse("m", "ns", spec))["spec"]["template"]["spec"]


def test_attribution_adds_the_socket_directory_and_nothing_else():
    plain, owned = _pod({"mode": "nccl"}), _pod({"mode": "nccl", "rdma": {"podAttribution": True}})
    added = [v for v in owned["volumes"] if v not in plain["volumes"]]
    assert added == [{"name": "pod-resources", "hostPath": {"path": SOCKET_DIR, "type": "Directory"}}]
    (c_plain,), (c_owned,) = plain["containers"], owned["containers"]
    assert [m for m in c_owned["volumeMounts"] if m not in c_plain["volumeMounts"]] == [
        {"name": "pod-resources", "mountPath": SOCKET_DIR, "readOnly": True}]
    assert c_owned["securityContext"] == c_plain["securityContext"]  # no capability more
    assert not any(SOCKET_DIR in str(v) for v in plain["volumes"])


def test_the_agent_is_told_and_looks_where_the_socket_is_mounted():
    m = model.parse("m", "ns", {"mode": "rdma", "rdma": {"podAttribution": True}})
    doc = yaml.safe_load(render.configmap(m)["data"][render.CONFIG_FILE])
    assert doc["rdma"] == {"podAttribution": True}
    assert render.agent_config_of(m).rdma.pod_resources_socket == f"{SOCKET_DIR}/kubelet.sock"
    off = yaml.safe_load(render.configmap(model.parse("m", "ns", {"mode": "rdma"}))["data"][render.CONFIG_FILE])
    assert "rdma" not in off


@pytest.mark.parametrize("spec, message", [
    ({"mode": "xdp", "interfaces": ["eth0"], "rdma": {"podAttribution": True}}, "spec.rdma: only valid in rdma"),
    ({"mode": "nccl", "rdma": {"podAttribution": "yes"}}, "spec.rdma.podAttribution"),
    ({"mode": "nccl", "rdma": {"podAtribution": True}}, "spec.rdma"),
])
def test_bad_rdma_sections(spec, message):
    with pytest.raises(InvalidSpec, match=message.replace(".", r"\.")):
        model.parse("m", "ns", spec)
