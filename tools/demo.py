"""`make demo`: XTrace's main job on this one machine, with no cluster.

1. makes a test host (a network namespace) joined to this machine by a veth pair,
2. starts a local VictoriaMetrics (temporary data dir, 127.0.0.1),
3. runs the real `xtrace-agent` with XDP on this machine's end of the veth, pushing by remote write,
4. sends traffic from the test host (UDP/IPv4, UDP/IPv6, TCP, a VLAN-tagged frame, RoCEv2),
5. prints the flows as the agent counts them, then queries VictoriaMetrics for what arrived,
6. runs the nccl mode on a sample sysfs tree (RDMA counters) into the same database,
7. shows what the operator would create for a sample XTraceMonitor,
8. removes everything it made, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import frames  # noqa: E402
from tests.helpers.netns import AGENT, VethPair, xdp_prog  # noqa: E402
from tests.helpers.vm import VictoriaMetrics, free_port  # noqa: E402

INTERVAL = 1.0


def say(text: str) -> None:
    print(f"\033[1m== {text}\033[0m", flush=True)


def traffic(veth: VethPair, rounds: int) -> None:
    udp4 = veth.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind((veth.ip4_a, 5000))
    udp6 = veth.socket("a", socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind((veth.ip6_a, 5001))
    raw = veth.raw_socket()
    dst_mac, src_mac = veth.mac("b"), veth.mac("a")
    vlan = frames.ethernet(dst_mac, src_mac, frames.ipv4(veth.ip4_a, veth.ip4_b, frames.udp(6000, 6001, b"v" * 64)),
                           vlans=[100])
    roce = frames.ethernet(dst_mac, src_mac, frames.ipv4(
        veth.ip4_a, veth.ip4_b, frames.udp(49152, 4791, frames.roce_bth(opcode=0x0A, dest_qp=0x11) + b"r" * 256)))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((veth.ip4_b, 0))
    server.listen(4)
    port = server.getsockname()[1]

    def serve():
        while True:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    for _ in range(rounds):
        for _ in range(10):
            udp4.sendto(b"x" * 100, (veth.ip4_b, 9999))
        for _ in range(5):
            udp6.sendto(b"y" * 200, (veth.ip6_b, 9999))
        raw.send(vlan)
        raw.send(roce)
        tcp = veth.socket("a", socket.AF_INET, socket.SOCK_STREAM)
        tcp.connect((veth.ip4_b, port))
        tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
        tcp.recv(4096)
        tcp.close()
        time.sleep(INTERVAL)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it creates a network namespace and attaches XDP)", file=sys.stderr)
        return 1
    veth = VethPair(tag=f"d{os.getpid() % 10000}", n=77)
    data_dir = tempfile.mkdtemp(prefix="xtrace-demo-vm-")
    vm = VictoriaMetrics(data_dir, free_port())
    agent = None
    try:
        say(f"test host: namespace {veth.ns_a} <-> veth {veth.dev_b} on this machine")
        veth.create()
        say(f"VictoriaMetrics on {vm.url}")
        vm.start()
        say(f"agent: xtrace-agent -i {veth.dev_b} --interval {INTERVAL:g} --remote-write-url {vm.write_url}")
        agent = subprocess.Popen([AGENT, "-i", veth.dev_b, "--interval", str(INTERVAL), "--http-listen", "",
                                  "--remote-write-url", vm.write_url], stdout=subprocess.PIPE, text=True)
        printer = threading.Thread(target=lambda: [print("   ", line, end="", flush=True) for line in agent.stdout],
                                   daemon=True)
        printer.start()
        deadline = time.monotonic() + 60
        while not xdp_prog(veth.dev_b):
            if agent.poll() is not None or time.monotonic() > deadline:
                print("the agent did not attach; see its error above", file=sys.stderr)
                return 1
            time.sleep(0.1)
        say("traffic from the test host: UDP/IPv4, UDP/IPv6, TCP, VLAN 100, RoCEv2 (cumulative counts below)")
        traffic(veth, rounds=4)
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        printer.join(5)
        say("in VictoriaMetrics: sum by (src_ip, dst_ip, dst_port, protocol, traffic_type) (xtrace_network_packets_total)")
        result = settled(vm, "sum by (src_ip, dst_ip, dst_port, protocol, traffic_type) (xtrace_network_packets_total)")
        for series in sorted(result, key=lambda r: -float(r["value"][1])):
            m = series["metric"]
            dst = f"[{m.get('dst_ip')}]" if ":" in m.get("dst_ip", "") else m.get("dst_ip")
            print(f"    {m.get('src_ip')} -> {dst}:{m.get('dst_port')} proto={m.get('protocol')} "
                  f"type={m.get('traffic_type')}: {series['value'][1]} packets")
        say(f"{len(result)} flows queryable in VictoriaMetrics; agent exit code {agent.returncode}")
        rdma_ok = rdma(vm)
        operator_preview()
        return 0 if result and agent.returncode == 0 and rdma_ok else 1
    finally:
        if agent and agent.poll() is None:
            agent.kill()
        vm.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        veth.destroy()
        say("cleaned up: namespace, veth and VictoriaMetrics removed")


def rdma(vm: VictoriaMetrics) -> bool:
    """nccl mode on the test suite's sysfs tree (mlx5 IB and RoCE, a bond, iWARP, a down port)."""
    tree = os.path.join(ROOT, "tests", "fixtures", "sysfs")
    say(f"RDMA: xtrace-agent -m nccl --sysfs {os.path.relpath(tree)} --count 1 (port + mlx5 hw counters)")
    r = subprocess.run([AGENT, "-m", "nccl", "--sysfs", tree, "--count", "1", "--interval", "0.5",
                        "--http-listen", "", "--remote-write-url", vm.write_url], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        print("   ", line)
    series = settled(vm, 'count({__name__=~"xtrace_rdma_.*", device!=""})')
    count = series[0]["value"][1] if series else "0"
    say(f"{count} RDMA series in VictoriaMetrics; agent exit code {r.returncode}")
    return r.returncode == 0 and count != "0"


def operator_preview() -> None:
    """What the operator would create for a sample monitor (no cluster needed)."""
    sample = os.path.join(ROOT, "deploy", "manifests", "samples", "xdp.yaml")
    say(f"operator: xtrace-operator render -f {os.path.relpath(sample)}")
    out = subprocess.run([os.path.join(os.path.dirname(AGENT), "xtrace-operator"), "render", "-f", sample],
                         capture_output=True, text=True).stdout
    for doc in out.split("\n---\n"):
        kind = next((line.split(": ", 1)[1] for line in doc.splitlines() if line.startswith("kind:")), None)
        name = next((line.split(": ", 1)[1] for line in doc.splitlines() if line.startswith("  name:")), None)
        if kind:
            print(f"    {kind}/{name}")


def settled(vm: VictoriaMetrics, expr: str, timeout: float = 15.0) -> list[dict]:
    """The query's answer once ingestion has caught up (it is asynchronous): unchanged for 1 s."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        vm.force_flush()
        result = vm.query(expr)
        values = sorted((json.dumps(r["metric"], sort_keys=True), r["value"][1]) for r in result)
        if values == last or time.monotonic() > deadline:
            return result
        last = values
        time.sleep(1.0)




if __name__ == "__main__":
    raise SystemExit(main())


