"""The certificate the agent serves /metrics with: a mounted Secret's tls.crt/tls.key, or one of its own.

A Secret (cert-manager's shape) is mounted as files the kubelet replaces atomically (a `..data` symlink
swap) when the Secret changes. `context()` looks at the files at most every `check_every` seconds and
builds a new SSLContext when their content changed; connections made after that get the new certificate,
open ones keep theirs: a rotation needs no restart. A pair that does not load (a half-written Secret, a
key that does not match) is logged once and the previous context is kept.

Without a Secret the agent makes a self-signed ECDSA P-256 certificate at start (names: the node, the
host name, the pod IP when known). The key is generated in memory and handed to OpenSSL through a
memfd (Python's ssl loads keys only from paths): it is never written to any filesystem. A scraper then
skips verification (`insecureSkipVerify`), which still encrypts and still needs a valid token.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping

from xtrace_agent import environ

log = logging.getLogger("xtrace.tls")

CHECK_SECONDS = 5.0
GENERATED_DAYS = 365


def _context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def self_signed(names: list[str], days: int = GENERATED_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for these DNS names and IP addresses, made here and now."""
    from cryptography import x509  # imported only when no Secret is named
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in dict.fromkeys(n for n in names if n):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xtrace-agent")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def own_names(env: Mapping[str, str] | None = None) -> list[str]:
    return [environ.NODE_NAME.get(env), socket.gethostname(), environ.POD_IP.get(env), "localhost", "127.0.0.1"]


class ServingTLS:
    """The current SSLContext for the metrics port; reloads a changed cert/key pair."""

    def __init__(self, cert_file: str | None = None, key_file: str | None = None,
                 check_every: float = CHECK_SECONDS, names: list[str] | None = None):
        self.cert_file, self.key_file = cert_file, key_file
        self.check_every = check_every
        self._lock = threading.Lock()
        self._checked = 0.0
        self._seen: bytes | None = None
        self._bad: bytes | None = None
        self._warned: str | None = None
        self.fingerprint = ""  # of the generated certificate
        if cert_file and key_file:
            self._ctx = self._load_files(first=True)
        else:
            cert, key = self_signed(names if names is not None else own_names())
            fds = [_memfd("tls.crt", cert), _memfd("tls.key", key)]
            try:
                self._ctx = _context(*(f"/proc/self/fd/{fd}" for fd in fds))
            finally:
                for fd in fds:
                    os.close(fd)
            self.fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.decode())).hexdigest()

    @property
    def generated(self) -> bool:
        return not (self.cert_file and self.key_file)

    def _signature(self) -> bytes:
        assert self.cert_file and self.key_file
        h = hashlib.sha256()
        for path in (self.cert_file, self.key_file):
            with open(path, "rb") as f:
                h.update(f.read())
        return h.digest()

    def _load_files(self, first: bool = False) -> ssl.SSLContext:
        """A context from the files; at start a bad pair is the caller's error (OSError/SSLError)."""
        assert self.cert_file and self.key_file
        self._seen = self._signature()
        return _context(self.cert_file, self.key_file)

    def context(self) -> ssl.SSLContext:
        if self.generated:
            return self._ctx
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.check_every:
                return self._ctx
            self._checked = now
            try:
                sig = self._signature()
            except OSError as e:  # between two kubelet updates, or the Secret removed: keep serving
                self._warn_once(f"unreadable: {e.strerror or e}")
                return self._ctx
            if sig in (self._seen, self._bad):
                return self._ctx
            try:
                self._ctx = _context(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                self._bad = sig
                self._warn_once(f"not loaded: {getattr(e, 'reason', None) or e}")
                return self._ctx
            self._seen, self._warned = sig, None
            log.info("metrics: TLS certificate reloaded from %s", self.cert_file)
            return self._ctx

    def _warn_once(self, why: str) -> None:
        if why != self._warned:
            self._warned = why
            log.warning("metrics: TLS pair %s, %s %s; serving the previous one", self.cert_file, self.key_file, why)
