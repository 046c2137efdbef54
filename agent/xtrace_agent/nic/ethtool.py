"""Live driver statistics of a netdev: the `ethtool -S` set through the SIOCETHTOOL ioctl, and the
standard pause statistics through the ethtool generic-netlink family. No `ethtool` process.

The string set (ETHTOOL_GSTRINGS) is read with pyroute2's `IoctlEthtool`, once per netdev, and again
only when the driver's count (ETHTOOL_GSSET_INFO) changes (channels added with `ethtool -L`, a driver
reload). The values are one ETHTOOL_GSTATS per interval into a buffer kept per netdev: pyroute2's
`get_statistics()` builds a new ctypes type per call, never re-reads the names, and sizes its buffer
from the cached names, so a grown table would be written past its end (the kernel copies as many
values as the driver has now). Here the count is checked first, and the buffer has headroom.

pyroute2's netlink ethtool module has no PAUSE_GET; the message is declared below with its nla
classes (uapi/linux/ethtool_netlink.h) and sent on its GenericNetlinkSocket.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from pyroute2.ethtool.ioctl import ETH_SS_STATS, ETHTOOL_GSTATS, SIOCETHTOOL, IfReq, IoctlEthtool
from pyroute2.netlink import NLA_F_NESTED, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

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
    nla_flags = NLA_F_NESTED
    nla_map = (("ETHTOOL_A_HEADER_UNSPEC", "none"), ("ETHTOOL_A_HEADER_DEV_INDEX", "uint32"),
               ("ETHTOOL_A_HEADER_DEV_NAME", "asciiz"), ("ETHTOOL_A_HEADER_FLAGS", "uint32"))


class pause_msg(genlmsg):
    nla_map = (("ETHTOOL_A_PAUSE_UNSPEC", "none"), ("ETHTOOL_A_PAUSE_HEADER", "pauseheader"),
               ("ETHTOOL_A_PAUSE_AUTONEG", "uint8"), ("ETHTOOL_A_PAUSE_RX", "uint8"),
               ("ETHTOOL_A_PAUSE_TX", "uint8"), ("ETHTOOL_A_PAUSE_STATS", "stats"),
               ("ETHTOOL_A_PAUSE_STATS_SRC", "uint32"))
    pauseheader = _header

    class stats(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (("ETHTOOL_A_PAUSE_STAT_UNSPEC", "none"), ("ETHTOOL_A_PAUSE_STAT_PAD", "none"),
                   ("ETHTOOL_A_PAUSE_STAT_TX_FRAMES", "uint64"), ("ETHTOOL_A_PAUSE_STAT_RX_FRAMES", "uint64"))


class PauseReader:
    """The driver's standard pause frame counters (802.3 aPAUSEMACCtrlFrames*), where it has them."""

    def __init__(self) -> None:
        self._sock: GenericNetlinkSocket | None = None
        self._family_missing = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> GenericNetlinkSocket:
        if self._sock is None:
            sock = GenericNetlinkSocket()
            try:
                sock.bind(ETHTOOL_GENL_NAME, pause_msg)
            except NetlinkError:
                sock.close()
                self._family_missing = True  # kernels before 5.6: no ethtool netlink at all
                raise EthtoolFailure("kernel has no ethtool netlink") from None
            self._sock = sock
        return self._sock

    def read(self, netdev: str) -> dict[str, int]:
        """{"rx": frames, "tx": frames}; raises EthtoolFailure when there are none to read."""
        if self._family_missing:
            raise EthtoolFailure("kernel has no ethtool netlink")
        sock = self._socket()
        msg = pause_msg()
        msg["cmd"] = ETHTOOL_MSG_PAUSE_GET
        msg["version"] = 1
        msg["attrs"].append(("ETHTOOL_A_PAUSE_HEADER", {"attrs": [
            ("ETHTOOL_A_HEADER_DEV_NAME", netdev), ("ETHTOOL_A_HEADER_FLAGS", ETHTOOL_FLAG_STATS)]}))
        try:
            replies = sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST)
        except NetlinkError as e:
            raise EthtoolFailure(_why(OSError(e.code, str(e)))) from None
        except OSError as e:
            raise EthtoolFailure(_why(e)) from None
        return parse_pause(list(replies))


def parse_pause(replies) -> dict[str, int]:
    out: dict[str, int] = {}
    for reply in replies:
        stats = reply.get_attr("ETHTOOL_A_PAUSE_STATS")
        if stats is None:
            continue
        for key, attr in (("tx", "ETHTOOL_A_PAUSE_STAT_TX_FRAMES"), ("rx", "ETHTOOL_A_PAUSE_STAT_RX_FRAMES")):
            value = stats.get_attr(attr)
            if value is not None:  # the kernel omits a counter the driver left unset
                out[key] = value
    if not out:
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
