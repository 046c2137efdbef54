"""XTrace's agent beside NetObserv's (its Go peer) on the same traffic: user CPU per packet, in-kernel
ns per packet, steady and peak RSS, and whether each counted every packet; XTrace / peer printed.

    namespace a (sender) ──veth──► this namespace: dev b, the agent under test on it
                                    XTrace: XDP -> remote write -> a local receiver (127.0.0.1)
                                    peer:   TC  -> gRPC         -> a local collector (127.0.0.1)

UDP at a fixed rate cycled through N flows (20k and 100k), 5 s intervals, every flow exported by
both (XTrace: xdp.maxFlows and the flow table sized for N; the peer: CACHE_MAX_FLOWS, SAMPLING=1).
The agents run one after the other on the same veth and the same traffic, never at once: this
machine has 2 cores and the sender takes most of one, so two agents at once would measure each
other. Both receivers are minimal and local (test doubles speaking the real protocols): XTrace's
accepts remote write and keeps only the bodies of its last report, which it decodes to check the
counts; the peer's is a gRPC server with the peer's own `pbflow.Collector/Send`, whose messages are
built at run time from the descriptor in the peer's source (nothing generated is kept).

The peer: `tools/peer/build.sh` builds NetObserv's agent from its source tarball into the cache;
XTRACE_PEER_BIN names a binary built elsewhere (then counts are checked only if the source is
there for its proto). Neither: one line and exit 0 (skipped).
"""

from __future__ import annotations

import argparse
import ctypes
import http.server
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchlib import status_kib  # noqa: E402

from tests.helpers.netns import AGENT, VethPair, _free_subnet, run_in_netns, xdp_prog  # noqa: E402
from xtrace_agent.sinks import prompb  # noqa: E402
from xtrace_agent.xdp import libbpf  # noqa: E402

FLOWS = (20_000, 100_000)
RATE = 100_000  # packets/s, the same for both agents
INTERVAL = 5.0
WARMUP = int(os.environ.get("XTRACE_BENCH_WARMUP", 2))  # intervals before measuring (label caches, the first interval's allocations)
MEASURE = int(os.environ.get("XTRACE_BENCH_MEASURE", 6))  # intervals measured
PAYLOAD = b"x" * 64
FIRST_PORT = 10000
PORTS_PER_SOCKET = 50000
PEER_COMMIT = "56a7d35"
TICK = os.sysconf("SC_CLK_TCK")


