"""Test hosts: a network namespace joined to this host by a veth pair, made and removed by fixtures.

    ns "xt<tag>-a" (the remote host: sender, veth end "xa<tag>", 198.18.<n>.1, fd00:<n>::1)
    this namespace  (the node the agent watches: veth end "xb<tag>", 198.18.<n>.2, fd00:<n>::2)

The agent runs in the test's own namespace, as on a node, so it reaches a VictoriaMetrics on
127.0.0.1. Traffic always crosses the veth from a to b. Sockets are opened inside namespace a
from a helper thread that joins it (setns is per thread), so tests need no `ip netns exec`.
The addresses are from 198.18.0.0/15 and fd00::/8, ranges no real network routes here.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from tests.conftest import need

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)
AGENT = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def xdp_prog(dev: str, netns: str | None = None) -> dict | None:
    """The XDP program attached to `dev` ({'id', 'name', ...}), or None: what `ip -d -j link show` says."""
    out = ip(*(["-n", netns] if netns else []), "-d", "-j", "link", "show", "dev", dev, check=False).stdout
    if not out:
        return None
    return (json.loads(out)[0].get("xdp") or {}).get("prog")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", every: float = 0.05):
    """Poll `predicate` every `every` seconds until it returns something true (returned), or fail
    after `timeout` seconds naming what it last returned."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {value!r}")


