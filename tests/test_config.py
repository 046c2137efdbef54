"""The agent config schema: what the operator renders loads back unchanged; bad values name their field."""

import dataclasses

import pytest

from xtrace_agent import config
from xtrace_agent.config import (
    AgentConfig,
    BasicAuth,
    HttpAuth,
    NicConfig,
    RdmaConfig,
    RemoteWriteTarget,
    SpoolConfig,
    XdpConfig,
)
from xtrace_agent.errors import UsageError

# Every field away from its default (test_full_moves_every_field checks), so the round trip
# carries each one through to_dict() and back.
FULL = AgentConfig(
    mode="rdma", interfaces=("eth0", "ens*"), devices=("mlx5_0",), interval=2.5, count=3, output="json",
    sysfs="/host/sys", ethtool_dir="/bundle/ethtool",
    nic=NicConfig(interfaces=("ib0", "eth*"), raw_include=("rx_*_phy",), raw_exclude=("rx_64_bytes_phy",),
                  raw_per_queue=True),
    node="n1", monitor="m", namespace="ns", labels={"cluster": "a"},
    xdp=XdpConfig(attach_mode="generic", flow_table_size=4096, sampling=8, idle_timeout=60, max_flows=100,
                  flow_gauges=False, directions=("ingress", "egress"), drops=True, tcp=True, max_drop_flows=7,
                  max_tcp_flows=9, event_table_size=2048),
    rdma=RdmaConfig(pod_attribution=True, pod_resources_socket="/run/kubelet/pod-resources.sock"),
    remote_write=(RemoteWriteTarget(url="https://vm/api/v1/write", name="vm",
                                    basic_auth=BasicAuth(username="u", username_file="/s/u", password_file="/s/p"),
                                    ca_file="/ca", insecure_skip_verify=True, headers={"X-Scope": "1"}),
                  RemoteWriteTarget(url="http://vm2/api/v1/write", bearer_token_file="/s/t")),
    queue_samples=5000, spool=SpoolConfig(path="/var/lib/xtrace/spool", max_bytes=1 << 20),
    http_listen="127.0.0.1:9500", max_push_age=30,
    http_auth=HttpAuth(mode="kubernetes", cert_file="/tls/tls.crt", key_file="/tls/tls.key"),
)


def _unmoved(value, default, path=""):
    """The dataclass fields of value still equal to default's (from_file aside: from_dict sets it)."""
    for f in dataclasses.fields(value):
        v, d = getattr(value, f.name), getattr(default, f.name)
        if f.name == "from_file":
            continue
        if dataclasses.is_dataclass(v):
            yield from _unmoved(v, d, f"{path}{f.name}.")
        elif v == d:
            yield f"{path}{f.name}"


def test_full_moves_every_field():
    assert list(_unmoved(FULL, AgentConfig())) == []
    target = FULL.remote_write[0]
    default = RemoteWriteTarget(url="")
    moved = [f.name for f in dataclasses.fields(target) if getattr(target, f.name) != getattr(default, f.name)]
    bearer = FULL.remote_write[1].bearer_token_file  # basicAuth and bearerTokenFile exclude each other
    assert set(moved) | {"bearer_token_file"} == {f.name for f in dataclasses.fields(target)} and bearer
    assert list(_unmoved(target.basic_auth, BasicAuth())) == []


def test_round_trip():
    back = config.from_dict(config.to_dict(FULL))
    assert back == FULL.__class__(**{**FULL.__dict__, "from_file": True})
    assert back.xdp.directions == ("ingress", "egress")


def test_defaults_are_left_out_of_the_rendered_form():
    assert config.to_dict(AgentConfig()) == {"mode": "xdp"}


@pytest.mark.parametrize("raw, where", [
    ({"mode": "tcp"}, "mode"),
    ({"interval": 0}, "interval"),
    ({"interval": "5"}, "interval"),
    ({"interfaces": "eth0"}, "interfaces"),
    ({"xdp": {"flowTableSize": 10}}, "xdp.flowTableSize"),
    ({"xdp": {"attachMode": "fast"}}, "xdp.attachMode"),
    ({"xdp": {"bogus": 1}}, "xdp.bogus"),
    ({"xdp": {"flowGauges": "no"}}, "xdp.flowGauges"),
    ({"remoteWrite": [{"name": "x"}]}, "remoteWrite[0].url"),
    ({"remoteWrite": [{"url": "vm:8428"}]}, "remoteWrite[0].url"),
    ({"remoteWrite": [{"url": "http://a", "bearerTokenFile": "/t", "basicAuth": {"username": "u"}}]},
     "remoteWrite[0]"),
    ({"labels": {"bad-name": "x"}}, "labels"),
    ({"labels": {"__name__": "x"}}, "labels"),
    ({"httpListen": "9435"}, "httpListen"),
    ({"spool": {"maxBytes": -1}}, "spool.maxBytes"),
    ({"httpAuth": {"mode": "tls"}}, "httpAuth.mode"),
    ({"httpAuth": {"certFile": ""}}, "httpAuth.certFile"),
    ({"httpAuth": {"mode": "kubernetes", "certFile": "/tls.crt"}}, "httpAuth: certFile and keyFile go together"),
    ({"nic": {"rawInclude": "rx_*"}}, "nic.rawInclude"),
    ({"nic": {"rawInclude": ["rx\tbad"]}}, "nic.rawInclude[0]"),
    ({"nic": {"interfaces": ["eth 0"]}}, "nic.interfaces[0]"),
    ({"nic": {"rawPerQueue": 1}}, "nic.rawPerQueue"),
    ({"nic": {"raw": ["*"]}}, "nic.raw"),
])
def test_bad_values_name_their_field(raw, where):
    with pytest.raises(UsageError) as e:
        config.from_dict(raw)
    assert f"config: {where}" in str(e.value)


def test_document_must_be_a_map():
    with pytest.raises(UsageError, match="must be a map"):
        config.from_dict(["mode", "xdp"])
    assert config.from_dict(None) == AgentConfig(from_file=True)