# --- the peer ------------------------------------------------------------------------------------
def peer_binary() -> str | None:
    """The peer's binary: XTRACE_PEER_BIN, else built (once, cached) by tools/peer/build.sh."""
    given = os.environ.get("XTRACE_PEER_BIN")
    if given:
        return given if os.access(given, os.X_OK) else None
    out = subprocess.run(["bash", os.path.join(ROOT, "tools", "peer", "build.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "peer build failed")
        return None
    return out.stdout.strip()


def peer_messages(tmp: str):
    """(Records, CollectorReply) classes made from the descriptor compiled into the peer's
    pkg/pbflow/flow.pb.go, unpacked from its source tarball into `tmp`; None without the source."""
    src = os.environ.get("XTRACE_PEER_SRC_DIR") or _default_src_dir()
    tarball = os.path.join(src or "", f"netobserv-ebpf-agent-{PEER_COMMIT}-src.tar.xz")
    if not os.path.isfile(tarball):
        return None
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("pkg/pbflow/flow.pb.go"))
        text = tar.extractfile(member).read().decode()
    with open(os.path.join(tmp, "flow.pb.go"), "w") as f:
        f.write(text)
    literal = re.search(r"rawDesc = \[\]byte\{(.*?)\n\}", text, re.S).group(1)
    raw = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", literal))
    from google.protobuf import descriptor_pool, duration_pb2, message_factory, timestamp_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    try:
        pool.AddSerializedFile(raw)
    except TypeError:  # already added by an earlier call in this process
        pass
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("pbflow.Records")), get(pool.FindMessageTypeByName("pbflow.CollectorReply"))


def _default_src_dir() -> str | None:
    """Where tools/peer/build.sh looks: ../shared/third_party beside the repository (the main
    checkout's, for a git worktree)."""
    common = subprocess.run(["git", "-C", ROOT, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                            capture_output=True, text=True).stdout.strip()
    for d in (os.path.join(ROOT, "..", "shared", "third_party"),
              os.path.join(os.path.dirname(common), "..", "shared", "third_party") if common else ""):
        if d and os.path.isdir(d):
            return d
    return None


class PeerCollector:
    """A gRPC server answering the peer's `pbflow.Collector/Send`; keeps the raw messages (decoding
    them while the peer runs would take CPU from the run measured) and sums them afterwards."""

    def __init__(self, messages):
        from concurrent import futures

        import grpc

        self.records, reply = messages if messages else (None, None)
        self.bodies: list[bytes] = []
        empty = reply().SerializeToString() if reply else b""

        def send(body, context):
            self.bodies.append(body)
            return empty

        handler = grpc.method_handlers_generic_handler("pbflow.Collector", {
            "Send": grpc.unary_unary_rpc_method_handler(send, request_deserializer=None, response_serializer=None)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                  options=[("grpc.max_receive_message_length", 256 << 20)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def counted(self, dst: str) -> int | None:
        """Packets the peer exported for UDP flows to `dst` (records are per-interval deltas)."""
        if self.records is None:
            return None
        want = int.from_bytes(socket.inet_aton(dst), "big")
        total = 0
        for body in self.bodies:
            for r in self.records.FromString(body).entries:
                if r.network.dst_addr.ipv4 == want and r.transport.protocol == 17:
                    total += r.packets
        return total

    def close(self) -> None:
        self.server.stop(0)


# --- XTrace's receiver ------------------------------------------------------------------------------
class RemoteWriteReceiver(http.server.ThreadingHTTPServer):
    """A remote-write endpoint on 127.0.0.1 that accepts and discards, except after keep() (the
    agent's last report, whose cumulative counters are checked against what was sent)."""

    daemon_threads = True

    def __init__(self):
        self.kept: list[bytes] = []
        self.keeping = False
        self.bodies = 0

        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies += 1
                if receiver.keeping:
                    receiver.kept.append(body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def counted(self, dst: str, iface: str) -> tuple[int, int]:
        """(packets in UDP flows to `dst`, packets in `other`) on `iface`, the newest value per series."""
        newest: dict[bytes, float] = {}
        for body in self.kept:
            for labels, points in prompb.decode_write_request(prompb.decompress(body)).items():
                newest[labels] = max([newest.get(labels, 0.0)] + [v for v, _ in points])
        flows = other = 0
        for labels, value in newest.items():
            pairs = dict(prompb.decode_labels(labels))
            if pairs.get("__name__") != "xtrace_network_packets_total" or pairs.get("interface") != iface:
                continue
            if pairs.get("dst_ip") == dst and pairs.get("protocol") == "17":
                flows += int(value)
            elif pairs.get("dst_ip") == "other":
                other += int(value)
        return flows, other


# --- traffic ---------------------------------------------------------------------------------------
class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint8 * 4),
                ("zero", ctypes.c_uint8 * 8)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def send(ns: str, dst: str, rate: int, flows: int, seconds: float) -> None:
    """The sender (a process of its own, in namespace `ns`): `rate` UDP packets/s cycled through
    `flows` flows (destination ports x source sockets), 1,000 packets per sendmmsg(2) so that the
    sender's own cost is the kernel's; prints how many it sent."""
    libc = ctypes.CDLL(None, use_errno=True)
    nsock = -(-flows // PORTS_PER_SOCKET)
    payload = ctypes.create_string_buffer(PAYLOAD, len(PAYLOAD))
    iov = _Iovec(ctypes.addressof(payload), len(PAYLOAD))
    per = [list(range(k, flows, nsock)) for k in range(nsock)]  # flow i: socket i % nsock, port i // nsock
    addrs = [(_SockaddrIn * len(p))() for p in per]
    msgs = [(_Mmsghdr * len(p))() for p in per]
    for k, flows_k in enumerate(per):
        for j, i in enumerate(flows_k):
            a = addrs[k][j]
            a.family, a.port, a.addr[:] = socket.AF_INET, socket.htons(FIRST_PORT + i // nsock), socket.inet_aton(dst)
            m = msgs[k][j].hdr
            m.name, m.namelen, m.iov, m.iovlen = ctypes.addressof(a), ctypes.sizeof(a), ctypes.pointer(iov), 1

    def body():
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(nsock)]
        sent, began, batch, pos = 0, time.monotonic(), 1000, [0] * nsock
        while (now := time.monotonic()) < began + seconds:
            ahead = began + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
            k = (sent // batch) % nsock
            n = min(batch, len(per[k]) - pos[k])
            done = libc.sendmmsg(socks[k].fileno(), ctypes.byref(msgs[k], pos[k] * ctypes.sizeof(_Mmsghdr)), n, 0)
            if done < 0:
                raise OSError(ctypes.get_errno(), "sendmmsg")
            sent += done
            pos[k] = (pos[k] + done) % len(per[k])
        return sent
    print(json.dumps({"sent": run_in_netns(ns, body)}), flush=True)


def rx_packets(dev: str) -> int:
    with open(f"/sys/class/net/{dev}/statistics/rx_packets") as f:
        return int(f.read())


# --- measuring one agent -----------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[int, int]:
    """(user, system) CPU ticks of every thread of `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def bpf_stats(ids: list[int]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over programs (kernel.bpf_stats_enabled must be 1)."""
    ns = cnt = 0
    for i in ids:
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)],
                                         capture_output=True, text=True).stdout or "{}")
        ns, cnt = ns + info.get("run_time_ns", 0), cnt + info.get("run_cnt", 0)
    return ns, cnt


def tc_prog_ids(dev: str) -> list[int]:
    """Programs on `dev`'s ingress TC hooks (the peer's): tcx links (which this bpftool does not
    list under `net`), else clsact filters."""
    try:
        ids = libbpf.tcx_query(socket.if_nametoindex(dev), libbpf.BPF_TCX_INGRESS)
    except OSError:
        ids = []
    if ids:
        return ids
    out = json.loads(subprocess.run(["bpftool", "-j", "net", "show", "dev", dev], capture_output=True,
                                    text=True).stdout or "[]")
    return [p["id"] for entry in out for p in entry.get("tc", []) if p.get("kind", "").endswith("ingress")]


def run_agent(proc: subprocess.Popen, attached, pair: VethPair, flows: int, rate: int) -> dict:
    """Traffic while `proc` watches; its CPU, RSS and kernel cost over the measured intervals."""
    ids = attached()
    deadline = time.monotonic() + 60
    while not ids:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not attach (exit {proc.poll()})")
        time.sleep(0.05)
        ids = attached()
    rx0 = rx_packets(pair.dev_b)
    seconds = (WARMUP + MEASURE) * INTERVAL + 1
    sender = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--send", pair.ns_a, pair.ip4_b,
                               str(rate), str(flows), str(seconds)], stdout=subprocess.PIPE, text=True)
    time.sleep(WARMUP * INTERVAL)
    cpu0, k0, t0 = proc_stat(proc.pid), bpf_stats(ids), time.monotonic()
    rx_m0 = rx_packets(pair.dev_b)
    rss = []
    while time.monotonic() - t0 < MEASURE * INTERVAL:
        time.sleep(1.0)
        rss.append(status_kib(proc.pid, "VmRSS"))
    cpu1, k1, t1 = proc_stat(proc.pid), bpf_stats(ids), time.monotonic()
    rx_m1 = rx_packets(pair.dev_b)
    sent = json.loads(sender.communicate(timeout=60)[0])["sent"]
    return {"sent": sent, "arrived": rx_packets(pair.dev_b) - rx0, "window_packets": rx_m1 - rx_m0,
            "seconds": t1 - t0, "user": (cpu1[0] - cpu0[0]) / TICK, "system": (cpu1[1] - cpu0[1]) / TICK,
            "kernel_ns": (k1[0] - k0[0]) / max(1, k1[1] - k0[1]), "steady_mib": statistics.median(rss) / 1024,
            "peak_mib": status_kib(proc.pid, "VmHWM") / 1024}


def measure_xtrace(pair: VethPair, flows: int, rate: int, tmp: str) -> dict:
    receiver = RemoteWriteReceiver()
    cfg = os.path.join(tmp, "xtrace.yaml")
    table = 1 << max(16, (flows * 5 // 4 - 1).bit_length())
    with open(cfg, "w") as f:
        json.dump({"interfaces": [pair.dev_b], "interval": INTERVAL, "output": "none", "httpListen": "",
                   "xdp": {"flowTableSize": table, "maxFlows": max(flows, 20000)},
                   "remoteWrite": [{"url": f"http://127.0.0.1:{receiver.server_port}/api/v1/write"}]}, f)
    proc = subprocess.Popen([AGENT, "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "xtrace.log"), "w"))
    try:
        result = run_agent(proc, lambda: [p["id"]] if (p := xdp_prog(pair.dev_b)) else [], pair, flows, rate)
        time.sleep(INTERVAL / 2)
        receiver.keeping = True  # the last report (on SIGTERM) holds every flow's final value
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        result["counted"], result["other"] = receiver.counted(pair.ip4_b, pair.dev_b)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.shutdown()


def measure_peer(binary: str, messages, pair: VethPair, flows: int, rate: int, tmp: str) -> dict:
    collector = PeerCollector(messages)
    env = {**os.environ, "INTERFACES": pair.dev_b, "EXPORT": "grpc", "TARGET_HOST": "127.0.0.1",
           "TARGET_PORT": str(collector.port), "AGENT_IP": pair.ip4_b, "SAMPLING": "1",
           "CACHE_ACTIVE_TIMEOUT": f"{INTERVAL:g}s", "CACHE_MAX_FLOWS": str(flows * 5 // 4),
           "DIRECTION": "ingress", "PB_STUB_TRACING": "1", "LOG_LEVEL": "warn"}
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "peer.log"), "w"))
    try:
        result = run_agent(proc, lambda: tc_prog_ids(pair.dev_b), pair, flows, rate)
        time.sleep(2.5 * INTERVAL)  # its last active-timeout eviction and export
        result["counted"], result["other"] = collector.counted(pair.ip4_b), 0
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        collector.close()


# --- the table --------------------------------------------------------------------------------------
def describe(name: str, r: dict) -> list[str]:
    per_kpkt = r["user"] / max(1, r["window_packets"]) * 1e9  # µs per 1,000 packets
    rate = r["window_packets"] / r["seconds"]
    counted = "n/a" if r["counted"] is None else f"{r['counted']:,}" + (f" (+{r['other']:,} other)" if r["other"] else "")
    exact = "n/a" if r["counted"] is None else ("yes" if r["counted"] + r["other"] == r["arrived"] else "NO")
    return [f"  {name} ({rate / 1000:.0f}k packets/s): user CPU {100 * r['user'] / r['seconds']:.1f} % of a core "
            f"({per_kpkt:.0f} µs / 1k packets, {1000 * r['user'] / (r['seconds'] / INTERVAL):.0f} ms per interval), "
            f"system {100 * r['system'] / r['seconds']:.1f} %; kernel {r['kernel_ns']:.0f} ns/packet; "
            f"RSS steady {r['steady_mib']:.0f} MiB, peak {r['peak_mib']:.0f} MiB",
            f"    sent {r['sent']:,}, arrived on the veth {r['arrived']:,}, counted {counted}: every packet {exact}"]


def ratios(x: dict, p: dict) -> list[str]:
    def per(r):
        return r["user"] / max(1, r["window_packets"])
    def interval(r):
        return r["user"] / r["seconds"]
    rows = [("user CPU per packet", per(x), per(p)), ("user CPU per interval", interval(x), interval(p)),
            ("in-kernel ns per packet", x["kernel_ns"], p["kernel_ns"]),
            ("steady RSS", x["steady_mib"], p["steady_mib"]), ("peak RSS", x["peak_mib"], p["peak_mib"])]
    out = [f"  XTrace / peer, {name}: x{a / b:.2f}" if b else f"  XTrace / peer, {name}: n/a" for name, a, b in rows]
    rx, rp = x["window_packets"] / x["seconds"], p["window_packets"] / p["seconds"]
    if abs(rx - rp) > 0.1 * max(rx, rp):  # a busy machine: the sender fell short in one run
        out.append(f"  (the rates differ, {rx / 1000:.0f}k and {rp / 1000:.0f}k packets/s: per packet, the agent's "
                   "per-interval work is spread over different counts; compare per interval)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=RATE)
    ap.add_argument("--flows", type=int, action="append")
    ap.add_argument("--send", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.send:
        ns, dst, rate, flows, seconds = args.send
        send(ns, dst, int(rate), int(flows), float(seconds))
        return 0
    if os.geteuid() != 0:
        print("bench_peer needs root (XDP/TC on a veth, bpf_stats)")
        return 1
    binary = peer_binary()
    if binary is None:
        print("bench_peer: skipped (no NetObserv agent: no source tarball to build and no XTRACE_PEER_BIN)")
        return 0
    try:
        import grpc  # noqa: F401
    except ImportError:
        print("bench_peer: skipped (grpcio is not installed: make setup)")
        return 0
    stats = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    pair = VethPair(tag=f"pe{os.getpid() % 10000}", n=_free_subnet())
    pair.create()
    try:
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
        with tempfile.TemporaryDirectory() as tmp:
            messages = peer_messages(tmp)
            print(f"UDP at {args.rate:,} packets/s, {INTERVAL:g} s intervals, {MEASURE} measured after {WARMUP}; "
                  "one agent at a time on the same veth; XTrace -> a local remote-write receiver "
                  "(accepts, discards), peer -> a local gRPC collector")
            for flows in args.flows or FLOWS:
                x = measure_xtrace(pair, flows, args.rate, tmp)
                p = measure_peer(binary, messages, pair, flows, args.rate, tmp)
                print(f"{flows:,} flows")
                for line in describe("XTrace", x) + describe(f"NetObserv {PEER_COMMIT}", p) + ratios(x, p):
                    print(line)
    finally:
        subprocess.run(["sysctl", "-qw", f"kernel.bpf_stats_enabled={stats}"])
        pair.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
