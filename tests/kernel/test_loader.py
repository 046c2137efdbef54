"""Loading the XDP program: the compile child keeps BCC/LLVM out of the agent, and every failure is
one line (AgentFailure), never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from tests.helpers.bpf import bpf_prerequisites
from xtrace_agent.errors import AgentFailure
from xtrace_agent.xdp import compiler

pytestmark = pytest.mark.kernel


def test_loaded_program_leaves_no_bcc_or_llvm_in_the_agent():
    bpf_prerequisites()
    code = textwrap.dedent("""
        import sys
        from xtrace_agent.config import XdpConfig
        from xtrace_agent.xdp.program import XdpProgram
        p = XdpProgram.load(XdpConfig())
        maps = open("/proc/self/maps").read()
        print("bcc" in sys.modules, "libLLVM" in maps or "libclang" in maps, "libbcc" in maps)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]


def test_compile_error_is_one_line(tmp_path):
    bpf_prerequisites()
    src = tmp_path / "bad.c"
    src.write_text("#include <uapi/linux/bpf.h>\nint xtrace_eth(struct xdp_md *ctx) { return nope; }\n")
    with pytest.raises(AgentFailure) as e:
        compiler.compile_and_load(16, 1, source=str(src), programs=("xtrace_eth",))
    msg = str(e.value)
    # the compile error first, then which kernel headers it was compiled against
    assert msg.startswith("cannot load the XDP program: compile error: use of undeclared identifier 'nope'")
    assert "kernel headers:" in msg and "\n" not in msg


def test_verifier_rejection_is_one_line(tmp_path):
    bpf_prerequisites()
    src = tmp_path / "unsafe.c"
    src.write_text("#include <uapi/linux/bpf.h>\n"
                   "int xtrace_eth(struct xdp_md *ctx) { return *(char *)(long)ctx->data; }\n")
    with pytest.raises(AgentFailure) as e:
        compiler.compile_and_load(16, 1, source=str(src), programs=("xtrace_eth",))
    msg = str(e.value)
    assert "xtrace_eth" in msg and "verifier" in msg and "\n" not in msg


def test_without_bpf_permission_one_line_naming_the_fix():
    bpf_prerequisites()
    home = tempfile.mkdtemp(prefix="xtk-nobody-")
    os.chown(home, 65534, 65534)
    code = ("from xtrace_agent.config import XdpConfig\n"
            "from xtrace_agent.xdp.program import XdpProgram\n"
            "XdpProgram.load(XdpConfig())\n")
    try:
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                              code], capture_output=True, text=True, timeout=60, cwd=home,
                             env={"PATH": "/usr/bin:/bin", "XTRACE_HEADERS_CACHE": os.path.join(home, "cache")})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert "no permission to create BPF maps and programs: run as root" in last
