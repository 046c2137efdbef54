"""Live driver statistics of a netdev: the `ethtool -S` set through the SIOCETHTOOL ioctl, and the
standard pause statistics through the ethtool generic-netlink family. No `ethtool` process.

The string set (ETHTOOL_GSTRINGS) is read with pyroute2's `IoctlEthtool`, once per netdev, and again
only when the driver's count (ETHTOOL_GSSET_INFO) changes (channels added with `ethtool -L`, a driver
reload). The values are one ETHTOOL_GSTATS per interval into a buffer kept per netdev: pyroute2's
`get_statistics()` builds a new ctypes type per call, never re-reads the names, and sizes its buffer
from the cached names, so a grown table would be written past its end (the kernel copies as many
values as the driver has now). Here the count is checked first, and the buffer has headroom.

pyroute2's netlink ethtool module has no PAUSE_GET. pyroute2 resolves the ethtool family id once; the
request (uapi/linux/ethtool_netlink.h: ETHTOOL_MSG_PAUSE_GET with ETHTOOL_FLAG_STATS) then goes on a
plain generic-netlink socket, because pyroute2's request path costs 60 times the whole ioctl read
(bench/bench_nic.py).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

try:
    from pyroute2.ethtool.ioctl import ETH_SS_STATS, ETHTOOL_GSTATS, SIOCETHTOOL, IfReq, IoctlEthtool
    from pyroute2.netlink import NLA_F_NESTED as _NESTED
    from pyroute2.netlink import genlmsg, nla
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket
except ImportError as e:  # the agent runs on; the NIC source says once why it reads no live statistics
    MISSING: str | None = f"pyroute2 cannot be imported ({e})"
    genlmsg = nla = object
    _NESTED = 0
else:
    MISSING = None

from xtrace_agent.nic.dump import Table

HEADROOM = 64  # values the kernel may add between our count check and the read

ETHTOOL_GENL_NAME = "ethtool"
ETHTOOL_MSG_PAUSE_GET = 21
ETHTOOL_FLAG_STATS = 1 << 2


class EthtoolFailure(Exception):
    """The netdev cannot be read (gone, no ethtool statistics): `why` is one short phrase."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def _why(e: OSError) -> str:
    if e.errno == errno.ENODEV:
        return "no such interface"
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return "driver has no such statistics"
    return errno.errorcode.get(e.errno or 0, str(e))


class _Netdev:
    __slots__ = ("names", "ifreq", "gstats", "capacity")

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.capacity = -1
        self.ifreq = None
        self.gstats = None


def _gstats_type(n: int):
    class GStats(ctypes.Structure):
        _fields_ = [("cmd", ctypes.c_uint32), ("n_stats", ctypes.c_uint32), ("data", ctypes.c_uint64 * n)]
    return GStats


class StatsReader:
    """Reads `ethtool -S` tables of netdevs in this network namespace."""

    def __init__(self) -> None:
        if MISSING:
            raise EthtoolFailure(MISSING)
        self._ioctl = IoctlEthtool()  # one socket for every netdev
        self._netdevs: dict[str, _Netdev] = {}
        self.name_reads = 0  # string sets read (a benchmark and the tests watch it)

    def close(self) -> None:
        self._ioctl.close()

    def forget(self, netdev: str) -> None:
        self._netdevs.pop(netdev, None)

    def read(self, netdev: str) -> Table:
        """The netdev's statistics now; raises EthtoolFailure when it cannot be read."""
        st = self._netdevs.get(netdev)
        if st is None:
            st = self._netdevs[netdev] = _Netdev()
        try:
            self._ioctl.change_ifname(netdev)
            count = self._ioctl.get_stringset_length(ETH_SS_STATS)
            if count != len(st.names) or st.ifreq is None:
                self._load_names(netdev, st, count)
            n = self._gstats(st)
        except OSError as e:
            raise EthtoolFailure(_why(e)) from None
        except Exception as e:  # pyroute2's NoSuchDevice / NotSupportedError
            raise EthtoolFailure(type(e).__name__) from None
        if n != len(st.names):  # the table changed between the count and the read: names next time
            st.names = ()
            raise EthtoolFailure("statistics table changed while reading")
        return Table(st.names, memoryview(st.gstats.data).cast("B").cast("Q")[:n].tolist())

    def _load_names(self, netdev: str, st: _Netdev, count: int) -> None:
        names = tuple(self._ioctl.get_stringset(set_id=ETH_SS_STATS)) if count else ()
        self.name_reads += 1
        st.names = names
        if len(names) + HEADROOM > st.capacity:
            st.capacity = len(names) + HEADROOM
            st.gstats = _gstats_type(st.capacity)()
        st.ifreq = IfReq()
        st.ifreq.ifr_name = (ctypes.c_uint8 * 16)(*netdev.encode().ljust(16, b"\0")[:16])
        st.ifreq.gstats = ctypes.cast(ctypes.byref(st.gstats), ctypes.c_void_p)

    def _gstats(self, st: _Netdev) -> int:
        st.gstats.cmd = ETHTOOL_GSTATS
        st.gstats.n_stats = 0
        if st.capacity - HEADROOM == 0:
            return 0
        fcntl.ioctl(self._ioctl.sock, SIOCETHTOOL, st.ifreq)
        return st.gstats.n_stats


# --- the standard pause statistics (ethtool netlink, ETHTOOL_MSG_PAUSE_GET with ETHTOOL_FLAG_STATS) ---

