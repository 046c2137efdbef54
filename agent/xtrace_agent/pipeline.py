"""What each mode runs: its source, its accounting stage and its text lines (one table, `MODES`).

The command line (cli.run) wires the same pipeline for every mode from this table:

    mode.source(cfg, health).collect(now) -> mode.accounting(cfg, health).report(observed, now) -> sinks

Imports are deferred to the factories: rdma mode never loads numpy or the XDP loader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health
from xtrace_agent.stages import Accounting, Source


class Mode(NamedTuple):
    source: Callable[[AgentConfig, Health], Source]
    accounting: Callable[[AgentConfig, Health], Accounting]
    text: Callable[[AgentConfig], object]  # -> a formatter with lines(report) (sinks/text.py)
    interfaces: bool  # watches network interfaces (-i, NETWORK_INTERFACE); else RDMA devices under --sysfs
    starting: Callable[[], str]  # what /readyz says before the first report


def _xdp_source(cfg: AgentConfig, health: Health) -> Source:
    from xtrace_agent.collectors.xdp import XdpCollector
    return XdpCollector(cfg, health)


def _xdp_accounting(cfg: AgentConfig, health: Health) -> Accounting:
    from xtrace_agent.flows import FlowAccounting
    return FlowAccounting(cfg, health)


def _xdp_text(cfg: AgentConfig):
    from xtrace_agent import netdev
    from xtrace_agent.sinks.text import FlowText
    # more than one interface may be watched: each line says which
    return FlowText(with_interface=len(cfg.interfaces) > 1 or any(map(netdev.is_pattern, cfg.interfaces)))


def _xdp_starting() -> str:
    from xtrace_agent.xdp import headers
    # /readyz names the kernel headers while the compile runs on them
    return f"starting: no report yet (compiling against kernel headers {headers.summary()})"


def _rdma_source(cfg: AgentConfig, health: Health) -> Source:
    from xtrace_agent.collectors.rdma import RdmaCollector
    from xtrace_agent.owners import table
    return RdmaCollector(cfg, health, owners=table.from_config(cfg))


def _rdma_accounting(cfg: AgentConfig, health: Health) -> Accounting:
    from xtrace_agent.nic.names import RawSelection
    from xtrace_agent.ports import PortAccounting
    nic = cfg.nic
    return PortAccounting(health, RawSelection(nic.raw_include, nic.raw_exclude, nic.raw_per_queue))


def _rdma_text(cfg: AgentConfig):
    from xtrace_agent.sinks.text import PortText
    return PortText()


def _rdma_starting() -> str:
    return "starting: no report yet"


_RDMA = Mode(_rdma_source, _rdma_accounting, _rdma_text, interfaces=False, starting=_rdma_starting)
MODES: dict[str, Mode] = {
    "xdp": Mode(_xdp_source, _xdp_accounting, _xdp_text, interfaces=True, starting=_xdp_starting),
    "rdma": _RDMA,  # port counters
    "nccl": _RDMA,  # + mlx5 hw_counters (the source reads them when cfg.mode is nccl)
}
