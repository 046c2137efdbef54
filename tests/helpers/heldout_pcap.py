"""Replay a held-out capture through the real agent and compare its flows with an independent truth.

    .venv/bin/python -m tests.helpers.heldout_pcap [--pcap FILE] [--limit N]

The corpus (shared/heldout/tcpdump-frames.pcap.xz, see its SOURCE.md) holds real Ethernet frames
nobody on this team wrote, many malformed on purpose. This tool:

1. computes the ground truth with its own parser, written from the rules in SOURCE.md and sharing
   no code with the agent: per frame, the flow key it belongs to. Where the agent contract is
   silent (IP version, a third tag, AH, partial L4 header, IP length fields, more than 3 IPv6
   extension headers, a cut RoCEv2 BTH) it parses the frame every such way; if the ways disagree, every key the
   frame could land in is left unchecked, as are keys with both ports 0;
2. sends every frame, byte for byte, from one network namespace over a veth to another, where
   the real `xtrace-agent` binary watches with XDP (IPv6 is disabled on both ends and no address
   is configured, so no frame but the corpus's crosses the veth);
3. compares: every checked flow's packets and bytes exactly, no TCP/UDP flow the truth does not
   know, and the interface totals (every frame, every byte).

Exit 0 when everything matches, 1 otherwise (the differences are listed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import lzma
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
DEFAULT_PCAP = os.path.join(os.path.dirname(ROOT), "shared", "heldout", "tcpdump-frames.pcap.xz")
AGENT = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")

Key = tuple[str, str, int, int, int]  # src, dst, sport, dport, proto


# --- the capture -----------------------------------------------------------------------------
def read_pcap(path: str) -> list[bytes]:
    """Frames of a classic little- or big-endian pcap, optionally xz-compressed (captured bytes only)."""
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise SystemExit(f"{path}: not a classic pcap file")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        off += 16
        frames.append(data[off:off + incl])
        off += incl
    return frames


# --- the truth ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Way:
    """One reading of the places where the agent contract is silent."""

    check_version: bool = True
    tpids: tuple[int, ...] = (0x8100, 0x88A8)
    max_tags: int = 2
    walk_ah: bool = False
    partial_l4: bool = False
    bound_by_ip_length: bool = False
    max_ext: int = 8
    roce_needs_bth: bool = False  # a UDP/4791 packet whose 12-byte BTH is cut: no flow


WAYS = (
    Way(),
    Way(check_version=False),
    Way(tpids=(0x8100, 0x88A8, 0x9100), max_tags=3),
    Way(walk_ah=True),
    Way(partial_l4=True),
    Way(bound_by_ip_length=True),
    Way(max_ext=3),
    Way(roce_needs_bth=True),
)

IPV6_EXT = (0, 43, 44, 60)


def flow_key(f: bytes, way: Way) -> Key | None:
    """The flow a frame belongs to under one reading, or None when it is not a TCP/UDP flow."""
    end = len(f)
    if end < 14:
        return None
    off, ethertype, tags = 14, struct.unpack_from("!H", f, 12)[0], 0
    while ethertype in way.tpids:
        if tags == way.max_tags or off + 4 > end:
            return None
        ethertype = struct.unpack_from("!H", f, off + 2)[0]
        off += 4
        tags += 1
    if ethertype == 0x0800:
        if off + 20 > end or (way.check_version and f[off] >> 4 != 4):
            return None
        ihl = (f[off] & 0x0F) * 4
        if way.bound_by_ip_length:
            end = min(end, off + struct.unpack_from("!H", f, off + 2)[0])
        if ihl < 20 or off + ihl > end:
            return None
        if struct.unpack_from("!H", f, off + 6)[0] & 0x1FFF:
            return None  # a non-first fragment: no ports
        proto = f[off + 9]
        src, dst = str(ipaddress.IPv4Address(f[off + 12:off + 16])), str(ipaddress.IPv4Address(f[off + 16:off + 20]))
        l4 = off + ihl
    elif ethertype == 0x86DD:
        if off + 40 > end or (way.check_version and f[off] >> 4 != 6):
            return None
        if way.bound_by_ip_length:
            end = min(end, off + 40 + struct.unpack_from("!H", f, off + 4)[0])
        src, dst = str(ipaddress.IPv6Address(f[off + 8:off + 24])), str(ipaddress.IPv6Address(f[off + 24:off + 40]))
        proto, l4, walked = f[off + 6], off + 40, 0
        while proto in IPV6_EXT or (way.walk_ah and proto == 51):
            if walked == way.max_ext or l4 + 8 > end:
                return None
            if proto == 44:
                if struct.unpack_from("!H", f, l4 + 2)[0] >> 3:
                    return None
                size = 8
            elif proto == 51:
                size = (f[l4 + 1] + 2) * 4
            else:
                size = (f[l4 + 1] + 1) * 8
            proto = f[l4]
            l4 += size
            walked += 1
    else:
        return None
    need = {6: 20, 17: 8}.get(proto)
    if need is None:
        return None
    if way.partial_l4:
        need = 4
    if l4 + need > end:
        return None
    sport, dport = struct.unpack_from("!HH", f, l4)
    if way.roce_needs_bth and proto == 17 and dport == 4791 and l4 + 8 + 12 > end:
        return None
    return (src, dst, sport, dport, proto)


def truth(frames: list[bytes]) -> tuple[dict[Key, list[int]], set[Key]]:
    """(checked flows -> [packets, bytes], keys left unchecked)."""
    counted: dict[Key, list[int]] = {}
    unchecked: set[Key] = set()
    for f in frames:
        keys = {flow_key(f, way) for way in WAYS}
        if len(keys) > 1:
            unchecked |= {k for k in keys if k}
            continue
        (key,) = keys
        if key is None:
            continue
        cur = counted.setdefault(key, [0, 0])
        cur[0] += 1
        cur[1] += len(f)
    unchecked |= {k for k in counted if k[2] == 0 and k[3] == 0}
    return {k: v for k, v in counted.items() if k not in unchecked}, unchecked


# --- the agent -------------------------------------------------------------------------------
def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


class Hosts:
    """Two namespaces joined by a veth, no addresses, IPv6 off: only our frames cross it."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns_a, self.ns_b = f"xth{tag}-a", f"xth{tag}-b"
        self.dev_a, self.dev_b = f"xha{tag}", f"xhb{tag}"

    def __enter__(self) -> Hosts:
        ip("netns", "add", self.ns_a)
        ip("netns", "add", self.ns_b)
        ip("-n", self.ns_a, "link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b, "netns", self.ns_b)
        for ns, dev in ((self.ns_a, self.dev_a), (self.ns_b, self.dev_b)):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"],
                           check=True, capture_output=True)
            ip("-n", ns, "link", "set", dev, "up")
        return self

    def __exit__(self, *exc) -> None:
        ip("netns", "del", self.ns_a, check=False)
        ip("netns", "del", self.ns_b, check=False)

    def sender(self) -> socket.socket:
        box: dict = {}

        def body():
            import ctypes
            fd = os.open(f"/run/netns/{self.ns_a}", os.O_RDONLY)
            ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000)
            os.close(fd)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((self.dev_a, 0))
            box["s"] = s

        t = threading.Thread(target=body)
        t.start()
        t.join()
        return box["s"]


