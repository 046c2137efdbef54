"""Why the agent is not ready, as values: one `Problem` (kind, component, message) per component.

A problem is made where it arises (the XDP source knows an interface is missing, the remote-write
sink knows its pushes fail) with its kind already chosen; nothing later reads the message to
classify it. The kinds are what the agent's Pod condition `xtrace.io/AgentReady` carries as its
reason, and the operator, which imports this module too, lists them per node on the monitor.

Components are `<kind of stage>:<what>` (`xdp:eth1`, `xdp:eth1 (egress)`, `rdma:mlx5_0`,
`remote_write:vm`): /readyz shows them beside their messages.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

# The condition each agent writes on its own Pod (sinks/podstatus.py) and the operator reads.
CONDITION_TYPE = "xtrace.io/AgentReady"
READY_REASON = "AgentReady"  # the condition's reason when nothing is wrong
MIXED_REASON = "Degraded"  # the condition's reason when problems of several kinds are present


class Kind(StrEnum):
    """What is wrong, as the condition's CamelCase reason."""

    STARTING = "Starting"  # no report yet (compiling, attaching)
    INTERFACE_NOT_FOUND = "InterfaceNotFound"  # a named interface is absent, or a glob matches none
    LINK_DOWN = "LinkDown"  # attached, but the link is down
    NOT_ATTACHED = "NotAttached"  # present, but our program could not be attached
    DEVICE_NOT_FOUND = "DeviceNotFound"  # a named RDMA device is absent, or there are none
    PUSH_FAILING = "PushFailing"  # no successful remote write for longer than maxPushAge
    FEATURE_UNAVAILABLE = "FeatureUnavailable"  # xdp.drops / xdp.tcp: the kernel lacks BTF or a tracepoint


class Problem(NamedTuple):
    kind: Kind
    component: str
    message: str

    def line(self) -> str:
        """`component: message`, as /readyz and the condition's message show it."""
        return f"{self.component}: {self.message}"
