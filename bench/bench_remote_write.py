"""Remote-write benchmark: encode+compress speed, bytes and CPU per sample for zstd and snappy, push
throughput to VictoriaMetrics, and a scale run against the real VictoriaMetrics cluster standing in for
many nodes.

    .venv/bin/python bench/bench_remote_write.py

Rows: the hand-written encoder (what the agent uses) and the protobuf library with code
generated from remote.proto (the reference), on 10k and 100k flow samples of one interval
with realistic labels; median of 5 runs after a warm-up interval (labels cached, as in steady
state). zstd (what VictoriaMetrics negotiates) and snappy (everyone else) are compared on the
same bodies: bytes per sample and CPU per sample of the compression step (process time).

Push runs start the single-node release that `make vm` builds (tests/helpers/vm.py) on 127.0.0.1.
The scale run starts the cluster (`make vm-cluster`: three vmstorage, vminsert and vmselect with
-replicationFactor=2, VM_CLUSTER_VERSION) and is one process standing in for SCALE_NODES agents, each
a real RemoteWriteSink (encoder, queue, HTTP keep-alive connection) with its own `node` label and the
default per-node budget (xdp.maxFlows flows, two series each), pushing SCALE_INTERVALS intervals to
vminsert's /insert/<tenant>/prometheus: samples/s end to end, the agents' send-path CPU and the
cluster's own CPU per million samples, active series as vmselect counts them, bytes per sample on the
vmstorage disks (the single node's beside them), and the latency of every Traffic dashboard panel
through vmselect at that load (the slowest is the heaviest). From those it computes the 1,000-node
figures and checks them against the README's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

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
SCALE_TENANT = "42:0"
REPLICATION = 2  # vminsert -replicationFactor (tools/vm/cluster.py)
# The README's 1,000-node arithmetic ("VictoriaMetrics at scale"): checked against what the runs measure.
# storage: per day for one copy, the cluster keeping REPLICATION; vmstorage_cores: what 8 M samples/s costs
README_1000 = {"series": 40_000_000, "samples_per_s": 8_000_000, "storage_gib_per_day": 1_800,
               "vmstorage_cores": 170}


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


class LocalCluster:
    """The VictoriaMetrics cluster of `make vm-cluster` in a temporary state directory on free ports."""

    def __enter__(self):
        from tests.helpers.vmcluster import TOOL, VmCluster

        self.state = tempfile.mkdtemp(prefix="xtrace-bench-vmcluster-")
        os.rmdir(self.state)
        done = subprocess.run([sys.executable, TOOL, "up", "--state", self.state, "--port-base", "auto", "--json"],
                              stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit("bench: the VictoriaMetrics cluster did not start (its line above; make vm-cluster-bin)")
        return VmCluster(self.state, json.loads(done.stdout.strip().splitlines()[-1]))

    def __exit__(self, *exc):
        from tests.helpers.vmcluster import stop_cluster

        stop_cluster(self.state)


def _sink(vm, node: str, codec: str) -> tuple[RemoteWriteSink, Health]:
    health = Health()
    config = AgentConfig(node=node, labels={"cluster": "bench"})
    sink = RemoteWriteSink(RemoteWriteTarget(url=vm.write_url, name="bench"), config, health).start()
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


def _metric(url: str, name: str) -> int:
    """The sum of a VictoriaMetrics process's own /metrics series `name`."""
    from tests.helpers.vm import _get

    status, body = _get(f"{url}/metrics", timeout=60)
    assert status == 200, body
    return sum(int(float(line.split()[-1])) for line in body.decode().splitlines()
               if line.startswith((name + " ", name + "{")))


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, files in os.walk(path) for f in files)


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cluster_cpu(cluster) -> dict[str, float]:
    """{vminsert, vmselect, vmstorage (the three summed)}: CPU seconds so far."""
    out: dict[str, float] = {}
    for name, comp in cluster.info["components"].items():
        kind = name.split("-")[0]
        out[kind] = out.get(kind, 0.0) + _cpu(comp["pid"])
    return out