def replay(frames: list[bytes]) -> tuple[dict[Key, list[int]], tuple[int, int], str]:
    """Send the frames past a running agent; return its TCP/UDP flows by 5-tuple and its interface totals."""
    with Hosts() as hosts:
        agent = subprocess.Popen(["ip", "netns", "exec", hosts.ns_b, AGENT, "-i", hosts.dev_b, "--interval", "0.5",
                                  "--output", "json", "--http-listen", ""],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out_lines: list[str] = []
        reader = threading.Thread(target=lambda: out_lines.extend(agent.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while not _xdp_attached(hosts.ns_b, hosts.dev_b):
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"agent did not attach: {agent.stderr.read().strip()}")
                time.sleep(0.05)
            sender = hosts.sender()
            for i, frame in enumerate(frames):
                sender.send(frame)
                if i % 32 == 31:
                    time.sleep(0.0005)  # the veth's XDP ring holds 256 frames: do not overrun it
            time.sleep(1.0)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            reader.join(10)
            err = agent.stderr.read()
    reports = [json.loads(line) for line in out_lines if line.strip()]
    if agent.returncode != 0 or not reports:
        raise SystemExit(f"agent failed (exit {agent.returncode}): {err.strip()}")
    flows: dict[Key, list[int]] = {}
    values: dict[tuple, dict[str, float]] = {}
    totals = [0, 0]
    for s in reports[-1]["samples"]:
        lab = s["labels"]
        if s["name"] in ("xtrace_network_packets_total", "xtrace_network_bytes_total"):
            values.setdefault(tuple(sorted(lab.items())), {})[s["name"]] = s["value"]
        elif s["name"] == "xtrace_interface_packets_total":
            totals[0] += int(s["value"])
        elif s["name"] == "xtrace_interface_bytes_total":
            totals[1] += int(s["value"])
    for labels, v in values.items():
        lab = dict(labels)
        if lab.get("protocol") not in ("6", "17") or lab.get("src_ip") == "other":
            continue
        key = (lab["src_ip"], lab["dst_ip"], int(lab["src_port"]), int(lab["dst_port"]), int(lab["protocol"]))
        cur = flows.setdefault(key, [0, 0])
        cur[0] += int(v.get("xtrace_network_packets_total", 0))
        cur[1] += int(v.get("xtrace_network_bytes_total", 0))
    return flows, (totals[0], totals[1]), err


def _xdp_attached(ns: str, dev: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", "dev", dev], capture_output=True, text=True).stdout
    return bool(out and json.loads(out)[0].get("xdp"))


# --- comparison ------------------------------------------------------------------------------
def compare(frames: list[bytes]) -> tuple[list[str], dict[str, int]]:
    """Differences between the agent and the truth (empty: all good), and a summary."""
    expected, unchecked = truth(frames)
    flows, totals, _ = replay(frames)
    problems: list[str] = []
    for key, want in sorted(expected.items()):
        got = flows.get(key, [0, 0])
        if got != want:
            problems.append(f"flow {_fmt(key)}: agent {got[0]} packets/{got[1]} bytes, truth {want[0]}/{want[1]}")
    for key in sorted(set(flows) - set(expected) - unchecked):
        if key[2] == 0 and key[3] == 0:
            continue
        problems.append(f"flow {_fmt(key)}: agent counted {flows[key]} but the truth has no such flow")
    want_totals = (len(frames), sum(len(f) for f in frames))
    if totals != want_totals:
        problems.append(f"interface totals: agent {totals[0]} frames/{totals[1]} bytes, sent {want_totals[0]}/{want_totals[1]}")
    summary = {"frames": len(frames), "bytes": want_totals[1], "flows_checked": len(expected),
               "frames_in_checked_flows": sum(v[0] for v in expected.values()), "keys_unchecked": len(unchecked),
               "agent_flows_tcp_udp": len(flows)}
    return problems, summary


def _fmt(key: Key) -> str:
    src, dst, sport, dport, proto = key
    return f"{src}:{sport} -> {dst}:{dport} proto={proto}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pcap", default=DEFAULT_PCAP)
    p.add_argument("--limit", type=int, default=0, help="only the first N frames")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("heldout_pcap needs root (network namespaces and XDP)", file=sys.stderr)
        return 1
    frames = read_pcap(args.pcap)
    if args.limit:
        frames = frames[:args.limit]
    problems, summary = compare(frames)
    for k, v in summary.items():
        print(f"{k:<26} {v}")
    for line in problems[:50]:
        print("MISMATCH", line)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more")
    print("OK: the agent matches the truth" if not problems else f"FAILED: {len(problems)} differences")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
