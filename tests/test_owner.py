"""How a second agent names the live owner of an interface (xdp/attach.py)."""

from __future__ import annotations

import os

from xtrace_agent.xdp.attach import Owner, pidns


def test_an_owner_in_this_pid_namespace_is_named_by_its_pid():
    assert Owner(pid=os.getpid(), pidns=pidns()).who() == f"pid {os.getpid()}"


def test_an_owner_in_another_pid_namespace_says_so():
    """Its pid means nothing here (a container's agent is often pid 1): the message must not mislead."""
    assert Owner(pid=1, pidns=pidns() + 1).who() == "pid 1 in another pid namespace, e.g. another container"
