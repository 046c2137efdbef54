"""Counter truth for RDMA: how wide each sysfs counter is, and monotonic totals built from raw reads.

The kernel exposes counters of different widths and behaviours at its edge
(drivers/infiniband/core/sysfs.c, Documentation/ABI/stable/sysfs-class-infiniband,
drivers/infiniband/hw/mlx5/counters.c):

- the extended PMA data and packet counters are 64 bits: they never wrap in practice, so a
  drop means the device was re-probed (driver reload, reset) and counting restarted at zero;
- `port_xmit_wait` is 32 bits. Some firmware lets it wrap; a spec-following PMA stops it at
  2^32 - 1 (seen on ConnectX-7). So a drop is a wrap (delta mod 2^32), and a read of exactly
  2^32 - 1 is saturation: a wrapping counter lands there once in four billion reads.
- the mlx5 queue counters (`out_of_buffer`, `rx_write_requests`, ...) are copied by the driver
  from 32-bit firmware fields: at line rate they wrap within hours, a drop is a wrap;
- the PMA error counters are 16, 8 or 4 bits and, as the InfiniBand spec requires, stop at
  their maximum instead of wrapping: a counter at its maximum is frozen, not live. A drop means
  someone cleared the counters (perfquery -R).
"""

from __future__ import annotations

from typing import NamedTuple


class Width(NamedTuple):
    """How a counter behaves at its edge: `wraps` (a drop is a wrap) and `saturates` (sticks at max).

    Neither: a drop is a reset (the device was re-probed and counts again from zero).
    """

    bits: int
    wraps: bool = False
    saturates: bool = False

    @property
    def max(self) -> int:
        return (1 << self.bits) - 1


_W64 = Width(64)
_W32 = Width(32, wraps=True)


def _sat(bits: int) -> Width:
    return Width(bits, saturates=True)


# The PMA error counters (PortCounters): each increase is a real fault on the link or the port
# (the alerts and the RDMA dashboard select these).
PORT_ERRORS: dict[str, Width] = {
    "symbol_error": _sat(16),
    "link_error_recovery": _sat(8),
    "link_downed": _sat(8),
    "port_rcv_errors": _sat(16),
    "port_rcv_remote_physical_errors": _sat(16),
    "port_rcv_switch_relay_errors": _sat(16),
    "port_xmit_discards": _sat(16),
    "port_xmit_constraint_errors": _sat(8),
    "port_rcv_constraint_errors": _sat(8),
    "local_link_integrity_errors": _sat(4),
    "excessive_buffer_overrun_errors": _sat(4),
    "VL15_dropped": _sat(16),
}
# port_xmit_data and port_rcv_data count 4-octet words (IBA PortCountersExtended): bytes = words x 4.
WORD_BYTES = 4

# ports/<n>/counters/*: the PortCounters / PortCountersExtended attributes (core/sysfs.c).
PORT_COUNTERS: dict[str, Width] = {
    **PORT_ERRORS,
    "port_xmit_wait": Width(32, wraps=True, saturates=True),
    "port_xmit_data": _W64,
    "port_rcv_data": _W64,
    "port_xmit_packets": _W64,
    "port_rcv_packets": _W64,
    "unicast_xmit_packets": _W64,
    "unicast_rcv_packets": _W64,
    "multicast_xmit_packets": _W64,
    "multicast_rcv_packets": _W64,
}

# mlx5 queue counters: 32-bit big-endian fields of QUERY_Q_COUNTER (counters.c INIT_Q_COUNTER);
# switchdev representors expose the same set with a `vport_` prefix. The congestion, PPCNT and
# flow (op) counters of mlx5 are 64-bit, like every hw counter we do not know.
_MLX5_Q_COUNTERS = (
    "rx_write_requests", "rx_read_requests", "rx_atomic_requests", "rx_dct_connect", "out_of_buffer",
    "out_of_sequence", "duplicate_request", "rnr_nak_retry_err", "packet_seq_err",
    "implied_nak_seq_err", "local_ack_timeout_err", "resp_local_length_error", "resp_cqe_error",
    "req_cqe_error", "req_remote_invalid_request", "req_remote_access_errors",
    "resp_remote_access_errors", "resp_cqe_flush_error", "req_cqe_flush_error",
    "req_transport_retries_exceeded", "req_rnr_retries_exceeded", "roce_adp_retrans",
    "roce_adp_retrans_to", "roce_slow_restart", "roce_slow_restart_cnps", "roce_slow_restart_trans",
)
HW_COUNTERS: dict[str, Width] = {
    **{name: _W32 for name in _MLX5_Q_COUNTERS},
    **{f"vport_{name}": _W32 for name in _MLX5_Q_COUNTERS},
}

# Files in hw_counters/ that are settings, not counters.
HW_NOT_COUNTERS = frozenset({"lifespan"})


def width(group: str, name: str) -> Width:
    """The width of counter `name` in `group` ("counters" or "hw_counters"); unknown names are 64-bit."""
    table = PORT_COUNTERS if group == "counters" else HW_COUNTERS
    return table.get(name, _W64)


class Reading(NamedTuple):
    """A tracked counter after one read: the monotonic total (None: nothing to push) and flags."""

    value: int | None
    saturated: bool = False
    wrapped: bool = False
    reset: bool = False


class _State:
    __slots__ = ("raw", "total")

    def __init__(self, raw: int, total: int):
        self.raw = raw
        self.total = total


class CounterTracker:
    """Turns raw counter reads into monotonic cumulative values, one state per key.

    The first read of a counter is pushed as is (the hardware's own total since the device
    came up). After that each read adds its delta, computed for the counter's width, so what
    we push never goes backwards (docs/design.md, "Rules that hold everywhere"). A counter that
    cannot be read keeps its state: when it comes back its delta is computed from the last good read.
    """

    def __init__(self) -> None:
        self._state: dict[object, _State] = {}
        self.wraps = 0
        self.resets = 0

    def update(self, key: object, raw: int, w: Width) -> Reading:
        st = self._state.get(key)
        saturated = w.saturates and raw >= w.max
        if st is None:
            self._state[key] = _State(raw, raw)
            return Reading(None if saturated else raw, saturated)
        wrapped = reset = False
        if raw >= st.raw:
            delta = raw - st.raw
        elif w.wraps:
            delta = (raw - st.raw) % (1 << w.bits)
            wrapped = True
            self.wraps += 1
        else:
            # 64-bit: the device restarted counting; saturating: someone cleared the counters.
            # Either way the new count started at zero.
            delta = raw
            reset = True
            self.resets += 1
        st.raw = raw
        st.total += delta
        # A saturated counter's total is a lower bound frozen at the maximum: pushing it would
        # draw a flat line that looks like "no more errors". Report the flag instead.
        return Reading(None if saturated else st.total, saturated, wrapped, reset)

    def total(self, key: object) -> int | None:
        """The monotonic total of `key` after its last update (None if never read)."""
        st = self._state.get(key)
        return st.total if st else None

    def __len__(self) -> int:
        return len(self._state)
