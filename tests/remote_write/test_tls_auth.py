"""TLS (caFile, insecureSkipVerify) and basic auth of the remote-write sink, against real servers.

TLS: an HTTPS receiver on 127.0.0.1 whose CA and certificates the openssl command line makes
once per module. Basic auth: a real VictoriaMetrics with -httpAuth.* (single-node VictoriaMetrics
knows no other auth). A failed push must keep its data (queued, then spooled) and the data must
arrive exactly once the configuration or the Secret is fixed; a secret never reaches a log line or
the spool.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import need
from tests.helpers.vm import VM_BIN, VictoriaMetrics, free_port
from tests.remote_write.conftest import expected_latest, report, wait_until
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, BasicAuth, RemoteWriteTarget, SpoolConfig
from xtrace_agent.errors import AgentFailure
from xtrace_agent.sinks import prompb
from xtrace_agent.sinks.remote_write import RemoteWriteSink

LABELS = {"target": "test"}
DROP_REASONS = ("queue_full", "spool_full", "rejected", "shutdown")
USER = "xtrace-writer"
PASSWORD = "pw-Zq8-correct-horse"
WRONG_PASSWORD = "pw-Kx3-wrong-battery"


# --- certificates --------------------------------------------------------------------------

def _openssl(*args: str, cwd: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def _leaf(name: str, san: str, cwd: str) -> tuple[str, str]:
    """A server certificate for `san`, signed by the module's CA: (cert path, key path)."""
    with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
        # authorityKeyIdentifier: Python >= 3.13 verifies strictly (VERIFY_X509_STRICT) and needs it
        f.write(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(abs(hash(name)) % 10**9 + 2), "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
             cwd=cwd)
    return os.path.join(cwd, f"{name}.pem"), os.path.join(cwd, f"{name}.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, object]:
    """ca: the CA bundle; ip: a certificate for IP:127.0.0.1; elsewhere: one for another host name."""
    need(shutil.which("openssl") is not None, "openssl not installed (apt-get install openssl)")
    d = str(tmp_path_factory.mktemp("certs"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=xtrace test CA",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "ip": _leaf("receiver", "IP:127.0.0.1", d),
            "elsewhere": _leaf("elsewhere", "DNS:elsewhere.invalid", d)}


# --- an HTTPS remote-write receiver ------------------------------------------------------------

class TlsReceiver:
    """A remote-write receiver over HTTPS on 127.0.0.1: answers 204 and records every decoded point.

    The handshake runs in the request's thread (not in accept), so a client that refuses the
    certificate is counted in `handshake_failures` instead of stalling the server.
    """

    def __init__(self, cert: str, key: str):
        self.points: list[tuple[str, dict, float, int]] = []
        self.handshake_failures = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                points = []
                for labels, samples in prompb.decode_write_request(prompb.decompress(raw)).items():
                    pairs = dict(prompb.decode_labels(labels))
                    name = pairs.pop("__name__")
                    points.extend((name, pairs, value, ts) for value, ts in samples)
                with owner.lock:
                    owner.points.extend(points)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                with owner.lock:
                    owner.handshake_failures += 1

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/api/v1/write"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> list[tuple[str, dict, float, int]]:
        with self.lock:
            return list(self.points)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_receiver(certs):
    receivers = []

    def make(which: str = "ip") -> TlsReceiver:
        cert, key = certs[which]
        receivers.append(TlsReceiver(cert, key))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def _expected_points(steps: range, flows: int) -> list[tuple]:
    """Every point the sink must deliver for `steps`, as the receiver decodes them, sorted."""
    out = []
    for step in steps:
        for s in report(step, flows).samples:
            out.append((s.name, sorted({**s.labels, "node": "test-node"}.items()), s.value, int(s.timestamp * 1000)))
    return sorted(out)


def _as_sorted(points) -> list[tuple]:
    return sorted((name, sorted(labels.items()), value, ts) for name, labels, value, ts in points)


def _dropped(health) -> dict[str, float]:
    return {r: health.get(sm.RW_DROPPED, {**LABELS, "reason": r}) for r in DROP_REASONS}


def _one_line_no_traceback(records) -> None:
    for r in records:
        assert r.exc_info is None and "\n" not in r.getMessage(), f"not one plain line: {r.getMessage()!r}"


# --- TLS -------------------------------------------------------------------------------------

def test_ca_file_verifies_the_receiver_and_samples_arrive_exactly(tls_receiver, certs, make_sink, health):
    rx = tls_receiver()
    sink = make_sink(rx.url, target=RemoteWriteTarget(url=rx.url, name="test", ca_file=certs["ca"]))
    for step in range(3):
        sink.write(report(step, 5))
    sink.close(5)
    assert _as_sorted(rx.received()) == _expected_points(range(3), 5)
    assert health.get(sm.RW_SENT, LABELS) == 30
    assert rx.handshake_failures == 0


def test_untrusted_certificate_keeps_the_data_and_a_fixed_ca_file_delivers_it(
        tls_receiver, certs, make_sink, health, tmp_path, caplog):
    rx = tls_receiver()
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(tmp_path / "spool")))
    untrusted = RemoteWriteTarget(url=rx.url, name="test")  # no caFile, insecureSkipVerify false
    with caplog.at_level(logging.WARNING, logger="xtrace.remote_write"):
        sink = make_sink(rx.url, cfg, target=untrusted)
        sink.write(report(0, 5))
        sink.write(report(1, 5))
        assert wait_until(lambda: health.get(sm.RW_RETRIES, LABELS) >= 3, timeout=5)
        # the queue moves to the disk spool while the receiver cannot be used
        assert wait_until(lambda: sink.spool.samples == 20, timeout=5)
        assert health.get(sm.RW_QUEUE, LABELS) == 20
        sink.close(0.5)
        tries = health.get(sm.RW_RETRIES, LABELS)
    assert rx.received() == []
    assert rx.handshake_failures >= 1  # the client did reach the server and refused its certificate
    assert _dropped(health) == dict.fromkeys(DROP_REASONS, 0)
    _one_line_no_traceback(caplog.records)
    failures = [r.getMessage() for r in caplog.records if "certificate" in r.getMessage()]
    assert len(failures) == tries, failures  # one line per try, not silenced after the first
    assert "caFile" in failures[0] and "unable to get local issuer certificate" in failures[0]

    # the agent restarted with caFile set replays the spool: every point, exactly once
    fixed = RemoteWriteTarget(url=rx.url, name="test", ca_file=certs["ca"])
    again = RemoteWriteSink(fixed, cfg, health, min_backoff=0.05, max_backoff=0.4, tick=0.05, timeout=2.0).start()
    again.close(5)
    assert _as_sorted(rx.received()) == _expected_points(range(2), 5)


