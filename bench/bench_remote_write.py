"""Remote-write benchmark: encode+compress speed, bytes and CPU per sample for zstd and snappy, push
throughput to VictoriaMetrics, and a scale run standing in for many nodes.

    .venv/bin/python bench/bench_remote_write.py

Rows: the hand-written encoder (what the agent uses) and the protobuf library with code
generated from remote.proto (the reference), on 10k and 100k flow samples of one interval
with realistic labels; median of 5 runs after a warm-up interval (labels cached, as in steady
state). zstd (what VictoriaMetrics negotiates) and snappy (everyone else) are compared on the
same bodies: bytes per sample and CPU per sample of the compression step (process time).

Push and scale runs start the VictoriaMetrics release that `make vm` builds (tests/helpers/vm.py)
on 127.0.0.1. The scale run is one process standing in for SCALE_NODES agents, each a real
RemoteWriteSink (encoder, queue, HTTP keep-alive connection) with its own `node` label and the
default per-node budget (xdp.maxFlows flows, two series each), pushing SCALE_INTERVALS intervals;
from what it measures it computes the 1,000-node figures and checks them against the README's.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import random  # noqa: E402

from tests.remote_write import remote_pb2  # noqa: E402
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import DEFAULT_INTERVAL, DEFAULT_MAX_FLOWS, AgentConfig, RemoteWriteTarget  # noqa: E402
from xtrace_agent.health import Health  # noqa: E402
from xtrace_agent.samples import Report, Sample  # noqa: E402
from xtrace_agent.sinks import prompb  # noqa: E402
from xtrace_agent.sinks.remote_write import RemoteWriteSink  # noqa: E402

EXTRA = {"node": "gpu-node-017", "monitor": "default", "namespace": "xtrace"}
T0 = time.time() - 3600  # recent: VictoriaMetrics keeps it, and per-day storage is measured today
SCALE_NODES = 10
SCALE_INTERVALS = 6
# The README's 1,000-node arithmetic ("Scale"): checked against what the scale run measures.
README_1000 = {"series": 40_000_000, "samples_per_s": 8_000_000, "storage_gib_per_day": 1_800}


def interval(flows: int, step: int, node: int = 0) -> list[Sample]:
    """One interval of `flows` samples (flows // 2 flows, packets and bytes), counters growing by a
    per-flow random amount (constant increments would compress unrealistically well on disk)."""
    rng = random.Random(node * 1_000_003 + step)
    out = []
    for i in range(flows // 2):
        labels = {"interface": "eth0", "src_ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                  "dst_ip": f"10.200.{i % 7}.{i % 250 + 1}", "src_port": str(1024 + i % 60000), "dst_port": "4791",
                  "protocol": "17", "traffic_type": "roce"}
        packets = (step + 1) * (1000 + i * 37) + rng.randrange(1000)
        out.append(Sample("xtrace_network_packets_total", labels, float(packets), T0 + DEFAULT_INTERVAL * step))
        out.append(Sample("xtrace_network_bytes_total", labels, float(packets * 1083 + rng.randrange(1500)),
                          T0 + DEFAULT_INTERVAL * step))
    return out


def hand(samples, enc):
    return prompb.compress(enc.encode_samples(samples))


def hand_zstd(samples, enc):
    return prompb.compress(enc.encode_samples(samples), "zstd")


def codec_cost(n: int, codec: str, level: int | None = None, runs: int = 5) -> tuple[float, float]:
    """(bytes per sample, CPU ns per sample) of compressing one interval's body with `codec`."""
    import cramjam

    raw = prompb.SeriesEncoder(EXTRA).encode_samples(interval(n, 1))
    if codec == "zstd" and level is not None:
        def squeeze(b):
            return bytes(cramjam.zstd.compress(b, level=level))
    else:
        def squeeze(b):
            return prompb.compress(b, codec)
    times = []
    for _ in range(runs):
        t = time.process_time()
        body = squeeze(raw)
        times.append(time.process_time() - t)
    return len(body) / n, statistics.median(times) / n * 1e9


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


class LocalVm:
    """The built VictoriaMetrics on a free port in a temporary directory (None when not built)."""

    def __enter__(self):
        from tests.helpers.vm import VM_BIN, VictoriaMetrics, free_port

        if not os.access(VM_BIN, os.X_OK):
            return None
        self.work = tempfile.mkdtemp(prefix="xtrace-bench-vm-")
        self.vm = VictoriaMetrics(os.path.join(self.work, "data"), free_port())
        self.vm.start()
        return self.vm

    def __exit__(self, *exc):
        if hasattr(self, "vm"):
            self.vm.stop()
            import shutil

            shutil.rmtree(self.work, ignore_errors=True)


def _sink(vm, node: str, codec: str) -> tuple[RemoteWriteSink, Health]:
    health = Health()
    sink = RemoteWriteSink(RemoteWriteTarget(url=vm.write_url, name="bench"), AgentConfig(node=node), health).start()
    sink.transport.codec = codec
    return sink, health


def _wait_sent(sinks, total: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(h.get(sm.RW_SENT, {"target": "bench"}) for _s, h in sinks) < total:
        dropped = sum(h.get(sm.RW_DROPPED, {"target": "bench", "reason": r})
                      for _s, h in sinks for r in ("queue_full", "spool_full", "rejected"))
        if dropped or time.monotonic() > deadline:
            sys.exit(f"bench: {dropped:.0f} samples dropped or not all sent within {timeout:.0f} s")
        time.sleep(0.005)


def push(vm, n: int, intervals: int, codec: str) -> tuple[float, float]:
    """(samples/s, wire bytes/sample) of one sink pushing `intervals` x `n` samples."""
    sink, health = _sink(vm, f"push-{codec}", codec)
    reports = [interval(n, step) for step in range(intervals)]
    t = time.perf_counter()
    for samples in reports:
        sink.write(Report(samples[0].timestamp, samples))
    _wait_sent([(sink, health)], n * intervals)
    elapsed = time.perf_counter() - t
    sink.close(5)
    return n * intervals / elapsed, health.get(sm.RW_SENT_BYTES, {"target": "bench"}) / (
        n * intervals)


def _vm_metric(vm, name: str) -> int:
    from tests.helpers.vm import _get

    status, body = _get(f"{vm.url}/metrics", timeout=60)
    assert status == 200, body
    return sum(int(float(line.split()[-1])) for line in body.decode().splitlines()
               if line.startswith((name + " ", name + "{")))


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, files in os.walk(path) for f in files)


def scale(vm) -> dict[str, float]:
    """SCALE_NODES sinks with the default budget each, SCALE_INTERVALS intervals, end to end."""
    flows = DEFAULT_MAX_FLOWS * 2  # samples per node per interval: two series per flow
    sinks = [_sink(vm, f"gpu-node-{k:04d}", "zstd") for k in range(SCALE_NODES)]
    per_interval = [[interval(flows, step, k) for k in range(SCALE_NODES)] for step in range(SCALE_INTERVALS)]
    t = time.perf_counter()
    cpu = time.process_time()
    for step, reports in enumerate(per_interval):
        for (sink, _h), samples in zip(sinks, reports, strict=True):
            sink.write(Report(samples[0].timestamp, samples))
        _wait_sent(sinks, flows * SCALE_NODES * (step + 1))  # agents push once per interval, not all at once
    elapsed = time.perf_counter() - t
    agent_cpu = time.process_time() - cpu
    total = flows * SCALE_NODES * SCALE_INTERVALS
    for sink, _h in sinks:
        sink.close(5)
    vm.force_flush()
    # VictoriaMetrics' own counters (a query over 400k series is slow on a shared machine); the
    # bench's own sinks are the only writers, and the push rows ran in another instance
    series = _vm_metric(vm, "vm_new_timeseries_created_total")
    stored = _vm_metric(vm, "vm_rows_added_to_storage_total")
    return {"samples_per_s": total / elapsed, "series": series, "stored": stored, "total": total,
            "series_per_node": series / SCALE_NODES, "agent_cpu_us_per_sample": agent_cpu / total * 1e6}


STORAGE_SERIES, STORAGE_INTERVALS = 4000, 360


def storage(vm) -> dict[str, float]:
    """Bytes on disk per sample, index included, after half an hour of intervals for 4,000 series,
    merged: a few intervals alone would mostly count block headers and index entries, not what a
    day of samples costs (so this is still an upper bound for a day)."""
    from tests.helpers.vm import _get

    sink, health = _sink(vm, "storage-node", "zstd")
    for step in range(STORAGE_INTERVALS):
        samples = interval(STORAGE_SERIES, step)
        sink.write(Report(samples[0].timestamp, samples))
        if step % 50 == 49:  # stay under the queue limit, as an agent sending every interval does
            _wait_sent([(sink, health)], STORAGE_SERIES * (step + 1))
    _wait_sent([(sink, health)], STORAGE_SERIES * STORAGE_INTERVALS)
    sink.close(5)
    vm.force_flush()
    _get(f"{vm.url}/internal/force_merge?partition_prefix={time.strftime('%Y_%m', time.gmtime(T0))}", timeout=60)
    sizes, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:  # the merge runs in the background: wait until the size settles
        sizes.append(_du(vm.data_dir))
        if len(sizes) > 4 and len(set(sizes[-4:])) == 1:
            break
        time.sleep(0.5)
    return {"bytes_per_sample": _du(vm.data_dir) / (STORAGE_SERIES * STORAGE_INTERVALS)}


def thousand_nodes(m: dict[str, float], st: dict[str, float]) -> dict[str, float]:
    """The 1,000-node arithmetic from what the runs measured: series from the per-node budget as
    VictoriaMetrics counted it, samples/s from the interval, storage/day from the bytes per sample."""
    series = m["series_per_node"] * 1000
    samples_per_s = series / DEFAULT_INTERVAL
    per_day = samples_per_s * 86400 * st["bytes_per_sample"]
    return {"series": series, "samples_per_s": samples_per_s, "storage_gib_per_day": per_day / 2**30}


def main() -> None:
    rows = []
    for n in (10_000, 100_000):
        warm = interval(n, 0)
        r, _ = rate(hand, n, warm)
        rz, _ = rate(hand_zstd, n, warm)
        lr, _ = rate(library, n, warm, runs=3)
        rows.append((f"encode+snappy protobuf library (upb), {n // 1000}k", f"{lr:,.0f} samples/s", "(reference)", True))
        rows.append((f"encode+snappy hand-written, {n // 1000}k samples", f"{r:,.0f} samples/s",
                     f"x{r / lr:.1f} >= x2", r >= 2 * lr))
        rows.append((f"encode+zstd hand-written, {n // 1000}k samples", f"{rz:,.0f} samples/s",
                     f"x{rz / lr:.1f} >= x2", rz >= 2 * lr))
    snappy_b, snappy_ns = codec_cost(100_000, "snappy")
    rows.append(("snappy: bytes / CPU per sample, 100k", f"{snappy_b:.2f} B / {snappy_ns:.0f} ns", "(reference)", True))
    for label, level in (("zstd level 1 (ours)", None), ("zstd level 3", 3), ("zstd level 9", 9)):
        zb, zns = codec_cost(100_000, "zstd", level)
        ok = zb <= 0.6 * snappy_b if level is None else True
        rows.append((f"{label}: bytes / CPU per sample, 100k", f"{zb:.2f} B / {zns:.0f} ns",
                     f"x{zb / snappy_b:.2f} / x{zns / snappy_ns:.1f}", ok))
    rows.append(("bytes/sample in the spool (6 intervals grouped), 10k", f"{spool_bytes(10_000):.1f} B", "-", True))
    with LocalVm() as vm:
        if vm is None:
            print("VictoriaMetrics not built: run `make vm`", file=sys.stderr)
            sys.exit(1)
        pushed = {codec: push(vm, 50_000, 10, codec) for codec in ("snappy", "zstd")}
        rows.append(("push to local VictoriaMetrics, 10 x 50k, snappy",
                     f"{pushed['snappy'][0]:,.0f}/s, {pushed['snappy'][1]:.2f} B", "(reference)", True))
        rows.append(("push to local VictoriaMetrics, 10 x 50k, zstd",
                     f"{pushed['zstd'][0]:,.0f}/s, {pushed['zstd'][1]:.2f} B",
                     f"x{pushed['zstd'][0] / pushed['snappy'][0]:.2f} / x{pushed['zstd'][1] / pushed['snappy'][1]:.2f}",
                     pushed["zstd"][1] < pushed["snappy"][1]))
    with LocalVm() as vm:  # alone in its database: bytes on disk are its own
        st = storage(vm)
    with LocalVm() as vm:
        m = scale(vm)
    k = thousand_nodes(m, st)
    realtime = SCALE_NODES * DEFAULT_MAX_FLOWS * 2 / DEFAULT_INTERVAL
    rows.append((f"scale: {SCALE_NODES} nodes x default budget, end to end", f"{m['samples_per_s']:,.0f} samples/s",
                 f"x{m['samples_per_s'] / realtime:.2f} real time", True))
    rows.append(("scale: every sample stored", f"{m['stored']:,} of {m['total']:,}", "all", m["stored"] == m["total"]))
    rows.append(("scale: active series per node (VictoriaMetrics count)", f"{m['series_per_node']:,.0f}",
                 f"{DEFAULT_MAX_FLOWS * 2:,}", m["series_per_node"] == DEFAULT_MAX_FLOWS * 2))
    rows.append(("scale: agent CPU per sample (encode + HTTP)", f"{m['agent_cpu_us_per_sample']:.2f} us", "-", True))
    rows.append(("storage: bytes on disk per sample (30 min x 4,000 series, merged)",
                 f"{st['bytes_per_sample']:.2f} B", "-", True))
    for key, unit in (("series", ""), ("samples_per_s", "/s"), ("storage_gib_per_day", " GiB")):
        got, said = k[key], README_1000[key]
        close = said / 2 <= got <= said * 2 if key == "storage_gib_per_day" else got == said
        rows.append((f"1,000 nodes: {key} (README {said:,}{unit})", f"{got:,.0f}{unit}",
                     "README within 2x" if key == "storage_gib_per_day" else "README exact", close))
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}} | {'measured':>24} | {'target / ratio':>16} | ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}} | {measured:>24} | {target:>16} | {'yes' if ok else 'NO'}")
    if not all(r[3] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