class _header(nla):
    nla_flags = _NESTED
    nla_map = (("ETHTOOL_A_HEADER_UNSPEC", "none"), ("ETHTOOL_A_HEADER_DEV_INDEX", "uint32"),
               ("ETHTOOL_A_HEADER_DEV_NAME", "asciiz"), ("ETHTOOL_A_HEADER_FLAGS", "uint32"))


class pause_msg(genlmsg):
    nla_map = (("ETHTOOL_A_PAUSE_UNSPEC", "none"), ("ETHTOOL_A_PAUSE_HEADER", "pauseheader"),
               ("ETHTOOL_A_PAUSE_AUTONEG", "uint8"), ("ETHTOOL_A_PAUSE_RX", "uint8"),
               ("ETHTOOL_A_PAUSE_TX", "uint8"), ("ETHTOOL_A_PAUSE_STATS", "stats"),
               ("ETHTOOL_A_PAUSE_STATS_SRC", "uint32"))
    pauseheader = _header

    class stats(nla):
        nla_flags = _NESTED
        nla_map = (("ETHTOOL_A_PAUSE_STAT_UNSPEC", "none"), ("ETHTOOL_A_PAUSE_STAT_PAD", "none"),
                   ("ETHTOOL_A_PAUSE_STAT_TX_FRAMES", "uint64"), ("ETHTOOL_A_PAUSE_STAT_RX_FRAMES", "uint64"))


class PauseReader:
    """The driver's standard pause frame counters (802.3 aPAUSEMACCtrlFrames*), where it has them.

    pyroute2 resolves the ethtool family once; each interval's PAUSE_GET is then one datagram on a raw
    generic-netlink socket. bench/bench_nic.py measured pyroute2's own request at about 0.9 ms per
    netdev on a loaded machine (its event loop), 60 times the ioctl read of all driver statistics."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._family: int | None = None
        self._missing = False
        self._seq = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _open(self) -> socket.socket:
        if MISSING:
            raise EthtoolFailure(MISSING)
        if self._missing:
            raise EthtoolFailure("kernel has no ethtool netlink")
        if self._sock is None:
            resolver = GenericNetlinkSocket()
            try:
                resolver.bind(ETHTOOL_GENL_NAME, pause_msg)
                self._family = resolver.prid
            except NetlinkError:
                self._missing = True  # kernels before 5.6: no ethtool netlink at all
                raise EthtoolFailure("kernel has no ethtool netlink") from None
            finally:
                resolver.close()
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            sock.settimeout(1.0)
            sock.bind((0, 0))
            self._sock = sock
        return self._sock

    def read(self, netdev: str) -> dict[str, int]:
        """{"rx": frames, "tx": frames}; raises EthtoolFailure when there are none to read."""
        sock = self._open()
        self._seq += 1
        try:
            sock.send(_pause_request(self._family, self._seq, netdev))
            while True:
                data = sock.recv(65536)
                kind, seq, body = _nlmsg(data)
                if seq == self._seq:
                    break
        except OSError as e:
            raise EthtoolFailure(_why(e)) from None
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0]
            raise EthtoolFailure(_why(OSError(code, os.strerror(code))))
        return _pause_stats(body[4:])  # past the genlmsghdr


NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
ETHTOOL_A_PAUSE_HEADER, ETHTOOL_A_PAUSE_STATS = 1, 5
ETHTOOL_A_HEADER_DEV_NAME, ETHTOOL_A_HEADER_FLAGS = 2, 3
ETHTOOL_A_PAUSE_STAT_TX_FRAMES, ETHTOOL_A_PAUSE_STAT_RX_FRAMES = 2, 3


def _nla(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _pause_request(family: int, seq: int, netdev: str) -> bytes:
    header = _nla(ETHTOOL_A_HEADER_DEV_NAME, netdev.encode() + b"\0") + _nla(
        ETHTOOL_A_HEADER_FLAGS, struct.pack("=I", ETHTOOL_FLAG_STATS))
    body = struct.pack("=BBH", ETHTOOL_MSG_PAUSE_GET, 1, 0) + _nla(ETHTOOL_A_PAUSE_HEADER | NLA_F_NESTED, header)
    return struct.pack("=IHHII", 16 + len(body), family, 1, seq, 0) + body  # NLM_F_REQUEST


def _nlmsg(data: bytes) -> tuple[int, int, bytes]:
    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
    return kind, seq, data[16:length]


def _attrs(data: bytes):
    at = 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            return
        yield kind & 0x3FFF, data[at + 4:at + length]
        at += (length + 3) & ~3


def _pause_stats(attrs: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind, payload in _attrs(attrs):
        if kind != ETHTOOL_A_PAUSE_STATS:
            continue
        for stat, value in _attrs(payload):
            if stat in (ETHTOOL_A_PAUSE_STAT_TX_FRAMES, ETHTOOL_A_PAUSE_STAT_RX_FRAMES) and len(value) == 8:
                out["tx" if stat == ETHTOOL_A_PAUSE_STAT_TX_FRAMES else "rx"] = struct.unpack("=Q", value)[0]
    if not out:  # the kernel omits the counters a driver left unset
        raise EthtoolFailure("driver has no pause statistics")
    return out


def sysfs_counter(root: str, netdev: str, name: str) -> int | None:
    """An unsigned counter file of /sys/class/net/<netdev>/ (carrier_changes); None if unreadable."""
    try:
        fd = os.open(os.path.join(root, "class", "net", netdev, name), os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None
