"""The contract with the agent: one config schema, every field of it reachable from an XTraceMonitor.

The CRD's bounds, enums and defaults need no map here: tools/crd.py writes them from the same field
descriptors (tests/operator/test_crd.py checks the committed CRD is its output), and
tests/k8s/test_admission.py checks what the real API server does with them.
"""

from __future__ import annotations

import yaml

from tests.operator.conftest import SAMPLES, load_sample
from xtrace_agent import config as agent_config
from xtrace_operator import model, render

# Agent config fields no monitor sets, and why.
NOT_FROM_THE_CRD = {
    "count": "a DaemonSet agent must run until stopped, never exit after N reports",
    "node": "the agent reads NODE_NAME, set from the downward API",
    "ethtoolDir": "a DaemonSet agent reads the live NICs; captured dumps are for the command line",
    "rdma.podResourcesSocket": "the operator mounts the kubelet's directory where the agent looks by default",
}

# A spec that moves every field away from the agent's defaults, so to_dict() emits it.
EVERYTHING = [
    {"mode": "xdp", "interfaces": ["eth0"], "interval": 7, "output": "json", "port": 9500,
     "xdp": {"attachMode": "native", "flowTableSize": 4096, "sampling": 3, "idleTimeout": 60, "maxFlows": 10,
             "flowGauges": False, "directions": ["ingress", "egress"], "drops": True, "tcp": True,
             "maxDropFlows": 50, "maxTcpFlows": 60, "eventTableSize": 2048},
     "victoriaMetrics": {"url": "https://vm", "auth": {"basic": {"secretName": "b", "username": "u"}},
                         "tls": {"caSecret": {"name": "ca"}, "insecureSkipVerify": True},
                         "headers": {"X-A": "1"}, "extraLabels": {"cluster": "c"}, "queueSamples": 5000,
                         "maxPushAge": 30, "spool": {"maxBytes": 1024}}},
    {"mode": "rdma", "devices": ["mlx5_0"],
     "victoriaMetrics": {"url": "https://vm", "auth": {"basic": {"secretName": "b"}}}},
    {"mode": "nccl", "victoriaMetrics": {"url": "https://vm", "auth": {"bearer": {"secretName": "t"}}},
     "nic": {"interfaces": ["eth*"], "rawInclude": ["rx_*_phy"], "rawExclude": ["rx_64_bytes_phy"],
             "rawPerQueue": True},
     "rdma": {"podAttribution": True}, "metrics": {"auth": "kubernetes", "tlsSecret": {"name": "agent-tls"}}},
]


def _paths(doc, prefix=""):
    """Every key path in a rendered config, lists of maps flattened with []."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield f"{prefix}{k}"
            yield from _paths(v, f"{prefix}{k}.")
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict):
                yield from _paths(item, f"{prefix[:-1]}[].")


def _schema_paths():
    nested = {"xdp": agent_config.XDP, "rdma": agent_config.RDMA, "spool": agent_config.SPOOL, "nic": agent_config.NIC,
              "httpAuth": agent_config.HTTP_AUTH}
    for key in agent_config.SCHEMA:
        yield key
        for sub in nested.get(key, {}):
            yield f"{key}.{sub}"
    for key in agent_config.TARGET:
        yield f"remoteWrite[].{key}"
    for key in agent_config.BASIC_AUTH:
        yield f"remoteWrite[].basicAuth.{key}"


def _rendered_configs():
    specs = [load_sample(p)["spec"] for p in SAMPLES] + EVERYTHING
    for spec in specs:
        m = model.parse("m", "ns", spec)
        yield m, render.configmap(m)["data"][render.CONFIG_FILE]


def test_rendered_configmaps_load_in_the_agent():
    for m, text in _rendered_configs():
        loaded = agent_config.from_dict(yaml.safe_load(text))
        assert loaded == render.agent_config_of(m).__class__(**{**render.agent_config_of(m).__dict__,
                                                                "from_file": True})
        assert loaded.mode == m.mode and loaded.http_listen.endswith(f":{m.port}")


def test_every_agent_config_field_is_reachable():
    reached = set()
    for _, text in _rendered_configs():
        reached |= set(_paths(yaml.safe_load(text)))
    missing = sorted(set(_schema_paths()) - reached - set(NOT_FROM_THE_CRD))
    assert missing == [], f"agent config fields no XTraceMonitor can set: {missing}"
