"""A drain bigger than one batch read, as on a node with many CPUs (there a chunk holds a few
thousand entries of a 100k-flow table): every key comes once with its counts, across chunks and
intervals, and the accumulator's key index gives exactly what the per-flow dict path gives.

The real program's real kernel table is filled from user space (libbpf's update_batch, what the
programs' own counting would leave there): IPv4 and IPv6 flows on two interfaces, and untracked
entries (ip_version 0), some at 0 as the drain's own placeholders are."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.bpf import bpf_prerequisites
from xtrace_agent.accumulator import Accumulator
from xtrace_agent.config import XdpConfig
from xtrace_agent.xdp import libbpf
from xtrace_agent.xdp import program as xdp_program
from xtrace_agent.xdp.flowtable import TableDeltas

pytestmark = pytest.mark.kernel

FLOWS = 3000


def write(program: xdp_program.XdpProgram, n: int, interval: int) -> dict[int, tuple[int, int]]:
    """n flows (and 6 untracked entries) into the table the program counts into; returns what each
    interface got, summed as the drain must."""
    table = program._tables[program._active]
    keys = np.zeros(n + 6, table.key_dtype)
    i = np.arange(n, dtype=np.uint32)
    flows = keys[:n]
    flows["ifindex"] = 1 + i % 2
    flows["ip_version"] = np.where(i % 3 == 0, 6, 4)
    src = np.zeros((n, 16), np.uint8)
    src[:, :4] = i.view(np.uint8).reshape(n, 4)
    flows["src"] = src.view("V16").reshape(n)
    flows["src_port"], flows["dst_port"], flows["protocol"] = i % 60000 + 1, 4791, 17
    loose = keys[n:]
    loose["ifindex"] = [1, 2, 1, 2, 1, 2]
    loose["protocol"] = [1, 1, 2, 2, 3, 3]  # untracked reasons: malformed, non_ip, table_full
    values = np.zeros((n + 6, program.ncpu, table.slot // 8), np.uint64)
    packets = np.concatenate((i.astype(np.uint64) % 7 + 1 + interval, [0, 3, 0, 4, 5, 0]))
    for cpu in range(program.ncpu):  # each CPU's share, as the per-CPU table holds them
        share = np.where(packets > 0, packets + cpu, 0)
        values[:, cpu, program._packets_word] = share
        values[:, cpu, program._bytes_word] = share * 100
    libbpf.update_batch(table.info.fd, keys.ctypes.data, values.ctypes.data, len(keys))
    total = values[:, :, program._packets_word].sum(axis=1)
    out: dict[int, tuple[int, int]] = {}
    for ifindex, p in zip(keys["ifindex"].tolist(), total.tolist(), strict=True):
        if p:
            old = out.get(ifindex, (0, 0))
            out[ifindex] = (old[0] + p, old[1] + p * 100)
    return out


def test_a_table_of_many_chunks_drains_every_key_once_and_accumulates_as_the_dict_path(monkeypatch):
    bpf_prerequisites()
    monkeypatch.setattr(xdp_program, "DRAIN_CHUNK_BYTES", 4096)  # a chunk of a few dozen entries
    program = xdp_program.XdpProgram.load(XdpConfig(flow_table_size=8192))
    try:
        assert program._tables[0].chunk * 20 < FLOWS
        by_table = Accumulator(10 * FLOWS, 60.0, lambda key: ("other", key[0]))
        by_dict = Accumulator(10 * FLOWS, 60.0, lambda key: ("other", key[0]))
        tracked = 0
        for interval in range(3):
            expected_interfaces = write(program, FLOWS, interval)
            drained = program.drain()
            flows = drained.flows
            whole = flows.kernel_keys.view(np.dtype((np.void, flows.kernel_keys.dtype.itemsize)))
            assert len(flows.packets) == FLOWS and len(np.unique(whole)) == FLOWS  # each key once
            assert drained.interfaces == expected_interfaces
            spread = [q * program.ncpu + sum(range(program.ncpu)) for q in (3, 4, 5)]  # over the CPUs
            assert drained.untracked == {(2, "malformed"): (spread[0], 100 * spread[0]),
                                         (2, "non_ip"): (spread[1], 100 * spread[1]),
                                         (1, "table_full"): (spread[2], 100 * spread[2])}  # not those at 0
            tracked += int(flows.packets.sum())
            deltas = TableDeltas(flows, lambda ifindex: (f"if{ifindex}", "ingress"))
            by_dict.add(dict(deltas), now=float(interval))
            by_table.add_table(deltas, now=float(interval))
            assert len(by_table._index) == FLOWS  # found by kernel key from the second interval on
            got, want = by_table.columns(float(interval)), by_dict.columns(float(interval))
            assert got[0] == want[0] and got[1].tolist() == want[1].tolist() and got[2].tolist() == want[2].tolist()
            assert got[3][0] == want[3][0] and got[3][1].tolist() == want[3][1].tolist()
        assert int(got[1].sum()) == tracked  # every packet of every interval, in the flows
    finally:
        program.close()