def scale(cluster) -> dict[str, float]:
    """SCALE_NODES sinks with the default budget each, SCALE_INTERVALS intervals, end to end into the cluster."""
    tenant = cluster.tenant(SCALE_TENANT)
    flows = DEFAULT_MAX_FLOWS * 2  # samples per node per interval: two series per flow
    sinks = [_sink(tenant, f"gpu-node-{k:04d}", "zstd") for k in range(SCALE_NODES)]
    per_interval = [[interval(flows, step, k) for k in range(SCALE_NODES)] for step in range(SCALE_INTERVALS)]
    t = time.perf_counter()
    cpu = time.process_time()
    for step, reports in enumerate(per_interval):
        if step == 1:  # the first interval registers every series: the cluster's steady-state cost is after it
            before, steady_cpu = _cluster_cpu(cluster), time.process_time()
        for (sink, _h), samples in zip(sinks, reports, strict=True):
            sink.write(Report(samples[0].timestamp, samples))
        _wait_sent(sinks, flows * SCALE_NODES * (step + 1))  # agents push once per interval, not all at once
    elapsed = time.perf_counter() - t
    agent_cpu = time.process_time() - cpu
    steady = flows * SCALE_NODES * (SCALE_INTERVALS - 1)
    agent_steady = time.process_time() - steady_cpu
    total = flows * SCALE_NODES * SCALE_INTERVALS
    for sink, _h in sinks:
        sink.close(5)
    # vmstorage's rows counter also counts blocks a sink resent after a timeout: wait until it holds at
    # least every sample REPLICATION times (vminsert has passed it all on), then count through vmselect
    deadline = time.monotonic() + 120
    while sum(_metric(cluster.http(n), "vm_rows_added_to_storage_total") for n in cluster.storage) \
            < total * REPLICATION and time.monotonic() < deadline:
        time.sleep(0.5)
    after = _cluster_cpu(cluster)
    cluster.force_flush()
    at = T0 + DEFAULT_INTERVAL * (SCALE_INTERVALS - 1)
    series = _count(tenant, 'count(last_over_time({__name__=~"xtrace_network_.+"}[1m]))', at)
    stored = _count(tenant, 'sum(count_over_time({__name__=~"xtrace_network_.+"}[1m]))', at)
    return {"samples_per_s": total / elapsed, "series": series, "stored": stored, "total": total,
            "series_per_node": series / SCALE_NODES, "agent_cpu_s_per_m": agent_cpu / total * 1e6,
            "agent_steady_s_per_m": agent_steady / steady * 1e6,
            **{f"{k}_cpu_s_per_m": (after[k] - before[k]) / steady * 1e6 for k in ("vminsert", "vmstorage")}}


def _count(tenant, expr: str, at: float) -> int:
    """A one-number query through vmselect (replicas deduplicated; never a partial answer) over the scale
    run's data: its window of a minute holds all SCALE_INTERVALS intervals."""
    from tests.helpers.vm import _get

    query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    status, body = _get(f"{tenant.url}/api/v1/query?{query}", timeout=300)
    assert status == 200, body
    doc = json.loads(body)
    assert not doc.get("isPartial"), "vmselect answered partially"
    return int(float(doc["data"]["result"][0]["value"][1]))


def panel_latency(tenant, at: float, runs: int = 5) -> list[tuple[float, str]]:
    """(median seconds, title) of every Traffic dashboard query through vmselect, slowest first; the
    variables on All (Grafana's .*), the rate window a minute, evaluated at the end of the scale run.
    inf: vmselect gave up after its -search.maxQueryDuration (30 s by default)."""
    from tests.helpers.vm import _get

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "dashboards",
                           "xtrace-traffic.json")) as f:
        doc = json.load(f)
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            for var in ("cluster", "node", "interface", "port", "device", "direction"):
                expr = expr.replace(f"${{{var}:raw}}", ".*").replace(f"${var}", ".*")
            url = f"{tenant.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
            times: list[float] = []
            while len(times) < runs and sum(times) < 10:  # a slow query once is enough
                t = time.perf_counter()
                status, body = _get(url, timeout=120)
                times.append(time.perf_counter() - t)
                if status == 422 and b"timeout exceeded" in body:  # vmselect's -search.maxQueryDuration (30 s)
                    times = [float("inf")]
                    break
                assert status == 200, (panel["title"], body[:300])
            out.append((statistics.median(times), f"{panel['title']} ({target['refId']})"))
    return sorted(out, reverse=True)


