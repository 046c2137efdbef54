"""Fixtures: a real VictoriaMetrics (and vmauth in front of it) on 127.0.0.1, per test.

    def test_x(victoria_metrics):
        victoria_metrics.write_url            # remote write endpoint
        victoria_metrics.export('{__name__=~"xtrace_.*"}')  # -> [{"metric": {...}, "values": [...], ...}]
        victoria_metrics.stop(); victoria_metrics.start()   # same port and data: outage tests

Deduplication (-dedup.minScrapeInterval=1ms) is on, because a sink resends a block whose
answer was lost; this is the setting the README recommends for VictoriaMetrics too.
The binaries are the current release built from the VictoriaMetrics Go module by
tools/vm/build.sh (`make vm`, a prerequisite of `make test`), cached under
${XTRACE_CACHE:-/var/cache/xtrace}/vm/<version>/bin; under XTRACE_REQUIRE_BPF=1 a missing binary
fails instead of skipping.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import need

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _versions() -> dict[str, str]:
    out = {}
    with open(os.path.join(REPO, "tools", "vm", "versions.env")) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):  # VAR=${VAR:-default}: the default, unless set
                default = value.removeprefix("${" + key + ":-").removesuffix("}")
                out[key] = os.environ.get(key) or default
    return out


VM_VERSION = _versions()["VM_VERSION"]
VM_BIN_DIR = os.path.join(os.environ.get("XTRACE_CACHE") or "/var/cache/xtrace", "vm", VM_VERSION, "bin")
VM_BIN = os.path.join(VM_BIN_DIR, "victoria-metrics")
VMAUTH_BIN = os.path.join(VM_BIN_DIR, "vmauth")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_health(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        try:
            if _get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


class _Process:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, args_fn, log_path: str, port: int):
        self._args_fn = args_fn
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._args_fn(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _wait_health(f"{self.url}/health", self.proc, self.log_path)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with kill=True); the port stays reserved for start()."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Queries:
    """Reading a VictoriaMetrics API at `self.url` (a single node, or a tenant's /select/<t>/prometheus on
    vmselect): needs `url`, `auth` and `force_flush()`."""

    url: str
    auth: tuple[str, str] | None = None

    def force_flush(self) -> None:
        raise NotImplementedError

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query: [{"metric": {...}, "value": [ts, "v"]}]."""
        self.force_flush()
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        status, body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", auth=self.auth)
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def export(self, match: str = '{__name__!=""}') -> list[dict]:
        """Every stored point of the matching series: [{"metric": {...}, "values": [...], "timestamps": [...]}]."""
        self.force_flush()
        status, body = _get(f"{self.url}/api/v1/export?{urllib.parse.urlencode({'match[]': match})}",
                            auth=self.auth)
        assert status == 200, body
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def latest(self, match: str = '{__name__!=""}') -> dict[tuple, float]:
        """{(name, sorted labels...): newest value} of every matching series."""
        out = {}
        for series in self.export(match):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            newest = max(zip(series["timestamps"], series["values"], strict=True))
            out[(name, *sorted(labels.items()))] = newest[1]
        return out

    def wait_latest(self, expected: dict[tuple, float], match: str = '{__name__!=""}',
                    timeout: float = 15.0) -> dict[tuple, float]:
        """Poll until latest(match) == expected (ingestion is asynchronous); returns the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.latest(match)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.2)


class VictoriaMetrics(_Process, Queries):
    def __init__(self, data_dir: str, port: int, dedup: bool = True, basic_auth: tuple[str, str] | None = None):
        """basic_auth=(user, password) turns on -httpAuth.* (the only auth single-node VM has)."""
        self.data_dir = data_dir
        self.dedup = dedup
        self.auth = basic_auth
        super().__init__(self._args, os.path.join(os.path.dirname(data_dir), "victoria-metrics.log"), port)

    def _args(self) -> list[str]:
        args = [VM_BIN, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}",
                "-search.latencyOffset=0s", "-loggerLevel=WARN", "-retentionPeriod=100y"]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        if self.auth:
            args += [f"-httpAuth.username={self.auth[0]}", f"-httpAuth.password={self.auth[1]}"]
        return args

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def import_url(self) -> str:
        return f"{self.url}/api/v1/import/prometheus"

    def force_flush(self) -> None:
        _get(f"{self.url}/internal/force_flush", auth=self.auth)


class VmAuth(_Process):
    """vmauth in front of a VictoriaMetrics: bearer token `token` required."""

    def __init__(self, backend: VictoriaMetrics, work_dir: str, token: str):
        self.token = token
        self.config = os.path.join(work_dir, "vmauth.yml")
        with open(self.config, "w") as f:
            f.write(f'users:\n  - bearer_token: "{token}"\n    url_prefix: "{backend.url}"\n')
        port = free_port()
        super().__init__(lambda: [VMAUTH_BIN, f"-auth.config={self.config}",
                                  f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"],
                         os.path.join(work_dir, "vmauth.log"), port)

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"


def _need_binary(path: str) -> None:
    need(os.access(path, os.X_OK), f"{path} not built: run `make vm` (tools/vm/build.sh)")


@pytest.fixture
def victoria_metrics(tmp_path):
    """A fresh VictoriaMetrics on a free port with its own data directory."""
    _need_binary(VM_BIN)
    data = tmp_path / "vm-data"
    vm = VictoriaMetrics(str(data), free_port())
    vm.start()
    yield vm
    vm.stop()


@pytest.fixture
def vmauth(victoria_metrics, tmp_path):
    """vmauth on a free port, forwarding requests with the bearer token `vmauth.token`."""
    _need_binary(VMAUTH_BIN)
    work = tmp_path / "vmauth"
    work.mkdir()
    proxy = VmAuth(victoria_metrics, str(work), token="xtrace-test-token")
    proxy.start()
    yield proxy
    proxy.stop()
