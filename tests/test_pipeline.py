"""The mode table and the stage contract: every mode of the config has a row, and the stages it
names are what stages.py declares."""

from xtrace_agent import config
from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health
from xtrace_agent.pipeline import MODES
from xtrace_agent.stages import FlowId, FlowKey


def test_every_configurable_mode_has_one_row():
    assert set(MODES) == set(config.MODES)


def test_each_mode_builds_a_source_and_an_accounting_stage_of_the_declared_shape(tmp_path):
    for name, mode in MODES.items():
        cfg = AgentConfig(mode=name, interfaces=("lo",), sysfs=str(tmp_path))
        source, accounting = mode.source(cfg, Health()), mode.accounting(cfg, Health())
        for method in ("start", "collect", "close"):
            assert callable(getattr(source, method)), (name, method)
        assert callable(accounting.report), name
        assert callable(mode.text(cfg).lines), name
        assert mode.starting().startswith("starting: no report yet")


def test_a_flow_identity_is_a_kernel_key_with_its_group_in_place_of_the_ifindex():
    assert FlowId._fields[0] == "group" and FlowKey._fields[0] == "ifindex"
    assert FlowId._fields[1:] == FlowKey._fields[1:]
