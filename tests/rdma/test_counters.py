"""Counter widths (from the kernel's tables) and the tracker that makes raw reads monotonic."""

import pytest

from xtrace_agent.rdma.counters import HW_COUNTERS, PORT_COUNTERS, CounterTracker, Width, width


@pytest.mark.parametrize("name,bits,wraps,saturates", [
    # core/sysfs.c PORT_PMA_ATTR / PORT_PMA_ATTR_EXT widths
    ("symbol_error", 16, False, True),
    ("link_error_recovery", 8, False, True),
    ("link_downed", 8, False, True),
    ("port_rcv_errors", 16, False, True),
    ("port_xmit_discards", 16, False, True),
    ("port_xmit_constraint_errors", 8, False, True),
    ("local_link_integrity_errors", 4, False, True),
    ("excessive_buffer_overrun_errors", 4, False, True),
    ("VL15_dropped", 16, False, True),
    ("port_xmit_wait", 32, True, True),
    ("port_xmit_data", 64, False, False),
    ("port_rcv_packets", 64, False, False),
    ("multicast_xmit_packets", 64, False, False),
])
def test_port_counter_widths(name, bits, wraps, saturates):
    assert width("counters", name) == Width(bits, wraps, saturates)


def test_mlx5_queue_counters_are_32_bit_and_wrap_others_are_64():
    assert width("hw_counters", "out_of_buffer") == Width(32, wraps=True)
    assert width("hw_counters", "vport_rx_write_requests") == Width(32, wraps=True)
    # congestion and PPCNT counters are 64-bit fields in counters.c
    assert width("hw_counters", "np_cnp_sent") == Width(64)
    assert width("hw_counters", "rx_icrc_encapsulated") == Width(64)


def test_unknown_counters_are_treated_as_64_bit():
    assert width("counters", "port_xmit_data_64") == Width(64)
    assert width("hw_counters", "new_fw_counter") == Width(64)
    assert "lifespan" not in HW_COUNTERS and "lifespan" not in PORT_COUNTERS


def test_first_read_is_pushed_as_is():
    t = CounterTracker()
    assert t.update("k", 123, Width(64)).value == 123


def test_64_bit_counter_accumulates_and_a_drop_is_a_reset():
    t = CounterTracker()
    w = Width(64)
    t.update("k", 1000, w)
    assert t.update("k", 1500, w).value == 1500
    r = t.update("k", 40, w)  # device re-probed: counting restarted at 0
    assert r.reset and r.value == 1540
    assert t.update("k", 100, w).value == 1600
    assert t.resets == 1


def test_32_bit_counter_wraps_modulo_2_to_the_32():
    t = CounterTracker()
    w = Width(32, wraps=True)
    t.update("k", 2**32 - 100, w)
    r = t.update("k", 50, w)
    assert r.wrapped and not r.saturated
    assert r.value == 2**32 - 100 + 150
    assert t.wraps == 1


def test_saturating_counter_at_max_is_flagged_not_pushed():
    t = CounterTracker()
    w = Width(16, saturates=True)
    first = t.update("k", 65535, w)
    assert first.saturated and first.value is None
    t2 = CounterTracker()
    t2.update("k", 65000, w)
    r = t2.update("k", 65535, w)
    assert r.saturated and r.value is None
    # cleared (perfquery -R): counts again from zero, total keeps growing from the last value
    r = t2.update("k", 3, w)
    assert not r.saturated and r.reset and r.value == 65535 + 3


def test_4_bit_counter_saturates_at_15():
    t = CounterTracker()
    assert t.update("k", 14, Width(4, saturates=True)).saturated is False
    assert t.update("k", 15, Width(4, saturates=True)).saturated is True


def test_port_xmit_wait_stuck_at_max_is_saturated_and_leaving_it_counts_as_a_wrap():
    t = CounterTracker()
    w = width("counters", "port_xmit_wait")
    t.update("k", 4_000_000_000, w)
    r = t.update("k", 2**32 - 1, w)
    assert r.saturated and r.value is None
    # after a clear from the maximum, mod 2^32 gives new + 1: about right
    r = t.update("k", 10, w)
    assert r.wrapped and r.value == 2**32 - 1 + 11


def test_total_of_an_unknown_key_is_none():
    assert CounterTracker().total("nope") is None
