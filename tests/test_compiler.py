"""The compile child's report, decoded without a kernel: error summaries, xtrace.h constants, layouts."""

from __future__ import annotations

import numpy as np

from xtrace_agent.xdp import addresses, compiler, layout
from xtrace_agent.xdp.compiler import Field


def test_summary_prefers_the_first_compiler_error():
    err = ("/opt/xtrace/bpf/xtrace.c:10:5: error: use of undeclared identifier 'x'\n"
           "/opt/xtrace/bpf/xtrace.c:11:5: error: second\n"
           "xtrace-compiler: Failed to compile BPF module b'/opt/xtrace/bpf/xtrace.c'\n")
    assert compiler.summarize(err, 1) == "compile error: use of undeclared identifier 'x'"


def test_summary_of_a_verifier_rejection_keeps_its_last_word():
    err = ("bpf: Failed to load program: Permission denied\n0: (61) r1 = *(u32 *)(r1 +0)\n"
           "invalid access to packet, off=0 size=1, R1(id=0,off=0,r=0)\n"
           "xtrace-compiler: Failed to load BPF program b'xtrace_eth': Permission denied\n")
    assert compiler.summarize(err, 1) == ("Failed to load BPF program b'xtrace_eth': Permission denied "
                                          "(verifier: invalid access to packet, off=0 size=1, R1(id=0,off=0,r=0))")


def test_summary_of_missing_permission_names_the_fix():
    err = "could not open bpf map: stats, error: Operation not permitted\nxtrace-compiler: Failed to compile\n"
    assert compiler.summarize(err, 1) == compiler.NO_PERMISSION


def test_summary_of_nothing():
    assert compiler.summarize("", -9) == "compiler process exited with status -9"


def test_every_constant_the_c_uses_is_defined_by_the_agent():
    import re

    text = "".join((compiler.bpf_dir() / name).read_text() for name in ("xtrace.c", "xtrace.h"))
    used = set(re.findall(r"\b(XT_(?:TRAFFIC|UNTRACKED)_[A-Z_]+)\b", text))
    assert used and used <= set(layout.defines())
    assert layout.defines()["XT_TRAFFIC_ROCE"] == 1 and layout.TRAFFIC_TYPES[1] == "roce"


def test_dtype_from_reported_layout():
    fields = (Field("ifindex", 0, 4, 1), Field("src", 4, 16, 16), Field("port", 20, 2, 1))
    dt = layout.dtype_of(fields, 24)
    raw = (7).to_bytes(4, "little") + bytes(range(16)) + (443).to_bytes(2, "little") + b"\0\0"
    row = np.frombuffer(raw, dtype=dt)[0]
    assert row["ifindex"] == 7 and row["port"] == 443 and bytes(row["src"]) == bytes(range(16))


def test_ip_text_is_canonical():
    import ipaddress

    for text in ("2001:db8::1", "::1", "fe80::1:0:0:1", "2001:db8:0:1:1:1:1:1", "::ffff:1.2.3.4", "::1.2.3.4", "::"):
        packed = ipaddress.IPv6Address(text).packed
        assert addresses.ip_text(packed, 6) == ipaddress.IPv6Address(text).compressed
    assert addresses.ip_text(b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1]), 4) == "10.0.0.1"
