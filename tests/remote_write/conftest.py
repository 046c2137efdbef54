"""Shared pieces for the remote-write tests: synthetic reports, fast sinks, a scripted receiver."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cramjam
import pytest

from tests.remote_write import remote_pb2
from xtrace_agent.config import AgentConfig, RemoteWriteTarget
from xtrace_agent.health import Health
from xtrace_agent.samples import Report, Sample
from xtrace_agent.sinks.remote_write import RemoteWriteSink

# Backoffs in tenths of seconds instead of seconds: the policy is the same, the tests are fast.
FAST = {"min_backoff": 0.05, "max_backoff": 0.4, "auth_retry": 0.3, "spill_interval": 0.3,
        "tick": 0.05, "timeout": 2.0}
T0 = 1_700_000_000.0


def flow_labels(i: int) -> dict[str, str]:
    return {"interface": "veth0", "src_ip": f"198.18.{i // 250}.{i % 250 + 1}", "dst_ip": "198.18.200.1",
            "src_port": str(10000 + i), "dst_port": "4791", "protocol": "17", "traffic_type": "roce"}


def report(step: int, flows: int, t0: float = T0, interval: float = 1.0) -> Report:
    """Interval `step` of `flows` steadily growing counters: packets = 10*(step+1)*(i+1)."""
    ts = t0 + step * interval
    samples = []
    for i in range(flows):
        packets = 10 * (step + 1) * (i + 1)
        samples.append(Sample("xtrace_network_packets_total", flow_labels(i), float(packets), ts))
        samples.append(Sample("xtrace_network_bytes_total", flow_labels(i), float(packets * 1500), ts))
    return Report(ts, samples)


def expected_latest(step: int, flows: int, node: str = "test-node", **extra: str) -> dict[tuple, float]:
    """What VictoriaMetrics should hold as each series' newest value after `step`."""
    out = {}
    for s in report(step, flows).samples:
        labels = {**s.labels, "node": node, **extra}
        out[(s.name, *sorted(labels.items()))] = s.value
    return out


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def make_sink(health):
    """RemoteWriteSink factory with fast retries; every sink is closed at teardown."""
    sinks = []

    def make(url: str, cfg: AgentConfig | None = None, target: RemoteWriteTarget | None = None, **kw):
        cfg = cfg or AgentConfig(node="test-node")
        sink = RemoteWriteSink(target or RemoteWriteTarget(url=url, name="test"), cfg, health, **{**FAST, **kw}).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close(0.5)


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class ScriptedReceiver:
    """A remote-write receiver answering from a script: each request pops (status, headers, body);
    when the script is empty it answers 204. Every request is recorded, decoded.

    By default it speaks only Prometheus remote write, as Prometheus does: a zstd body gets 415
    (counted in `zstd_refused`, not recorded, the script untouched). zstd=True accepts both."""

    def __init__(self, zstd: bool = False):
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.requests: list[dict] = []
        self.zstd_refused = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    refused = self.headers.get("Content-Encoding") == "zstd" and not zstd
                    if refused:
                        owner.zstd_refused += 1
                        status, headers, text = 415, {}, "unsupported Content-Encoding zstd"
                    else:
                        status, headers, text = owner.script.pop(0) if owner.script else (204, {}, "")
                    if not refused:
                        owner.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw,
                                               "status": status, "time": time.monotonic()})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                body = text.encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[tuple[str, dict, float, int]]:
        """(name, labels, value, ts_ms) of every point the receiver answered 2xx to."""
        out = []
        with self.lock:
            reqs = [r for r in self.requests if 200 <= r["status"] < 300]
        for r in reqs:
            out.extend(decode(r["raw"]))
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def decode(raw: bytes) -> list[tuple[str, dict, float, int]]:
    """A remote-write body decoded by the protobuf library (independent of our decoder)."""
    req = remote_pb2.WriteRequest()
    zstd = raw[:4] == b"\x28\xb5\x2f\xfd"
    req.ParseFromString(bytes(cramjam.zstd.decompress(raw) if zstd else cramjam.snappy.decompress_raw(raw)))
    out = []
    for ts in req.timeseries:
        labels = {lab.name: lab.value for lab in ts.labels}
        name = labels.pop("__name__")
        out.extend((name, labels, s.value, s.timestamp) for s in ts.samples)
    return out


@pytest.fixture
def receiver():
    r = ScriptedReceiver()
    yield r
    r.close()