STORAGE_SERIES, STORAGE_INTERVALS = 4000, 360


def _push_storage(db) -> int:
    """Half an hour of intervals for 4,000 series into `db`; the samples pushed."""
    sink, health = _sink(db, "storage-node", "zstd")
    for step in range(STORAGE_INTERVALS):
        samples = interval(STORAGE_SERIES, step)
        sink.write(Report(samples[0].timestamp, samples))
        if step % 50 == 49:  # stay under the queue limit, as an agent sending every interval does
            _wait_sent([(sink, health)], STORAGE_SERIES * (step + 1))
    _wait_sent([(sink, health)], STORAGE_SERIES * STORAGE_INTERVALS)
    sink.close(5)
    return STORAGE_SERIES * STORAGE_INTERVALS


def _merged_size(http_urls: list[str], data_dirs: list[str]) -> int:
    """Force-merge the bench's month on each storage process and wait until the bytes on disk settle."""
    from tests.helpers.vm import _get

    for url in http_urls:
        _get(f"{url}/internal/force_flush", timeout=60)
        _get(f"{url}/internal/force_merge?partition_prefix={time.strftime('%Y_%m', time.gmtime(T0))}", timeout=60)
    sizes, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:  # the merge runs in the background
        sizes.append(sum(_du(d) for d in data_dirs))
        if len(sizes) > 4 and len(set(sizes[-4:])) == 1:
            break
        time.sleep(0.5)
    return sizes[-1]


def storage(vm) -> dict[str, float]:
    """Bytes on disk per sample, index included, after half an hour of intervals for 4,000 series,
    merged: a few intervals alone would mostly count block headers and index entries, not what a
    day of samples costs (so this is still an upper bound for a day). The single node (the reference)."""
    n = _push_storage(vm)
    return {"bytes_per_sample": _merged_size([vm.url], [vm.data_dir]) / n}


def cluster_storage(cluster) -> dict[str, float]:
    """The same into the cluster (a tenant of its own): bytes on the three vmstorage disks per sample
    pushed (REPLICATION copies) and per copy."""
    n = _push_storage(cluster.tenant("43:0"))
    dirs = [next(a.split("=", 1)[1] for a in cluster.info["components"][name]["argv"]
                 if a.startswith("-storageDataPath=")) for name in cluster.storage]
    size = _merged_size([cluster.http(name) for name in cluster.storage], dirs)
    return {"bytes_per_sample": size / n, "bytes_per_copy": size / n / REPLICATION}


def thousand_nodes(m: dict[str, float], st: dict[str, float]) -> dict[str, float]:
    """The 1,000-node arithmetic from what the runs measured: series from the per-node budget as
    vmselect counted it, samples/s from the interval, storage/day (one copy) from the bytes per copy
    on the vmstorage disks, vmstorage cores from their CPU per sample at this machine's speed."""
    series = m["series_per_node"] * 1000
    samples_per_s = series / DEFAULT_INTERVAL
    per_day = samples_per_s * 86400 * st["bytes_per_copy"]
    return {"series": series, "samples_per_s": samples_per_s, "storage_gib_per_day": per_day / 2**30,
            "vmstorage_cores": samples_per_s * m["vmstorage_cpu_s_per_m"] / 1e6}


def _timed_floor(tenant) -> float:
    """Seconds of the cheapest query through vmselect (`vector(1)`): the round trip, the latency reference."""
    from tests.helpers.vm import _get

    t = time.perf_counter()
    _get(f"{tenant.url}/api/v1/query?query=vector(1)")
    return time.perf_counter() - t


