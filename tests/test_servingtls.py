"""The metrics port's certificate: made in memory, or read from a mounted Secret and reloaded when the
kubelet swaps it, over real TLS handshakes on 127.0.0.1.

The Secret volume is laid out as the kubelet writes it (AtomicWriter): the files live in a timestamped
directory, `..data` is a symlink to it, `tls.crt` and `tls.key` are symlinks through `..data`; an
update writes a new directory and renames a new `..data` link over the old one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import socket
import ssl
import threading

import pytest

from xtrace_agent import servingtls
from xtrace_agent.servingtls import ServingTLS


class TLSPort:
    """A listening socket that completes one handshake per connection with tls.context()."""

    def __init__(self, tls: ServingTLS):
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.tls.context().wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def peer_sha256(self) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()

    def close(self) -> None:
        self.sock.close()


def _sha(pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()


class SecretVolume:
    """A Secret mounted the kubelet's way, updated the kubelet's way."""

    def __init__(self, root: pathlib.Path):
        self.root, self.n = root, 0
        root.mkdir()

    def write(self, cert: bytes, key: bytes) -> None:
        self.n += 1
        data = self.root / f"..2026_12_02_00_00_0{self.n}"
        data.mkdir()
        (data / "tls.crt").write_bytes(cert)
        (data / "tls.key").write_bytes(key)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.rename(tmp, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")

    def paths(self) -> tuple[str, str]:
        return str(self.root / "tls.crt"), str(self.root / "tls.key")


@pytest.fixture
def port_of():
    ports: list[TLSPort] = []

    def make(tls: ServingTLS) -> TLSPort:
        ports.append(TLSPort(tls))
        return ports[-1]
    yield make
    for p in ports:
        p.close()


def test_generated_certificate_is_served_and_names_this_host(port_of):
    tls = ServingTLS(names=["node-7", "10.1.2.3"])
    assert tls.generated
    port = port_of(tls)
    assert port.peer_sha256() == tls.fingerprint
    from cryptography import x509
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port.port)) as raw, ctx.wrap_socket(raw) as s:
        cert = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-7" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    # made in memory: nothing was written anywhere this process can name
    assert not any("tls.key" in os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                   if os.path.islink(f"/proc/self/fd/{fd}"))


def test_a_rotated_secret_is_served_without_restart(tmp_path, port_of):
    vol = SecretVolume(tmp_path / "tls")
    first, second = servingtls.self_signed(["a"]), servingtls.self_signed(["b"])
    vol.write(*first)
    tls = ServingTLS(*vol.paths(), check_every=0)
    port = port_of(tls)
    assert port.peer_sha256() == _sha(first[0])
    vol.write(*second)
    assert port.peer_sha256() == _sha(second[0])


def test_a_broken_update_keeps_the_previous_pair_and_warns_once(tmp_path, port_of, caplog):
    vol = SecretVolume(tmp_path / "tls")
    good, other, later = (servingtls.self_signed([n]) for n in ("good", "other", "later"))
    vol.write(*good)
    tls = ServingTLS(*vol.paths(), check_every=0)
    port = port_of(tls)
    vol.write(good[0], other[1])  # a certificate with somebody else's key
    with caplog.at_level(logging.WARNING, logger="xtrace.tls"):
        for _ in range(3):
            assert port.peer_sha256() == _sha(good[0])
    assert len([r for r in caplog.records if "serving the previous one" in r.getMessage()]) == 1
    vol.write(*later)  # then a good one again
    assert port.peer_sha256() == _sha(later[0])


def test_a_bad_pair_at_start_is_an_error_not_a_fallback(tmp_path):
    vol = SecretVolume(tmp_path / "tls")
    vol.write(servingtls.self_signed(["x"])[0], b"not a key")
    with pytest.raises(ssl.SSLError):
        ServingTLS(*vol.paths())
