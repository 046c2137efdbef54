"""What the local-service tools (tools/cluster, tools/vm) share: ports on 127.0.0.1, health checks, stopping.

Standard library only: these run before any virtualenv exists.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(size: int, low: int = 20000, high: int = 60000) -> int:
    """The first port of `size` consecutive free ports on 127.0.0.1 (a random start, so runs do not collide)."""
    for _ in range(100):
        base = random.randrange(low, high - size, 10)
        if all(port_free(p) for p in range(base, base + size)):
            return base
    raise OSError(f"no block of {size} free ports on 127.0.0.1 between {low} and {high}")


def http_ok(url: str, timeout: float = 2.0, context=None) -> bool:
    """Whether GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, our own child that exited, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop(pids: list[int], group: bool = False, grace: float = 10.0) -> None:
    """SIGTERM each process (or its process group), in the order given; SIGKILL what is left after `grace`."""
    kill = os.killpg if group else os.kill
    for pid in pids:
        try:
            kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