def test_a_certificate_for_another_host_is_refused_even_from_the_trusted_ca(tls_receiver, certs, make_sink,
                                                                            health, caplog):
    rx = tls_receiver("elsewhere")
    with caplog.at_level(logging.WARNING, logger="xtrace.remote_write"):
        sink = make_sink(rx.url, target=RemoteWriteTarget(url=rx.url, name="test", ca_file=certs["ca"]))
        sink.write(report(0, 3))
        assert wait_until(lambda: health.get(sm.RW_RETRIES, LABELS) >= 2, timeout=5)
    assert rx.received() == []
    assert any("mismatch" in r.getMessage() for r in caplog.records)
    assert _dropped(health)["rejected"] == 0


@pytest.mark.parametrize("which", ["ip", "elsewhere"])
def test_insecure_skip_verify_delivers_to_any_certificate(tls_receiver, make_sink, health, which):
    rx = tls_receiver(which)  # an unknown CA, and for "elsewhere" also the wrong host name
    sink = make_sink(rx.url, target=RemoteWriteTarget(url=rx.url, name="test", insecure_skip_verify=True))
    sink.write(report(0, 4))
    sink.write(report(1, 4))
    sink.close(5)
    assert _as_sorted(rx.received()) == _expected_points(range(2), 4)
    assert health.get(sm.RW_RETRIES, LABELS) == 0


def test_unreadable_ca_file_is_one_clear_error(tmp_path, health):
    missing = str(tmp_path / "no-such-ca.pem")
    target = RemoteWriteTarget(url="https://127.0.0.1:1/api/v1/write", name="test", ca_file=missing)
    with pytest.raises(AgentFailure) as failure:
        RemoteWriteSink(target, AgentConfig(node="test-node"), health)
    message = str(failure.value)
    assert "caFile" in message and missing in message and "\n" not in message


# --- basic auth against VictoriaMetrics ------------------------------------------------------

