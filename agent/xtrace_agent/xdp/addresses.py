"""Text of the addresses in flow keys, canonical (RFC 5952, as Python's ipaddress prints them).

Flows share few addresses, so the texts are cached by packed address: at 100k flows per interval
most lookups are C-level dict hits instead of Python calls.
"""

from __future__ import annotations

import ipaddress
import socket

import numpy as np

_ZERO10 = b"\0" * 10


def ip_text(addr: bytes, version: int) -> str:
    """Canonical text of a 16-byte key address (IPv4 keys are IPv4-mapped)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    if addr[:10] == _ZERO10:
        # ::ffff:x and ::x forms: glibc prints them dotted, the ipaddress module does not
        return ipaddress.IPv6Address(addr).compressed
    return socket.inet_ntop(socket.AF_INET6, addr)


def _as_bytes(column: np.ndarray) -> np.ndarray:
    """A column of 16-byte addresses as an (n, 16) uint8 array."""
    return np.frombuffer(np.ascontiguousarray(column).tobytes(), dtype=np.uint8).reshape(len(column), -1)


class _TextCache(dict):
    """Packed address -> text; flows share few addresses, so most lookups are C-level dict hits."""

    LIMIT = 1 << 20

    def __init__(self, convert):
        super().__init__()
        self.convert = convert

    def __missing__(self, packed: bytes) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[packed] = self.convert(packed)
        return text


_V4_TEXT = _TextCache(socket.inet_ntoa)
_V6_TEXT = _TextCache(lambda packed: ip_text(packed, 6))


def v4_texts(column: np.ndarray) -> list[str]:
    last4 = np.ascontiguousarray(_as_bytes(column)[:, 12:16]).view("V4").ravel().tolist()
    return list(map(_V4_TEXT.__getitem__, last4))


def v6_texts(column: np.ndarray) -> list[str]:
    return list(map(_V6_TEXT.__getitem__, column.tolist()))
