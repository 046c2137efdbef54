"""Compiles and loads the XDP program in a short-lived child process, handing back only fds.

BCC brings LLVM/clang into the process that compiles (about 190 MiB RSS that never goes away).
The agent therefore never imports bcc: it runs `python -m xtrace_agent.xdp.compiler` with one end
of a socketpair, the child compiles with BCC, loads the programs and maps, and sends their fds back
(SCM_RIGHTS) with a JSON description of each map, including the key/value layout exactly as BCC's
ctypes types report it, so no C struct layout is ever written again in Python. Then it exits, and
the kernel objects live on through the parent's fds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from xtrace_agent import environ
from xtrace_agent.errors import AgentFailure

log = logging.getLogger("xtrace.xdp")

# receive (XDP) and send (TC, sched_cls) entry points of bpf/xtrace.c: Ethernet, then IPoIB
RX_PROGRAMS = ("xtrace_eth", "xtrace_ipoib")
TX_PROGRAMS = ("xtrace_eth_tx", "xtrace_ipoib_tx")
PROGRAMS = RX_PROGRAMS + TX_PROGRAMS
MAPS = ("flows_a", "flows_b", "tables", "state")
MAX_MESSAGE = 1 << 20
HEADERS_LINE = "xtrace-compiler-headers: "  # the child's first stderr line: which headers it compiles against
NO_PERMISSION = ("no permission to create BPF maps and programs: run as root, or with CAP_BPF, CAP_PERFMON "
                 "and CAP_NET_ADMIN")


def bpf_dir() -> Path:
    """Where xtrace.c and xtrace.h live: $XTRACE_BPF_DIR, else the repository's bpf/."""
    given = environ.BPF_DIR.get()
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[3] / "bpf"


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    count: int  # array length; 1 for a scalar


@dataclass(frozen=True)
class MapInfo:
    name: str
    fd: int
    map_type: int
    max_entries: int
    key_size: int
    value_size: int  # one CPU's value
    key_fields: tuple[Field, ...]
    value_fields: tuple[Field, ...]


@dataclass
class Compiled:
    """What the child handed back: program fds by name and maps by name (the caller owns the fds)."""

    programs: dict[str, int]
    maps: dict[str, MapInfo]
    headers: str = ""  # which kernel headers it was compiled against (headers.summary())

    def close(self) -> None:
        for fd in [*self.programs.values(), *(m.fd for m in self.maps.values())]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.programs.clear()
        self.maps.clear()


def cflags(flow_table_size: int, sampling: int, extra: dict[str, int] | None = None) -> list[str]:
    defines = {"XT_FLOW_TABLE_SIZE": flow_table_size, "XT_SAMPLING": sampling, **(extra or {})}
    return [f"-I{bpf_dir()}", *(f"-D{k}={int(v)}" for k, v in defines.items())]


def compile_and_load(flow_table_size: int, sampling: int, source: str | None = None,
                     programs: tuple[str, ...] = PROGRAMS, extra: dict[str, int] | None = None,
                     timeout: float = 120.0, tc: tuple[str, ...] = TX_PROGRAMS,
                     raw_tracepoints: tuple[str, ...] = (), maps: tuple[str, ...] = MAPS,
                     what: str = "the XDP program") -> Compiled:
    """Compile in a child process; AgentFailure with one line on any failure. The programs named
    in `tc` load as sched_cls (TC), those in `raw_tracepoints` as raw tracepoint programs (not
    attached: the caller attaches them), the others as XDP; `maps` are the maps handed back."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    request = {"cflags": cflags(flow_table_size, sampling, extra), "programs": list(programs),
               "tc": [name for name in programs if name in tc],
               "raw_tp": [name for name in programs if name in raw_tracepoints], "maps": list(maps),
               "source": source or str(bpf_dir() / "xtrace.c")}
    cmd = [sys.executable, "-m", "xtrace_agent.xdp.compiler", str(child.fileno()), json.dumps(request)]
    try:
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        parent.close()
        child.close()
        raise AgentFailure(f"cannot start the XDP compiler process: {e}") from None
    child.close()
    try:
        # the child sends before it exits; read first so a big message can never block it
        parent.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, MAX_MESSAGE, 64)
        except (TimeoutError, OSError):
            msg, fds = b"", []
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    finally:
        parent.close()
    if proc.returncode != 0 or not msg:
        for fd in fds:
            os.close(fd)
        raise AgentFailure(f"cannot load {what}: {summarize(err or '', proc.returncode)}")
    compiled = _decode(json.loads(msg), fds)
    log.info("compiled against kernel headers %s", compiled.headers or "?")
    return compiled


def _decode(desc: dict, fds: list[int]) -> Compiled:
    progs = {name: fds[i] for name, i in desc["programs"].items()}
    maps = {}
    for m in desc["maps"]:
        maps[m["name"]] = MapInfo(
            name=m["name"], fd=fds[m["fd_index"]], map_type=m["type"], max_entries=m["max_entries"],
            key_size=m["key_size"], value_size=m["value_size"],
            key_fields=tuple(Field(**f) for f in m["key_fields"]),
            value_fields=tuple(Field(**f) for f in m["value_fields"]))
    return Compiled(progs, maps, desc.get("headers", ""))


def summarize(stderr: str, returncode: int | None) -> str:
    """One line out of the child's stderr: its own message, sharpened by the compiler's first error
    or the verifier's last word when there is one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    used = next((ln.removeprefix(HEADERS_LINE) for ln in lines if ln.startswith(HEADERS_LINE)), None)
    lines = [ln for ln in lines if not ln.startswith(HEADERS_LINE)]
    mine = next((ln.removeprefix("xtrace-compiler: ") for ln in lines if ln.startswith("xtrace-compiler: ")), None)
    others = [ln for ln in lines if not ln.startswith("xtrace-compiler: ") and not ln.startswith("Traceback")]
    if any("Operation not permitted" in ln for ln in others):
        return NO_PERMISSION
    errors = [ln for ln in others if re.search(r"\berror:", ln)]
    if errors and (mine is None or "compile" in mine):
        against = f" (kernel headers: {used})" if used else ""
        return "compile error: " + re.sub(r"^.*?error:\s*", "", errors[0]) + against
    if mine and "Failed to load BPF program" in mine and others:
        return f"{mine} (verifier: {others[-1]})"
    if mine:
        return mine
    if others:
        return others[-1]
    return f"compiler process exited with status {returncode}"


