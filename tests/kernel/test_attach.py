"""Attaching the real XDP program: modes, refusing another tool's program, replacing the leftover
of a killed agent, detaching only our own, and real frames counted exactly over a veth.

Each test makes its own namespace "xtk-<tag>" joined to this one by a veth pair (our end
"xtk<tag>b", the peer "xtk<tag>a" inside the namespace) and deletes both afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass

import pytest

from tests import frames as F
from tests.helpers.bpf import bpf_prerequisites, stats
from tests.helpers.netns import ip, run_in_netns
from xtrace_agent.xdp import compiler, libbpf
from xtrace_agent.xdp.attach import AttachError

pytestmark = pytest.mark.kernel

# addresses of the frames sent for real over the veth; no other test uses them
A4, B4 = "203.0.113.101", "203.0.113.102"
A6, B6 = "2001:db8:7:1::1", "2001:db8:7:1::2"


@dataclass
class Link:
    ns: str
    dev: str  # our end, in this namespace
    peer: str  # inside ns

    @property
    def ifindex(self) -> int:
        return socket.if_nametoindex(self.dev)

    def xdp(self) -> dict:
        """{'id', 'name'} of the XDP program on our end, {} when none, plus 'mode' (ip's number)."""
        out = json.loads(ip("-d", "-j", "link", "show", "dev", self.dev).stdout)[0].get("xdp") or {}
        return {**(out.get("prog") or {}), "mode": out.get("mode")} if out else {}

    def mac(self, dev: str, ns: str | None = None) -> bytes:
        args = (["-n", ns] if ns else []) + ["-j", "link", "show", "dev", dev]
        return F.mac(json.loads(ip(*args).stdout)[0]["address"])

    def send(self, *frames: bytes) -> None:
        """Send frames as they are from the peer (inside the namespace) to our end."""
        def body():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            try:
                s.bind((self.peer, 0))
                for f in frames:
                    s.send(f)
            finally:
                s.close()
        run_in_netns(self.ns, body)


@pytest.fixture
def link():
    bpf_prerequisites()
    tag = uuid.uuid4().hex[:6]
    lk = Link(ns=f"xtk-{tag}", dev=f"xtk{tag}b", peer=f"xtk{tag}a")
    try:
        ip("netns", "add", lk.ns)
        ip("link", "add", lk.dev, "type", "veth", "peer", "name", lk.peer, "netns", lk.ns)
        # no IPv6 autoconfiguration chatter from the peer in the middle of counted frames
        subprocess.run(["ip", "netns", "exec", lk.ns, "sysctl", "-qw", f"net.ipv6.conf.{lk.peer}.disable_ipv6=1"],
                       capture_output=True)
        ip("link", "set", lk.dev, "up")
        ip("-n", lk.ns, "link", "set", lk.peer, "up")
        ip("-n", lk.ns, "link", "set", "lo", "up")
        yield lk
    finally:
        ip("link", "del", lk.dev, check=False)
        ip("netns", "del", lk.ns, check=False)


def our_id(program) -> int:
    return program.prog_ids["xtrace_eth"]


def test_attach_auto_is_native_on_veth_and_detach(xdp_program, link):
    mode = xdp_program.attach(link.dev, link.ifindex, False, "auto")
    try:
        assert mode == "native"
        assert link.xdp()["id"] == our_id(xdp_program) and link.xdp()["name"] == "xtrace_eth"
        assert xdp_program.attached() == {link.ifindex: "native"}
        # attaching again is a no-op
        assert xdp_program.attach(link.dev, link.ifindex, False, "auto") == "native"
    finally:
        xdp_program.detach(link.ifindex)
    assert link.xdp() == {}
    assert link.ifindex not in xdp_program.attached()


def test_generic_mode(xdp_program, link):
    assert xdp_program.attach(link.dev, link.ifindex, False, "generic") == "generic"
    try:
        assert link.xdp()["id"] == our_id(xdp_program)
        assert libbpf.xdp_query(link.ifindex) == (our_id(xdp_program), "generic")
    finally:
        xdp_program.detach(link.ifindex)
    assert link.xdp() == {}


def test_auto_falls_back_to_generic_with_a_log_line(xdp_program, link, caplog):
    """Loopback has no native XDP: auto mode falls back to generic and says so."""
    caplog.set_level(logging.WARNING, logger="xtrace.xdp")

    def in_ns():
        lo = socket.if_nametoindex("lo")
        with pytest.raises(AttachError) as e:
            xdp_program.attach("lo", lo, False, "native")
        mode = xdp_program.attach("lo", lo, False, "auto")
        query = libbpf.xdp_query(lo)
        xdp_program.detach(lo)
        return str(e.value), mode, query, libbpf.xdp_query(lo)

    native_error, mode, query, after = run_in_netns(link.ns, in_ns)
    assert "native" in native_error and "\n" not in native_error
    assert mode == "generic" and query == (our_id(xdp_program), "generic") and after == (0, None)
    assert any("generic" in r.getMessage() and "native" in r.getMessage() for r in caplog.records)


@pytest.fixture
def foreign(tmp_path):
    """Attaches a tiny program of another tool (name foreign_tool) to a device, as that tool would."""
    src = tmp_path / "foreign.c"
    src.write_text("#include <uapi/linux/bpf.h>\nint foreign_tool(struct xdp_md *ctx) { return XDP_PASS; }\n")
    loaded = compiler.compile_and_load(16, 1, source=str(src), programs=("foreign_tool",))

    def attach(ifindex: int, flags: int = libbpf.XDP_FLAGS_DRV_MODE) -> int:
        libbpf.xdp_attach(ifindex, loaded.programs["foreign_tool"], flags)
        return libbpf.prog_info(loaded.programs["foreign_tool"]).id

    try:
        yield attach
    finally:
        loaded.close()  # netlink XDP stays attached without fds: the link fixture removes the device


def test_never_replaces_another_tools_program(xdp_program, link, foreign):
    fid = foreign(link.ifindex)
    for mode in ("auto", "native", "generic"):
        with pytest.raises(AttachError) as e:
            xdp_program.attach(link.dev, link.ifindex, False, mode)
        msg = str(e.value)
        assert f"id {fid}" in msg and "foreign_tool" in msg and link.dev in msg and "\n" not in msg
    assert link.xdp()["id"] == fid
    assert link.ifindex not in xdp_program.attached()


def test_detach_only_our_own(xdp_program, link, foreign):
    xdp_program.attach(link.dev, link.ifindex, False, "native")
    ip("link", "set", "dev", link.dev, "xdp", "off")  # someone removes ours and attaches theirs
    fid = foreign(link.ifindex)
    assert link.ifindex not in xdp_program.attached()
    xdp_program.detach(link.ifindex)
    assert link.xdp()["id"] == fid
    # and with our own bookkeeping still claiming the link, detach leaves theirs alone too
    xdp_program.links._attached[link.ifindex] = ("native", link.dev, xdp_program.prog_fd())
    xdp_program.detach(link.ifindex)
    assert link.xdp()["id"] == fid


def test_detach_from_a_vanished_link_does_not_raise(xdp_program, link):
    ifindex = link.ifindex
    xdp_program.attach(link.dev, ifindex, False, "auto")
    ip("link", "del", link.dev)
    assert ifindex not in xdp_program.attached()
    xdp_program.links._attached[ifindex] = ("native", link.dev, xdp_program.prog_fd())
    xdp_program.detach(ifindex)
    xdp_program.detach(ifindex)


STALE_AGENT = textwrap.dedent("""
    import sys, time
    from xtrace_agent.config import XdpConfig
    from xtrace_agent.xdp.program import XdpProgram
    p = XdpProgram.load(XdpConfig(flow_table_size=1024))
    print(p.attach(sys.argv[1], int(sys.argv[2]), False, sys.argv[3]), p.prog_ids["xtrace_eth"], flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("stale_mode,mode", [("native", "auto"), ("generic", "native")])
def test_replaces_the_leftover_of_a_killed_agent(xdp_program, link, caplog, stale_mode, mode):
    caplog.set_level(logging.WARNING, logger="xtrace.xdp")
    proc = subprocess.Popen([sys.executable, "-c", STALE_AGENT, link.dev, str(link.ifindex), stale_mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        used, stale_id = proc.stdout.readline().split()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert used == stale_mode and link.xdp()["id"] == int(stale_id)  # left attached by the dead agent
    got = xdp_program.attach(link.dev, link.ifindex, False, mode)
    try:
        assert got == (stale_mode if mode == "auto" else mode)
        assert link.xdp()["id"] == our_id(xdp_program)
        assert any(stale_id in r.getMessage() and "replaced" in r.getMessage() for r in caplog.records)
    finally:
        xdp_program.detach(link.ifindex)
    assert link.xdp() == {}


def test_real_frames_over_veth_counted_exactly(xdp_program, link):
    """Frames sent for real from the namespace: exact keys and counts, in native mode."""
    from xtrace_agent.stages import FlowKey

    dst, src = link.mac(link.dev), link.mac(link.peer, link.ns)
    frames = {
        "udp4": F.ethernet(dst, src, F.ipv4(A4, B4, F.udp(5001, 6001, b"a" * 50))),
        "udp6": F.ethernet(dst, src, F.ipv6(A6, B6, F.udp(5002, 6002, b"b" * 70))),
        "vlan": F.ethernet(dst, src, F.ipv4(A4, B4, F.tcp(5003, 6003)), vlans=[42]),
        "qinq": F.ethernet(dst, src, F.ipv4(A4, B4, F.udp(5004, 6004)), vlans=[1, 2]),
        "roce": F.ethernet(dst, src, F.roce(A4, B4, opcode=0x04, dest_qp=0x0BEEF, payload=b"r" * 100)),
        "runt": F.ethernet(dst, src, F.ipv4(A4, B4, F.udp(5005, 6005)))[:30],
    }
    xdp_program.attach(link.dev, link.ifindex, False, "native")
    try:
        xdp_program.drain()
        link.send(*frames.values(), frames["udp4"], frames["udp4"])
        d = xdp_program.drain()
    finally:
        xdp_program.detach(link.ifindex)
    ifx = link.ifindex

    def k(src_ip, dst_ip, sp, dp, proto, tt="ethernet", op=0, qp=0):
        return FlowKey(ifx, src_ip, dst_ip, sp, dp, proto, tt, op, qp)

    ours = {fk: v for fk, v in d.flows.items() if fk.ifindex == ifx}
    assert ours == {
        k(A4, B4, 5001, 6001, 17): (3, 3 * len(frames["udp4"])),
        k(A6, B6, 5002, 6002, 17): (1, len(frames["udp6"])),
        k(A4, B4, 5003, 6003, 6): (1, len(frames["vlan"])),
        k(A4, B4, 5004, 6004, 17): (1, len(frames["qinq"])),
        k(A4, B4, 49152, 4791, 17, "roce", 0x04, 0x0BEEF): (1, len(frames["roce"])),
    }
    total = sum(map(len, frames.values())) + 2 * len(frames["udp4"])
    assert d.interfaces[ifx] == (8, total)
    assert stats(d)["malformed"] == 1