@pytest.fixture
def vm_basic_auth(tmp_path):
    """A VictoriaMetrics that accepts only USER / PASSWORD."""
    need(os.access(VM_BIN, os.X_OK), f"{VM_BIN} not built: run `make vm`")
    vm = VictoriaMetrics(str(tmp_path / "vm-data"), free_port(), basic_auth=(USER, PASSWORD))
    vm.start()
    yield vm
    vm.stop()


def _secret_files(tmp_path, password: str) -> BasicAuth:
    (tmp_path / "username").write_text(USER + "\n")
    (tmp_path / "password").write_text(password + "\n")  # Secrets often end with a newline
    return BasicAuth(username_file=str(tmp_path / "username"), password_file=str(tmp_path / "password"))


def _assert_every_series_has_steps(vm, steps: int, flows: int) -> None:
    want = expected_latest(steps - 1, flows)
    assert vm.wait_latest(want) == want
    for series in vm.export('{__name__="xtrace_network_packets_total"}'):
        port = int(series["metric"]["src_port"]) - 10000
        assert series["values"] == [10 * (s + 1) * (port + 1) for s in range(steps)]
        assert series["timestamps"] == [1_700_000_000_000 + s * 1000 for s in range(steps)]


def test_basic_auth_from_files_delivers_exactly(vm_basic_auth, make_sink, health, tmp_path):
    auth = _secret_files(tmp_path, PASSWORD)
    sink = make_sink(vm_basic_auth.write_url,
                     target=RemoteWriteTarget(url=vm_basic_auth.write_url, name="test", basic_auth=auth))
    for step in range(3):
        sink.write(report(step, 10))
    sink.close(10)
    _assert_every_series_has_steps(vm_basic_auth, 3, 10)
    assert health.get(sm.RW_SENT, LABELS) == 60


def test_wrong_password_loses_nothing_and_a_rotated_password_file_is_picked_up(
        vm_basic_auth, make_sink, health, tmp_path, caplog):
    auth = _secret_files(tmp_path, WRONG_PASSWORD)
    spool = tmp_path / "spool"
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(spool)))
    with caplog.at_level(logging.DEBUG, logger="xtrace.remote_write"):
        sink = make_sink(vm_basic_auth.write_url, cfg,
                         target=RemoteWriteTarget(url=vm_basic_auth.write_url, name="test", basic_auth=auth))
        for step in range(3):
            sink.write(report(step, 10))
        assert wait_until(lambda: health.get(sm.RW_RETRIES, LABELS) >= 2, timeout=5)
        assert wait_until(lambda: sink.spool.samples == 60, timeout=5)  # the outage reached the disk spool
        spooled = b"".join(p.read_bytes() for p in spool.rglob("*") if p.is_file())
        assert spooled and vm_basic_auth.latest() == {}

        (tmp_path / "password").write_text(PASSWORD + "\n")  # the Secret is rotated in place
        for step in range(3, 5):
            sink.write(report(step, 10))
        _assert_every_series_has_steps(vm_basic_auth, 5, 10)
        sink.close(5)

    errors = [r.getMessage() for r in caplog.records if "HTTP 401" in r.getMessage()]
    assert errors and all("basicAuth" in e for e in errors)
    _one_line_no_traceback(caplog.records)
    assert _dropped(health) == dict.fromkeys(DROP_REASONS, 0)
    assert health.get(sm.RW_QUEUE, LABELS) == 0
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in caplog.text, "a password reached the log"
        assert secret.encode() not in spooled, "a password reached the spool"
        assert all(secret not in str(p) for p in spool.rglob("*")), "a password reached a spool file name"


def test_password_in_the_url_is_never_logged_or_used_as_a_file_name(vm_basic_auth, make_sink, health,
                                                                     tmp_path, caplog):
    url = f"http://{USER}:{WRONG_PASSWORD}@127.0.0.1:{vm_basic_auth.port}/api/v1/write"
    spool = tmp_path / "spool"
    cfg = AgentConfig(node="test-node", spool=SpoolConfig(path=str(spool)))
    with caplog.at_level(logging.DEBUG, logger="xtrace.remote_write"):
        sink = make_sink(url, cfg, target=RemoteWriteTarget(url=url))  # no name: derived from the URL
        sink.write(report(0, 3))
        assert wait_until(lambda: sink.spool.samples == 6, timeout=5)
        sink.close(0.5)
    assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    assert WRONG_PASSWORD not in caplog.text
    assert all(WRONG_PASSWORD not in str(p) for p in spool.rglob("*"))
    assert vm_basic_auth.latest() == {}
