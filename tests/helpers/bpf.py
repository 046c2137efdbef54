"""Fixtures for kernel tests of the XDP program: one loaded program per session, and a runner that
pushes crafted frames through it with BPF_PROG_TEST_RUN and reads back exact counts.

BPF_PROG_TEST_RUN runs the real program on its real maps; without a context the kernel presents
the frame as received on the loopback device, so test_run counts land on ifindex 1 (LO). Tests
still use addresses no other test uses (203.0.113.0/24, 2001:db8:7::/48).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import need

LO = 1


def bpf_prerequisites() -> None:
    """need() root, libbpf and kernel headers, the prerequisites of loading the XDP program."""
    need(os.geteuid() == 0, "XDP kernel tests need root")
    import ctypes.util

    need(ctypes.util.find_library("bpf") is not None or os.path.exists("/usr/lib/x86_64-linux-gnu/libbpf.so.1"),
         "libbpf1 is not installed")
    from xtrace_agent.errors import AgentFailure
    from xtrace_agent.xdp import headers

    try:
        headers.resolve()
    except AgentFailure as e:
        need(False, str(e))
    need(shutil.which("ip") is not None, "iproute2 (ip) is not installed")


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, ifindex: int | None = None,
             egress: bool = False) -> tuple[int, int]:
    """(return value, mean duration in ns) of a loaded program on `frame`, through BPF_PROG_TEST_RUN.

    Without ifindex the kernel presents the frame as received on (egress: sent by) the loopback
    device (ifindex 1)."""
    from xtrace_agent.xdp import libbpf

    if egress:
        return libbpf.prog_test_run(prog_fd, frame, repeat, skb_ifindex=ifindex)
    return libbpf.prog_test_run(prog_fd, frame, repeat, ifindex)


test_run.__test__ = False  # not a pytest test, despite the name


def stats(drained) -> dict[str, int]:
    """Packets per untracked reason over all interfaces of one drain, and `sampled`."""
    from xtrace_agent.xdp import layout

    out = dict.fromkeys(layout.UNTRACKED.values(), 0)
    for (_, reason), (packets, _) in drained.untracked.items():
        out[reason] += packets
    out["sampled"] = drained.sampled
    return out


def load_program(**overrides):
    from xtrace_agent.config import XdpConfig
    from xtrace_agent.xdp.program import XdpProgram

    bpf_prerequisites()
    return XdpProgram.load(XdpConfig(**overrides))


class Runner:
    """Runs frames through a loaded program and reads what it counted since the last reset."""

    def __init__(self, program):
        self.program = program
        program.drain()  # forget earlier counts: the table it installs was emptied by the previous drain

    def run(self, frame: bytes, repeat: int = 1, ipoib: bool = False) -> int:
        """The XDP action the program returned (it must always be XDP_PASS)."""
        action, _ns = test_run(self.program.prog_fd(ipoib), frame, repeat)
        return action

    def drain(self):
        return self.program.drain()


@pytest.fixture(scope="session")
def xdp_program():
    """The real XDP program (default config), loaded once per session; closed at the end."""
    prog = load_program()
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture(scope="session")
def sampled_program():
    """The program compiled with 1-in-4 sampling."""
    prog = load_program(sampling=4, flow_table_size=1024)
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture
def xdp(xdp_program) -> Runner:
    """A runner on the session program, with its counters reset."""
    return Runner(xdp_program)
