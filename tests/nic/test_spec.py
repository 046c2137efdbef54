"""spec.nic of an XTraceMonitor: parsed into the agent's own NicConfig, rendered into the agent's config,
refused where it means nothing (xdp mode) or holds what no statistic name can be."""

from __future__ import annotations

import pytest
import yaml

from xtrace_agent import config as agent_config
from xtrace_operator import model, render


def test_spec_nic_reaches_the_agent():
    m = model.parse("m", "ns", {"mode": "nccl", "nic": {"interfaces": ["eth*"], "rawInclude": ["rx_*_phy"],
                                                        "rawExclude": ["rx_64_bytes_phy"]}})
    loaded = agent_config.from_dict(yaml.safe_load(render.configmap(m)["data"][render.CONFIG_FILE]))
    assert loaded.nic == agent_config.NicConfig(interfaces=("eth*",), raw_include=("rx_*_phy",),
                                                raw_exclude=("rx_64_bytes_phy",))
    assert model.parse("m", "ns", {"mode": "rdma"}).nic == agent_config.NicConfig()


@pytest.mark.parametrize("spec, message", [
    ({"mode": "xdp", "interfaces": ["eth0"], "nic": {}}, "spec.nic: only valid in rdma and nccl modes"),
    ({"mode": "nccl", "nic": {"rawInclude": ["rx\nbad"]}}, "spec.nic.rawInclude[0]"),
    ({"mode": "nccl", "nic": {"rawPerQueue": "yes"}}, "spec.nic.rawPerQueue"),
    ({"mode": "nccl", "nic": {"raw": ["*"]}}, "spec.nic"),
])
def test_bad_spec_nic(spec, message):
    with pytest.raises(model.InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.parse("m", "ns", spec)
