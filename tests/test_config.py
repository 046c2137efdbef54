"""The agent config schema: what the operator renders loads back unchanged; bad values name their field."""

import pytest

from xtrace_agent import config
from xtrace_agent.config import AgentConfig, BasicAuth, RemoteWriteTarget, SpoolConfig, XdpConfig
from xtrace_agent.errors import UsageError

FULL = AgentConfig(
    mode="xdp", interfaces=("eth0", "ens*"), devices=("mlx5_0",), interval=2.5, output="json", sysfs="/host/sys",
    node="n1", monitor="m", namespace="ns", labels={"cluster": "a"},
    xdp=XdpConfig(attach_mode="generic", flow_table_size=4096, sampling=8, idle_timeout=60, max_flows=100,
                  flow_gauges=False, drops=True, tcp=True, max_drop_flows=7, max_tcp_flows=9, event_table_size=2048),
    remote_write=(RemoteWriteTarget(url="https://vm/api/v1/write", name="vm",
                                    basic_auth=BasicAuth(username="u", password_file="/s/p"),
                                    ca_file="/ca", insecure_skip_verify=True, headers={"X-Scope": "1"}),
                  RemoteWriteTarget(url="http://vm2/api/v1/write", bearer_token_file="/s/t")),
    queue_samples=5000, spool=SpoolConfig(path="/var/lib/xtrace/spool", max_bytes=1 << 20),
    http_listen="127.0.0.1:9500", max_push_age=30,
)


def test_round_trip():
    back = config.from_dict(config.to_dict(FULL))
    assert back == FULL.__class__(**{**FULL.__dict__, "from_file": True})


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
])
def test_bad_values_name_their_field(raw, where):
    with pytest.raises(UsageError) as e:
        config.from_dict(raw)
    assert f"config: {where}" in str(e.value)


def test_document_must_be_a_map():
    with pytest.raises(UsageError, match="must be a map"):
        config.from_dict(["mode", "xdp"])
    assert config.from_dict(None) == AgentConfig(from_file=True)
