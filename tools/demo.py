"""`make demo`: XTrace's main job on this one machine, with no cluster.

1. makes a test host (a network namespace) joined to this machine by a veth pair, and a small RDMA
   sysfs tree (a RoCE port and an InfiniBand port) whose counters it moves every second,
2. starts a local VictoriaMetrics (the release `make vm` builds, tools/vm/build.sh; temporary data dir,
   127.0.0.1),
3. runs the real `xtrace-agent` twice: XDP on this machine's end of the veth, and `-m nccl` on the tree,
   both pushing by remote write,
4. sends known frames from the test host every second (UDP/IPv4, UDP/IPv6, a VLAN-tagged frame, RoCEv2),
   and from this machine towards it (counted as egress), and prints, one block per report, what it
   sent next to what the agents counted,
5. draws the Traffic and RDMA dashboards' panel queries over the run into a PNG (path printed),
6. shows what the operator would create for a sample XTraceMonitor,
7. removes everything it made, whatever happened.

Self-contained on purpose: the tests have their own helpers, and neither imports the other.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
AGENT = os.path.join(BIN, "xtrace-agent")
INTERVAL = 1.0
ROUNDS = 10
NS, DEV_A, DEV_B = f"xtdemo{os.getpid() % 10000}", f"xda{os.getpid() % 10000}", f"xdb{os.getpid() % 10000}"
MAC_A, MAC_B = bytes.fromhex("020000d00001"), bytes.fromhex("020000d00002")
IP4_A, IP4_B, IP6_A, IP6_B = "198.18.250.1", "198.18.250.2", "fd00:250::1", "fd00:250::2"
TTY = sys.stdout.isatty()


def style(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if TTY else text


def say(text: str) -> None:
    print(style(f"== {text}", "1"), flush=True)


# --- frames (built here, so that what was sent is known to the byte) -----------------------------
def _sum16(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, vlan: int | None = None) -> bytes:
    v6 = ":" in src
    family = socket.AF_INET6 if v6 else socket.AF_INET
    s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    length = 8 + len(payload)
    pseudo = s + d + (struct.pack("!IxxxB", length, 17) if v6 else struct.pack("!xBH", 17, length))
    checksum = _sum16(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    l4 = struct.pack("!HHHH", sport, dport, length, checksum) + payload
    if v6:
        ip, ethertype = struct.pack("!IHBB", 6 << 28, length, 17, 64) + s + d + l4, 0x86DD
    else:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0, s, d)
        ip, ethertype = head[:10] + struct.pack("!H", _sum16(head)) + head[12:] + l4, 0x0800
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return MAC_B + MAC_A + tag + struct.pack("!H", ethertype) + ip


def roce_frame(opcode: int, dest_qp: int, payload: bytes) -> bytes:
    bth = struct.pack("!BBHII", opcode, 0, 0xFFFF, dest_qp, 0)  # InfiniBand base transport header
    return udp_frame(IP4_A, IP4_B, 49152, 4791, bth + payload)


# name -> (frame, frames per round at rate 1, what to mark it with)
FLOWS = {
    f"{IP4_A}:5000 -> {IP4_B}:9999 udp": (udp_frame(IP4_A, IP4_B, 5000, 9999, b"x" * 100), 10, ""),
    f"[{IP6_A}]:5001 -> [{IP6_B}]:9999 udp": (udp_frame(IP6_A, IP6_B, 5001, 9999, b"y" * 200), 5, ""),
    f"{IP4_A}:6000 -> {IP4_B}:6001 udp": (udp_frame(IP4_A, IP4_B, 6000, 6001, b"v" * 64, vlan=100), 2, "VLAN 100"),
    f"{IP4_A}:49152 -> {IP4_B}:4791 udp": (roce_frame(0x0A, 0x11, b"r" * 256), 4, "RoCEv2 opcode=10 qp=17"),
}
# sent by this machine (an AF_PACKET socket on its veth end), counted by the egress program; the
# destination MAC is nobody's, so the test host drops the frame and answers nothing
OUT = f"{IP4_B}:7000 -> {IP4_A}:7001 udp"
NOBODY = bytes.fromhex("020000d000ff")
OUT_FRAME = NOBODY + MAC_B + udp_frame(IP4_B, IP4_A, 7000, 7001, b"o" * 80)[12:]
OUT_PER_ROUND = 3
# the labels the agent gives each flow, to find it in a report
LABELS = {
    name: {"src_ip": src.rsplit(":", 1)[0].strip("[]"), "src_port": src.rsplit(":", 1)[1],
           "dst_ip": dst.rsplit(":", 1)[0].strip("[]"), "dst_port": dst.rsplit(":", 1)[1].split()[0]}
    for name in [*FLOWS, OUT] for src, dst in [name.split(" -> ")]
}


# --- the test host, the database, the RDMA tree --------------------------------------------------
def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_host() -> None:
    ip("netns", "add", NS)
    ip("link", "add", DEV_B, "address", MAC_B.hex(":"), "type", "veth", "peer", "name", DEV_A,
       "address", MAC_A.hex(":"), "netns", NS)
    # the test host's kernel stays as quiet as it can: no router solicitations
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{DEV_A}.router_solicitations=0",
                    f"net.ipv6.conf.{DEV_A}.accept_ra=0"], capture_output=True)
    ip("-n", NS, "addr", "add", f"{IP4_A}/24", "dev", DEV_A)
    ip("-n", NS, "addr", "add", f"{IP6_A}/64", "dev", DEV_A, "nodad")
    ip("-n", NS, "link", "set", DEV_A, "up")
    ip("addr", "add", f"{IP4_B}/24", "dev", DEV_B)
    ip("link", "set", DEV_B, "up")


def remove_host() -> None:
    subprocess.run(["ip", "link", "del", DEV_B], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


class Sender:
    """A process inside the test host writing frames on its veth end (AF_PACKET), batch by batch."""

    CHILD = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\n"
             "for line in sys.stdin:\n    [s.send(bytes.fromhex(f)) for f in line.split()]\n    print('ok', flush=True)\n")

    def __init__(self):
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS, "/usr/bin/python3", "-c", self.CHILD, DEV_A],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, frames: list[bytes]) -> None:
        self.proc.stdin.write(" ".join(f.hex() for f in frames) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the sender in the test host failed")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)


def vm_binary() -> str:
    """The single-node victoria-metrics of the release pinned in tools/vm/versions.env, built (or found in
    its cache) by tools/vm/build.sh, which prints its directory."""
    build = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vm", "build.sh")
    done = subprocess.run(["bash", build], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError("VictoriaMetrics is not built (make vm: the line above says why)")
    return os.path.join(done.stdout.strip(), "victoria-metrics")


class Database:
    """A throw-away single-node VictoriaMetrics (the built release) on a free local port."""

    def __init__(self):
        binary = vm_binary()
        self.version = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.strip()
        self.dir = tempfile.mkdtemp(prefix="xtrace-demo-vm-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.dir}",
                                      "-search.latencyOffset=0s", "-dedup.minScrapeInterval=1ms", "-loggerLevel=ERROR"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self._get("/health"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("VictoriaMetrics did not start")
            time.sleep(0.1)

    def _get(self, path: str, **params) -> dict | bytes | None:
        try:
            url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
            return json.loads(body) if path.startswith("/api/") else body
        except OSError:
            return None

    def range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        self._get("/internal/force_flush")
        answer = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return answer["data"]["result"] if answer else []

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Fabric:
    """A sysfs tree with one RoCE port (mlx5_0) and one InfiniBand port (mlx5_1), moved every round."""

    PORTS = {("mlx5_0", "Ethernet", "200 Gb/sec (4X HDR)"), ("mlx5_1", "InfiniBand", "400 Gb/sec (4X NDR)")}

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="xtrace-demo-sysfs-")
        self.values: dict[tuple[str, str, str], int] = {}
        for device, layer, rate in self.PORTS:
            base = os.path.join(self.root, "class", "infiniband", device)
            self._write(os.path.join(base, "node_type"), "1: CA")
            for name, text in (("state", "4: ACTIVE"), ("phys_state", "5: LinkUp"), ("rate", rate),
                               ("link_layer", layer)):
                self._write(os.path.join(base, "ports", "1", name), text)
            for name in ("port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets",
                         "symbol_error", "port_rcv_errors", "link_downed", "port_xmit_discards"):
                self.set(device, "counters", name, 0)
            for name in ("np_cnp_sent", "rp_cnp_handled", "out_of_sequence", "packet_seq_err"):
                self.set(device, "hw_counters", name, 0)

    @staticmethod
    def _write(path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{text}\n")

    def set(self, device: str, group: str, name: str, value: int) -> None:
        self.values[(device, group, name)] = value
        self._write(os.path.join(self.root, "class", "infiniband", device, "ports", "1", group, name), str(value))

    def move(self, rate: int) -> dict[str, int]:
        """One round of RDMA traffic; returns the bytes each device sent (the words x 4)."""
        sent = {}
        for device, words, cnps in (("mlx5_0", 2_500_000 * rate, 40 * rate), ("mlx5_1", 6_000_000 * rate, 0)):
            for group, name, delta in (("counters", "port_xmit_data", words), ("counters", "port_rcv_data", words // 2),
                                       ("counters", "port_xmit_packets", words // 1024),
                                       ("counters", "port_rcv_packets", words // 2048),
                                       ("hw_counters", "np_cnp_sent", cnps), ("hw_counters", "rp_cnp_handled", cnps // 4)):
                self.set(device, group, name, self.values[(device, group, name)] + delta)
            sent[device] = words * 4
        return sent


class Agent:
    """xtrace-agent with --output json: its reports, as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([AGENT, *args, "--interval", str(INTERVAL), "--output", "json",
                                      "--http-listen", "", "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
        self.reports: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.reports.append(json.loads(line))
                self.cond.notify_all()

    def after(self, when: float, timeout: float = 30.0) -> dict | None:
        """The first report collected after `when` (time.time()): it includes what happened before."""
        def found():
            return next((r for r in self.reports if r["timestamp"] > when), None)

        with self.cond:
            self.cond.wait_for(lambda: found() or self.proc.poll() is not None, timeout)
            return found()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)


def value(report: dict, name: str, **labels) -> float:
    return sum(s["value"] for s in report["samples"]
               if s["name"] == name and all(s["labels"].get(k) == v for k, v in labels.items()))


# --- one block per report -------------------------------------------------------------------------
def block(n: int, report: dict, sent: dict, rdma_report: dict | None, moved: dict) -> bool:
    """Print a report: per flow sent vs counted (cumulative), the interface, the RDMA ports. True if all match."""
    when = time.strftime("%H:%M:%S", time.localtime(report["timestamp"]))
    print(style(f"-- report {n} at {when}", "36"))
    print(f"   {'flow':<44} {'sent':>14} {'counted':>14}")
    ok = True
    for name, (frame, _, mark) in FLOWS.items():  # cumulative since the agent started
        packets = value(report, "xtrace_network_packets_total", interface=DEV_B, direction="ingress", **LABELS[name])
        bytes_ = value(report, "xtrace_network_bytes_total", interface=DEV_B, direction="ingress", **LABELS[name])
        want = (sent[name], sent[name] * len(frame))
        same = (packets, bytes_) == want
        ok &= same
        cell = f"{int(packets)} pk {int(bytes_)} B"
        tag = style(f"  [{mark}]", "33") if mark else ""
        print(f"   {name:<44} {f'{want[0]} pk {want[1]} B':>14} {cell if same else style(cell, '31'):>14}{tag}")
    frames = sum(sent[name] for name in FLOWS)
    counted = value(report, "xtrace_interface_packets_total", interface=DEV_B, direction="ingress")
    print(f"   {'interface ' + DEV_B + ' received (every frame)':<44} {f'{frames} pk':>14} {f'{int(counted)} pk':>14}")
    packets = value(report, "xtrace_network_packets_total", interface=DEV_B, direction="egress", **LABELS[OUT])
    bytes_ = value(report, "xtrace_network_bytes_total", interface=DEV_B, direction="egress", **LABELS[OUT])
    want = (sent[OUT], sent[OUT] * len(OUT_FRAME))
    ok &= (packets, bytes_) == want
    cell = f"{int(packets)} pk {int(bytes_)} B"
    print(f"   {OUT:<44} {f'{want[0]} pk {want[1]} B':>14} {cell if (packets, bytes_) == want else style(cell, '31'):>14}"
          + style("  [egress: sent by this machine]", "33"))
    ours = [{**LABELS[name], "interface": DEV_B, "direction": "ingress"} for name in FLOWS]
    for s in report["samples"]:  # what the test host's own kernel sent (IPv6 multicast reports, ...)
        labels = s["labels"]
        if s["name"] == "xtrace_network_packets_total" and labels.get("direction") == "ingress" and not any(
                all(labels.get(k) == v for k, v in flow.items()) for flow in ours):
            what = ("the `other` flow (frames not tracked per flow)" if labels["src_ip"] == "other" else
                    f"{labels['src_ip']} -> {labels['dst_ip']} proto={labels['protocol']}")
            print(style(f"     + not sent by the demo: {what}: {int(s['value'])} pk", "2"))
    if rdma_report:
        for device, total in moved.items():
            got = value(rdma_report, "xtrace_rdma_port_transmit_bytes_total", device=device, port="1")
            same = got == total
            ok &= same
            cell = f"{int(got)} B"
            print(f"   {'RDMA ' + device + '/1 transmit (4-octet words x 4)':<44} {f'{total} B':>14} "
                  f"{cell if same else style(cell, '31'):>14}")
    return ok


# --- the picture ------------------------------------------------------------------------------------
PANELS = [("traffic", "Bytes per second by node and interface"), ("traffic", "Protocol mix"),
          ("rdma", "Bytes per second per port"), ("rdma", "Congestion notifications per second")]


def picture(db: Database, start: float, end: float, path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), constrained_layout=True)
    drew = True
    for ax, (board, title) in zip(axes.flat, PANELS, strict=True):
        with open(os.path.join(ROOT, "deploy", "dashboards", f"xtrace-{board}.json")) as f:
            panel = next(p for p in json.load(f)["panels"] if p.get("title") == title)
        lines = 0
        for target in panel["targets"]:
            # 2 intervals instead of Grafana's 4 (a dashboard's usual $__rate_interval): the run is short
            expr = target["expr"].replace("$__rate_interval", f"{int(2 * INTERVAL)}s")
            for var in ("cluster", "node", "interface", "port", "device", "direction"):
                expr = expr.replace(f"${{{var}:raw}}", ".*").replace(f"${var}", ".*")
            for series in db.range(expr, start, end):
                label = target.get("legendFormat", "")
                for k, v in series["metric"].items():
                    label = label.replace("{{" + k + "}}", v)
                xs = [float(t) - start for t, _ in series["values"]]
                ax.plot(xs, [float(v) for _, v in series["values"]], label=label.replace("{{", "").replace("}}", ""))
                lines += 1
        drew &= lines > 0
        ax.set_title(f"{board}: {title}", fontsize=10)
        ax.set_xlabel("seconds into the demo")
        ax.set_ylabel(panel["fieldConfig"]["defaults"].get("unit", ""))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"XTrace demo: the dashboards' queries over the run ({db.version})")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drew


