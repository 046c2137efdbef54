"""Every environment variable the agent and the operator read: name, default, meaning, parser.

One table, so a knob is written once and documented: README "Environment" carries `table()`
verbatim and tests/test_environ.py checks it, and that no other module names an XTRACE_ knob. Readers call
`KNOB.get()` (or `KNOB.get(env)` with a mapping of their own, as the tests do).

Values the config file can set are not knobs: the config (config.py) is the way to configure
the agent; these are what a pod's environment, a developer or a test needs beside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    name: str
    default: str  # as it would be written in the environment; "" means unset
    meaning: str
    parse: Callable[[str], Any] = str
    who: str = "agent"  # agent, operator, or Kubernetes (set for the pod, not by people)

    def get(self, env: Mapping[str, str] | None = None) -> Any:
        """The parsed value; an unset or empty variable gives the default."""
        value = (os.environ if env is None else env).get(self.name) or self.default
        return self.parse(value)

    def raw(self, env: Mapping[str, str] | None = None) -> str:
        """The value as written, "" when unset."""
        return (os.environ if env is None else env).get(self.name, "")


def _seconds(value: str) -> float:
    return float(value)


# --- the agent ------------------------------------------------------------------------------
DEBUG = Knob("XTRACE_DEBUG", "", "Any non-empty value: an internal error prints its traceback instead of "
             "one line.", bool)
BPF_DIR = Knob("XTRACE_BPF_DIR", "", "Directory holding xtrace.c and xtrace.h (default: the package's bpf/; "
               "the image sets it).")
KERNEL_HEADERS = Knob("XTRACE_KERNEL_HEADERS", "/usr/share/xtrace/kernel-headers",
                      "Kernel header trees shipped with the agent (one directory per release), used when the "
                      "node has none closer to the running kernel.")
HEADERS_CACHE = Knob("XTRACE_HEADERS_CACHE", "/tmp/xtrace-kernel-headers-{uid}",
                     "Where merged header trees (Debian's split -common/-arch layout) are cached; {uid} is the "
                     "effective user id, so root never trusts a tree someone else made.")
EGRESS_HOOK = Knob("XTRACE_EGRESS_HOOK", "auto", "auto, tcx or tc: force the egress hook (tests, a kernel "
                   "that reports tcx wrongly).")
KERNEL_SOURCE = Knob("BCC_KERNEL_SOURCE", "", "BCC's own: a kernel header tree to compile against; an "
                     "existing directory is used as given, otherwise the agent sets it to the headers it chose.")
BTF = Knob("XTRACE_BTF", "/sys/kernel/btf/vmlinux", "The running kernel's BTF, read for xdp.drops and xdp.tcp "
           "(struct offsets, drop reason names, tracepoint signatures); tests name another file to make a kernel "
           "without it.")
GRPC_VERBOSITY = Knob("GRPC_VERBOSITY", "ERROR", "gRPC's own: its core's logging to stderr. The agent sets ERROR "
                      "unless given (pod attribution logs each pod-resources problem once itself).")
VM_ENABLED = Knob("VICTORIAMETRICS_ENABLED", "", "XTrace-Catch compatible: true pushes to "
                  "VICTORIAMETRICS_REMOTE_WRITE (as --remote-write-url does).")
VM_REMOTE_WRITE = Knob("VICTORIAMETRICS_REMOTE_WRITE", "", "XTrace-Catch compatible: the remote-write URL "
                       "used when VICTORIAMETRICS_ENABLED is true.")
# --- the on-call command (xtrace fabric|top) ------------------------------------------------
URL = Knob("XTRACE_URL", "http://127.0.0.1:8428", "The VictoriaMetrics (or vmselect tenant) URL `xtrace "
           "fabric` and `xtrace top` query when --url is not given.", who="xtrace")
# --- set for the agent's pod (downward API, Kubernetes) -------------------------------------
NODE_NAME = Knob("NODE_NAME", "", "The node label of every series (default: the hostname).", who="Kubernetes")
POD_NAME = Knob("POD_NAME", "", "The agent's pod: readiness is written to its status; with POD_NAMESPACE, "
                "identifies the pod's XDP attachments.", who="Kubernetes")
POD_NAMESPACE = Knob("POD_NAMESPACE", "", "The agent pod's namespace.", who="Kubernetes")
POD_IP = Knob("POD_IP", "", "The pod's (with hostNetwork, the node's) address: named in the self-signed "
              "certificate of a metrics port with httpAuth and no certificate files.", who="Kubernetes")
SERVICE_HOST = Knob("KUBERNETES_SERVICE_HOST", "", "The API server, for the pod status and httpAuth's token "
                    "reviews (with the service account token).", who="Kubernetes")
SERVICE_PORT = Knob("KUBERNETES_SERVICE_PORT", "443", "The API server's port.", who="Kubernetes")
# --- the operator ---------------------------------------------------------------------------
STATUS_FLUSH_SECONDS = Knob("XTRACE_STATUS_FLUSH_SECONDS", "3", "Seconds between two status checks of each "
                            "monitor (agent readiness into its status, hand-edited children put back; tests "
                            "shorten it).",
                            _seconds, who="operator")

KNOBS: tuple[Knob, ...] = tuple(v for v in globals().values() if isinstance(v, Knob))


def table() -> list[str]:
    """The Markdown table of every knob (README and docs carry it; a test compares)."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for k in KNOBS:
        rows.append(f"| `{k.name}` | {k.who} | {f'`{k.default}`' if k.default else 'unset'} | {k.meaning} |")
    return rows