def readyz(port: int) -> tuple[int, str]:
    """(status, body) of an agent's /readyz on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run_in_netns(ns: str, fn, *args):
    """Call fn(*args) on a thread that has joined network namespace `ns`; return its result."""
    box: dict = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class VethPair:
    tag: str
    n: int

    @property
    def ns_a(self) -> str:
        return f"xt{self.tag}-a"

    ns_b = None  # the agent's side is this namespace

    @property
    def dev_a(self) -> str:
        return f"xa{self.tag}"

    @property
    def dev_b(self) -> str:
        return f"xb{self.tag}"

    @property
    def ip4_a(self) -> str:
        return f"198.18.{self.n}.1"

    @property
    def ip4_b(self) -> str:
        return f"198.18.{self.n}.2"

    @property
    def ip6_a(self) -> str:
        return f"fd00:{self.n}::1"

    @property
    def ip6_b(self) -> str:
        return f"fd00:{self.n}::2"

    def ip(self, side: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return ip("-n", self.ns_a, *args, check=check) if side == "a" else ip(*args, check=check)

    def mac(self, side: str) -> bytes:
        dev = self.dev_a if side == "a" else self.dev_b
        out = self.ip(side, "-j", "link", "show", dev).stdout
        return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))

    def socket(self, side: str, *args) -> socket.socket:
        """A socket created on host a (inside its namespace) or b (this namespace)."""
        return run_in_netns(self.ns_a, socket.socket, *args) if side == "a" else socket.socket(*args)

    def raw_socket(self) -> socket.socket:
        """An AF_PACKET socket bound to a's veth end: sends crafted frames to b as they are."""
        s = self.socket("a", socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((self.dev_a, 0))
        return s

    def create(self) -> None:
        ip("netns", "add", self.ns_a)
        ip("-n", self.ns_a, "link", "set", "lo", "up")
        self.create_link()

    def create_link(self) -> None:
        """(Re)create the veth pair with addresses; also used to recreate it under a running agent."""
        ip("link", "add", self.dev_b, "type", "veth", "peer", "name", self.dev_a, "netns", self.ns_a)
        for side, dev, v4, v6 in (("a", self.dev_a, self.ip4_a, self.ip6_a), ("b", self.dev_b, self.ip4_b, self.ip6_b)):
            # no IPv6 autoconf noise: no router solicitations, no DAD delay before the address works
            sysctl = ["sysctl", "-qw", f"net.ipv6.conf.{dev}.router_solicitations=0", f"net.ipv6.conf.{dev}.accept_ra=0"]
            subprocess.run((["ip", "netns", "exec", self.ns_a] if side == "a" else []) + sysctl, capture_output=True)
            self.ip(side, "addr", "add", f"{v4}/24", "dev", dev)
            self.ip(side, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            self.ip(side, "link", "set", dev, "up")
        # static neighbours: no ARP/ND frames in the middle of counted traffic
        mac_a, mac_b = self.mac("a").hex(":"), self.mac("b").hex(":")
        for addr in (self.ip4_b, self.ip6_b):
            self.ip("a", "neigh", "replace", addr, "lladdr", mac_b, "dev", self.dev_a)
        for addr in (self.ip4_a, self.ip6_a):
            self.ip("b", "neigh", "replace", addr, "lladdr", mac_a, "dev", self.dev_b)

    def delete_link(self) -> None:
        ip("link", "del", self.dev_b, check=False)

    def destroy(self) -> None:
        ip("link", "del", self.dev_b, check=False)
        ip("netns", "del", self.ns_a, check=False)

    def agent(self, *args: str, **kwargs) -> subprocess.Popen:
        """Start the real xtrace-agent binary on host b (this namespace)."""
        return subprocess.Popen([AGENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def agent_run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=timeout)


def lossy_tcp_transfer(pair: VethPair, megabytes: int, loss_every: int, table: str, join: float = 30) -> None:
    """Host b sends `megabytes` MiB over TCP to host a, an nft table `table` in a's namespace dropping
    every `loss_every`-th segment on input: b's socket retransmits. The table is removed after."""
    server = pair.socket("a", socket.AF_INET, socket.SOCK_STREAM)
    server.bind((pair.ip4_a, 0))
    server.listen(1)
    port = server.getsockname()[1]
    nft = ["ip", "netns", "exec", pair.ns_a, "nft"]
    subprocess.run([*nft, "add", "table", "inet", table], check=True)
    try:
        subprocess.run([*nft, "add", "chain", "inet", table, "in", "{ type filter hook input priority 0 ; }"],
                       check=True)
        subprocess.run([*nft, "add", "rule", "inet", table, "in", "tcp", "dport", str(port), "numgen", "inc",
                        "mod", str(loss_every), "==", "0", "drop"], check=True)

        def drain():
            conn, _ = server.accept()
            with conn:
                while conn.recv(1 << 16):
                    pass

        reader = threading.Thread(target=run_in_netns, args=(pair.ns_a, drain))
        reader.start()
        with socket.create_connection((pair.ip4_a, port)) as client:
            chunk = b"t" * (1 << 20)
            for _ in range(megabytes):
                client.sendall(chunk)
        reader.join(join)
    finally:
        subprocess.run([*nft, "delete", "table", "inet", table], capture_output=True)
        server.close()


def _free_subnet() -> int:
    """A 198.18.<n>.0/24 no interface of this namespace uses: test runs in parallel must not share one."""
    used = set(re.findall(r"198\.18\.(\d+)\.", ip("-4", "-o", "addr", "show", check=False).stdout))
    start = next(_counter) + (os.getpid() % 50) * 4
    for i in range(250):
        n = (start + i) % 250 + 1
        if str(n) not in used:
            return n
    raise AssertionError("every 198.18.<n>.0/24 test subnet is in use: stale test interfaces? (ip -o addr)")


def _kernel_ready() -> None:
    need(os.geteuid() == 0, "kernel tests need root")
    need(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    probe = f"xtprobe{os.getpid()}"
    ok = ip("netns", "add", probe, check=False).returncode == 0
    if ok:
        ip("netns", "del", probe, check=False)
    need(ok, "cannot create network namespaces here")


@pytest.fixture
def veth():
    """A fresh pair of test hosts joined by a veth; removed afterwards, whatever happened."""
    _kernel_ready()
    pair = VethPair(tag=uuid.uuid4().hex[:6], n=_free_subnet())
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()
