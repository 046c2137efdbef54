"""Remote-write benchmark: encode+compress speed, bytes per sample, push throughput to VictoriaMetrics.

    /work/main/.venv/bin/python bench/bench_remote_write.py

Rows: the hand-written encoder (what the agent uses) and the protobuf library with code
generated from remote.proto (the alternative), on 10k and 100k flow samples of one interval
with realistic labels; median of 5 runs after a warm-up interval (labels cached, as in steady
state). Push throughput starts a VictoriaMetrics on 127.0.0.1 when the binary is installed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.remote_write import remote_pb2
from xtrace_agent.config import AgentConfig, RemoteWriteTarget  # noqa: E402
from xtrace_agent.health import Health  # noqa: E402
from xtrace_agent.samples import Report, Sample  # noqa: E402
from xtrace_agent.sinks import prompb  # noqa: E402
from xtrace_agent.sinks.remote_write import RemoteWriteSink  # noqa: E402

EXTRA = {"node": "gpu-node-017", "monitor": "default", "namespace": "xtrace"}
T0 = 1_700_000_000.0


def interval(flows: int, step: int) -> list[Sample]:
    out = []
    for i in range(flows // 2):
        labels = {"interface": "eth0", "src_ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                  "dst_ip": f"10.200.{i % 7}.{i % 250 + 1}", "src_port": str(1024 + i % 60000), "dst_port": "4791",
                  "protocol": "17", "traffic_type": "roce"}
        packets = (step + 1) * (1000 + i * 37)
        out.append(Sample("xtrace_network_packets_total", labels, float(packets), T0 + 5 * step))
        out.append(Sample("xtrace_network_bytes_total", labels, float(packets * 1083), T0 + 5 * step))
    return out


def hand(samples, enc):
    return prompb.compress(enc.encode_samples(samples))


def library(samples, enc):
    req = remote_pb2.WriteRequest()
    for s in samples:
        ts = req.timeseries.add()
        for k, v in prompb.series_pairs(s.name, s.labels, EXTRA):
            ts.labels.add(name=k, value=v)
        ts.samples.add(value=s.value, timestamp=round(s.timestamp * 1000))
    return prompb.compress(req.SerializeToString())


def rate(fn, n, warm, runs=5):
    enc = prompb.SeriesEncoder(EXTRA)
    fn(warm, enc)
    times, body = [], b""
    for r in range(runs):
        samples = [s._replace(timestamp=s.timestamp + r + 1) for s in warm]
        t = time.perf_counter()
        body = fn(samples, enc)
        times.append(time.perf_counter() - t)
    return n / statistics.median(times), len(body) / n


def spool_bytes(n: int, intervals: int = 6) -> float:
    enc = prompb.SeriesEncoder(EXTRA)
    entries = [e for step in range(intervals) for e in enc.entries(interval(n, step))]
    body = prompb.compress(prompb.encode_write_request(prompb.group(entries)))
    return len(body) / len(entries)


def push(n: int, intervals: int) -> float | None:
    binary = shutil.which("victoria-metrics")
    if not binary:
        return None
    from tests.helpers.vm import VictoriaMetrics, free_port

    work = tempfile.mkdtemp(prefix="xtrace-bench-vm-")
    vm = VictoriaMetrics(os.path.join(work, "data"), free_port())
    vm.start()
    try:
        health = Health()
        sink = RemoteWriteSink(RemoteWriteTarget(url=vm.write_url, name="bench"), AgentConfig(node="bench"), health)
        reports = [interval(n, step) for step in range(intervals)]
        t = time.perf_counter()
        for samples in reports:
            sink.write(Report(samples[0].timestamp, samples))
        while health.get("xtrace_remote_write_samples_sent_total", {"target": "bench"}) < n * intervals:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t
        sink.close(5)
        return n * intervals / elapsed
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    rows = []
    for n in (10_000, 100_000):
        warm = interval(n, 0)
        r, per = rate(hand, n, warm)
        rows.append((f"encode+snappy hand-written, {n // 1000}k samples", f"{r:,.0f} samples/s", ">= 500,000",
                     r >= 500_000))
        rows.append((f"bytes/sample on the wire, one interval, {n // 1000}k", f"{per:.1f} B", "-", True))
        lr, _ = rate(library, n, warm, runs=3)
        rows.append((f"encode+snappy protobuf library (upb), {n // 1000}k", f"{lr:,.0f} samples/s", "(reference)",
                     True))
    rows.append(("bytes/sample in the spool (6 intervals grouped), 10k", f"{spool_bytes(10_000):.1f} B", "-", True))
    pushed = push(50_000, 10)
    rows.append(("push to local VictoriaMetrics, 10 x 50k samples",
                 f"{pushed:,.0f} samples/s" if pushed else "skipped (no victoria-metrics)", ">= 100,000",
                 pushed is None or pushed >= 100_000))
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}} | {'measured':>22} | {'target':>12} | ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}} | {measured:>22} | {target:>12} | {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