def operator_preview() -> None:
    sample = os.path.join(ROOT, "deploy", "manifests", "samples", "xdp.yaml")
    say(f"operator: xtrace-operator render -f {os.path.relpath(sample)}")
    out = subprocess.run([os.path.join(BIN, "xtrace-operator"), "render", "-f", sample],
                         capture_output=True, text=True).stdout
    for doc in out.split("\n---\n"):
        kind = next((line.split(": ", 1)[1] for line in doc.splitlines() if line.startswith("kind:")), None)
        name = next((line.split(": ", 1)[1] for line in doc.splitlines() if line.startswith("  name:")), None)
        if kind:
            print(f"    {kind}/{name}")


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it creates a network namespace and attaches XDP)", file=sys.stderr)
        return 1
    db = sender = xdp = nccl = fabric = None
    ok = True
    try:
        say(f"test host: namespace {NS} <-> veth {DEV_B} on this machine")
        make_host()
        db = Database()
        say(f"VictoriaMetrics {db.version} (built by make vm) on {db.url}")
        fabric = Fabric()
        env_args = ("--remote-write-url", f"{db.url}/api/v1/write")
        say(f"agents: xtrace-agent -i {DEV_B} --direction ingress,egress  and  "
            f"xtrace-agent -m nccl --sysfs {fabric.root}  (every {INTERVAL:g} s)")
        xdp = Agent("-i", DEV_B, "--direction", "ingress,egress", *env_args)
        nccl = Agent("-m", "nccl", "--sysfs", fabric.root, *env_args)
        if xdp.after(0, 60) is None or nccl.after(0, 30) is None:
            print("an agent did not start; see its error above", file=sys.stderr)
            return 1
        sender = Sender()
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        out.bind((DEV_B, 0))
        sent = dict.fromkeys([*FLOWS, OUT], 0)
        moved = {device: 0 for device, _, _ in Fabric.PORTS}
        start = time.time() - 2 * INTERVAL
        say("each second: frames from the test host and RDMA counters moved; each report, sent vs counted")
        for n in range(1, ROUNDS + 1):
            rate = 1 + n % 3  # vary the traffic, for the picture
            batch = []
            for name, (frame, per_round, _) in FLOWS.items():
                batch += [frame] * (per_round * rate)
                sent[name] += per_round * rate
            sender.send(batch)
            for _ in range(OUT_PER_ROUND * rate):
                out.send(OUT_FRAME)
            sent[OUT] += OUT_PER_ROUND * rate
            for device, b in fabric.move(rate).items():
                moved[device] += b
            done = time.time()
            ok &= block(n, xdp.after(done), sent, nccl.after(done), moved)
        say(f"agents stopped: exit codes {xdp.stop()} (xdp) and {nccl.stop()} (nccl)")
        time.sleep(1.0)  # the last pushes land
        end = time.time()
        path = os.path.join(tempfile.gettempdir(), "xtrace-demo.png")
        drew = picture(db, start, end, path)
        say(f"picture of the Traffic and RDMA panels' queries over the run: {path}")
        operator_preview()
        ok &= drew and xdp.proc.returncode == 0 and nccl.proc.returncode == 0
        say("all counted as sent" if ok else style("some counts differ from what was sent (red above)", "31"))
        return 0 if ok else 1
    except RuntimeError as e:  # a part that would not start: one line, the cleanup below still runs
        print(f"make demo: {e}", file=sys.stderr)
        return 1
    finally:
        for agent in (xdp, nccl):
            if agent and agent.proc.poll() is None:
                agent.proc.kill()
        if sender:
            sender.close()
        if db:
            db.stop()
        if fabric:
            shutil.rmtree(fabric.root, ignore_errors=True)
        remove_host()
        say("cleaned up: namespace, veth, sysfs tree and VictoriaMetrics removed")


if __name__ == "__main__":
    raise SystemExit(main())