# ---- the child --------------------------------------------------------------------------------

def _layout(ctype, base: int = 0) -> tuple[int, list[dict]]:
    """(size, fields) of a BCC ctypes Key/Leaf type; a plain integer is one field named 'value'.
    A nested struct's fields are listed in its place (the drop key embeds struct flow_key)."""
    import ctypes

    size = ctypes.sizeof(ctype)
    fields = getattr(ctype, "_fields_", None)
    if not fields:
        return size, [{"name": "value", "offset": base, "size": size, "count": 1}]
    out = []
    for f in fields:
        name, ftype = f[0], f[1]
        desc = getattr(ctype, name)
        if getattr(ftype, "_fields_", None):
            out.extend(_layout(ftype, base + desc.offset)[1])
            continue
        count = getattr(ftype, "_length_", 1)
        out.append({"name": name, "offset": base + desc.offset, "size": desc.size, "count": count})
    return size, out


def _explain(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, PermissionError) or "Operation not permitted" in text:
        return NO_PERMISSION
    return text


def _child(sock_fd: int, request: dict) -> int:
    import resource

    sock = socket.socket(fileno=sock_fd)
    try:
        # kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and ignore it
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
    try:
        from xtrace_agent.xdp import headers

        used = headers.summary()  # before resolve() points BCC_KERNEL_SOURCE at its choice
        print(f"{HEADERS_LINE}{used}", file=sys.stderr)
        headers.resolve()
        try:
            from bcc import BPF
        except ImportError as e:
            raise RuntimeError(f"BCC is not installed (apt-get install python3-bpfcc): {e}") from None
        b = BPF(src_file=request["source"].encode(), cflags=request["cflags"])
        fds, progs = [], {}
        for name in request["programs"]:
            kind = BPF.SCHED_CLS if name in request.get("tc", ()) else BPF.XDP
            if name in request.get("raw_tp", ()):
                kind = BPF.RAW_TRACEPOINT
            fn = b.load_func(name.encode(), kind)
            progs[name] = len(fds)
            fds.append(fn.fd)
        maps = []
        for name in request.get("maps", MAPS):
            try:
                t = b.get_table(name)
            except KeyError:
                continue
            leaf = getattr(t, "sLeaf", t.Leaf)  # per-CPU tables: one CPU's value
            key_size, key_fields = _layout(t.Key)
            value_size, value_fields = _layout(leaf)
            maps.append({"name": name, "fd_index": len(fds), "type": int(t.ttype),
                         "max_entries": int(t.max_entries), "key_size": key_size, "value_size": value_size,
                         "key_fields": key_fields, "value_fields": value_fields})
            fds.append(t.map_fd)
        socket.send_fds(sock, [json.dumps({"programs": progs, "maps": maps, "headers": used}).encode()], fds)
    except Exception as e:
        print(f"xtrace-compiler: {_explain(e)}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), json.loads(sys.argv[2])))