def scale_rows(m, st, cst, latencies, floor, version) -> list[tuple]:
    k = thousand_nodes(m, cst)
    realtime = SCALE_NODES * DEFAULT_MAX_FLOWS * 2 / DEFAULT_INTERVAL
    rows = [(f"scale ({version}, RF {REPLICATION}): {SCALE_NODES} nodes x default budget, end to end",
             f"{m['samples_per_s']:,.0f} samples/s", f"x{m['samples_per_s'] / realtime:.2f} real time", True),
            ("scale: every sample stored (count_over_time through vmselect)", f"{m['stored']:,} of {m['total']:,}",
             "all", m["stored"] == m["total"]),
            ("scale: active series per node (count() through vmselect)", f"{m['series_per_node']:,.0f}",
             f"{DEFAULT_MAX_FLOWS * 2:,}", m["series_per_node"] == DEFAULT_MAX_FLOWS * 2),
            ("scale: agents' send-path CPU (encode + zstd + HTTP), whole run", f"{m['agent_cpu_s_per_m']:.2f} s/M samples",
             "-", True),
            ("scale: agents' send-path CPU, after the first interval", f"{m['agent_steady_s_per_m']:.2f} s/M samples",
             "(reference)", True),
            ("scale: vminsert / vmstorage (3, summed) CPU, after the first", f"{m['vminsert_cpu_s_per_m']:.2f} / "
             f"{m['vmstorage_cpu_s_per_m']:.2f} s/M", f"x{m['vminsert_cpu_s_per_m'] / m['agent_steady_s_per_m']:.2f} / "
             f"x{m['vmstorage_cpu_s_per_m'] / m['agent_steady_s_per_m']:.2f}", True),
            ("storage: bytes/sample on disk, single node (30 min x 4,000 series, merged)",
             f"{st['bytes_per_sample']:.2f} B", "(reference)", True),
            (f"storage: bytes/sample on the vmstorage disks, all {REPLICATION} copies / per copy",
             f"{cst['bytes_per_sample']:.2f} B / {cst['bytes_per_copy']:.2f} B",
             f"x{cst['bytes_per_copy'] / st['bytes_per_sample']:.2f} per copy", True),
            ("query: vector(1) through vmselect (the round trip)", f"{floor * 1000:.1f} ms", "(reference)", True)]
    def ms(t: float) -> str:
        return "> 30 s" if t == float("inf") else f"{t * 1000:.0f} ms"

    slowest, title = latencies[0]
    rows.append((f"query: heaviest Traffic panel at that load: {title}", ms(slowest),
                 "timed out" if slowest == float("inf") else f"x{slowest / floor:.0f}", True))
    for t, name in latencies[1:]:
        rows.append((f"query: {name}", ms(t), "timed out" if t == float("inf") else f"x{t / floor:.0f}", True))
    for key, unit in (("series", ""), ("samples_per_s", "/s"), ("storage_gib_per_day", " GiB"),
                      ("vmstorage_cores", " cores")):
        got, said = k[key], README_1000[key]
        exact = key in ("series", "samples_per_s")
        close = got == said if exact else said / 2 <= got <= said * 2
        rows.append((f"1,000 nodes: {key} (README {said:,}{unit})", f"{got:,.0f}{unit}",
                     "README exact" if exact else "README within 2x", close))
    return rows


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
    with LocalCluster() as cluster:  # alone in the cluster: the vmstorage disks hold only its samples
        cst = cluster_storage(cluster)
    with LocalCluster() as cluster:
        m = scale(cluster)
        at = T0 + DEFAULT_INTERVAL * (SCALE_INTERVALS - 1)
        floor = statistics.median(_timed_floor(cluster.tenant(SCALE_TENANT)) for _ in range(5))
        latencies = panel_latency(cluster.tenant(SCALE_TENANT), at)
        version = cluster.version
    rows += scale_rows(m, st, cst, latencies, floor, version)
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}} | {'measured':>24} | {'target / ratio':>16} | ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}} | {measured:>24} | {target:>16} | {'yes' if ok else 'NO'}")
    if not all(r[3] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
