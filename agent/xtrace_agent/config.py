"""The agent's configuration: one schema for the YAML the operator renders and the command line.

`load_file()` reads the YAML that `xtrace-agent --config` takes (the operator renders it into a
ConfigMap and validates it with `from_dict()` too, so both sides share one schema). Command-line
flags are applied on top with `dataclasses.replace`. Every problem is a `UsageError` naming the
field, e.g. ``config: xdp.sampling: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml

from xtrace_agent.errors import UsageError

MODES = ("xdp", "rdma", "nccl")
ATTACH_MODES = ("auto", "native", "generic")
DIRECTIONS = ("ingress", "egress")  # what interfaces receive (XDP), what they send (TC egress)
OUTPUTS = ("text", "json", "none")  # none: nothing on stdout (a DaemonSet's log stays small)

# Defaults, with the reasoning that picked them (see README "Sizing").
DEFAULT_INTERVAL = 5.0
# 65536 flows per interval: the old tool's 10240 overflowed on a busy GPU node (thousands of
# NCCL/TCP connections plus scans). Per-CPU values cost 16 B x nCPU per entry: ~64 MiB locked
# kernel memory at 64 CPUs. Raise it with xdp.flowTableSize where memory allows.
DEFAULT_FLOW_TABLE_SIZE = 65536
DEFAULT_IDLE_TIMEOUT = 300.0  # a flow idle this long stops being exported (5 min = Prometheus staleness)
DEFAULT_MAX_FLOWS = 20000  # per-node series budget for flows (x2 series: packets and bytes)
DEFAULT_HTTP_LISTEN = "0.0.0.0:9435"
DEFAULT_MAX_PUSH_AGE = 120.0
# One hour of outage at the default interval with the full flow budget: 720 intervals x 40k
# samples x ~10 B (the spool groups samples by series) ~= 290 MB. Only on disk: without a spool
# path the in-memory fallback is capped at MEMORY_SPOOL_BYTES to keep the agent small.
DEFAULT_SPOOL_BYTES = 320 * 1024 * 1024
MEMORY_SPOOL_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE_SAMPLES = 1_000_000

# Every numeric bound, named once by its key in the agent's YAML. The agent's config schema, the
# command line, the operator's model and (checked by tests/operator/test_contract.py) the CRD's
# minimum/maximum all read them from here.
BOUNDS: dict[str, tuple[float, float]] = {
    "interval": (0.05, 3600),
    "count": (1, 1 << 31),
    "xdp.flowTableSize": (1024, 1 << 24),
    "xdp.sampling": (1, 1 << 20),
    "xdp.idleTimeout": (1, 86400),
    "xdp.maxFlows": (1, 10_000_000),
    "queueSamples": (1000, 100_000_000),
    "maxPushAge": (1, 86400),
    "spool.maxBytes": (0, 1 << 40),
}


@dataclass(frozen=True)
class XdpConfig:
    attach_mode: str = "auto"
    flow_table_size: int = DEFAULT_FLOW_TABLE_SIZE
    sampling: int = 1  # 1-in-N packets; counts are scaled back up by N
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_flows: int = DEFAULT_MAX_FLOWS
    # XTrace-Catch's per-interval gauges xtrace_network_flow_{packets,bytes}: up to 2 more series
    # per flow that moved in the interval (README "Sizing")
    flow_gauges: bool = True
    # ingress: what the interfaces receive (XDP); egress adds what they send (TC, tcx or clsact),
    # and a `direction` label on every flow and interface series (README "Both directions")
    directions: tuple[str, ...] = ("ingress",)


@dataclass(frozen=True)
class BasicAuth:
    username: str = ""
    username_file: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class RemoteWriteTarget:
    url: str
    name: str = ""
    basic_auth: BasicAuth | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpoolConfig:
    path: str | None = None  # no path: in-memory queue only
    max_bytes: int = DEFAULT_SPOOL_BYTES


HTTP_AUTH_MODES = ("none", "kubernetes")


@dataclass(frozen=True)
class HttpAuth:
    """The metrics port's protection (sinks/guard.py): none, or TLS with Kubernetes token review."""

    mode: str = "none"
    cert_file: str | None = None  # with key_file: a mounted Secret's pair; without: made at start
    key_file: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    mode: str = "xdp"
    interfaces: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    interval: float = DEFAULT_INTERVAL
    count: int | None = None
    output: str = "text"
    sysfs: str = "/sys"
    node: str = ""
    monitor: str = ""
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    xdp: XdpConfig = field(default_factory=XdpConfig)
    remote_write: tuple[RemoteWriteTarget, ...] = ()
    queue_samples: int = DEFAULT_QUEUE_SAMPLES
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    http_listen: str = DEFAULT_HTTP_LISTEN  # "" disables the HTTP server
    http_auth: HttpAuth = field(default_factory=HttpAuth)
    max_push_age: float = DEFAULT_MAX_PUSH_AGE
    # True when started from --config (the operator's way): a missing interface is "not ready"
    # and waited for; on the bare command line it is a usage error, as in the old tool.
    from_file: bool = False

    def node_name(self) -> str:
        return self.node or os.environ.get("NODE_NAME") or socket.gethostname()


# --- the YAML schema ------------------------------------------------------------------------
# key in YAML -> (dataclass field, parser). Parsers raise ValueError with a message.

def _num(lo: float, hi: float):
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {v!r}")
        return float(v)
    return parse


def _int(lo: int, hi: int):
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {v!r}")
        return v
    return parse


def _enum(choices: tuple[str, ...]):
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {v!r}")
        return v
    return parse


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"must be a list of non-empty strings, got {v!r}")
    return tuple(v)


def parse_directions(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or any(d not in DIRECTIONS for d in v) or len(set(v)) != len(v):
        raise ValueError(f"must be a non-empty list of distinct {', '.join(DIRECTIONS)}, got {v!r}")
    return tuple(d for d in DIRECTIONS if d in v)


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ValueError(f"must be a map of strings to strings, got {v!r}")
    return dict(v)


def _labels(v: Any) -> dict[str, str]:
    labels = _str_map(v)
    for k in labels:
        if not k or not (k[0].isalpha() or k[0] == "_") or not all(c.isalnum() or c == "_" for c in k):
            raise ValueError(f"label name {k!r} is not a valid Prometheus label name")
        if k.startswith("__"):
            raise ValueError(f"label name {k!r} is reserved")
    return labels


def _section(cls, schema: dict[str, tuple[str, Any]], path: str):
    def parse(v: Any):
        if not isinstance(v, dict):
            raise ValueError(f"must be a map, got {v!r}")
        return cls(**_fields(v, schema, path))
    return parse


def _fields(raw: dict, schema: dict[str, tuple[str, Any]], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise UsageError(f"config: {where}: unknown field (known: {known})")
        attr, parse = schema[key]
        try:
            out[attr] = parse(value)
        except ValueError as e:
            raise UsageError(f"config: {where}: {e}") from None
    return out


_BASIC_AUTH = {
    "username": ("username", _str),
    "usernameFile": ("username_file", _str),
    "passwordFile": ("password_file", _str),
}


def _url(v: Any) -> str:
    v = _str(v)
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
    return v


_TARGET = {
    "url": ("url", _url),
    "name": ("name", _str),
    "basicAuth": ("basic_auth", _section(BasicAuth, _BASIC_AUTH, "basicAuth.")),
    "bearerTokenFile": ("bearer_token_file", _str),
    "caFile": ("ca_file", _str),
    "insecureSkipVerify": ("insecure_skip_verify", _bool),
    "headers": ("headers", _str_map),
}


def _targets(v: Any) -> tuple[RemoteWriteTarget, ...]:
    if not isinstance(v, list):
        raise ValueError(f"must be a list of targets, got {v!r}")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise ValueError(f"[{i}] must be a map, got {item!r}")
        fields = _fields(item, _TARGET, f"remoteWrite[{i}].")
        if "url" not in fields:
            raise UsageError(f"config: remoteWrite[{i}].url: required")
        if fields.get("basic_auth") and fields.get("bearer_token_file"):
            raise UsageError(f"config: remoteWrite[{i}]: basicAuth and bearerTokenFile cannot both be set")
        out.append(RemoteWriteTarget(**fields))
    return tuple(out)


_XDP = {
    "attachMode": ("attach_mode", _enum(ATTACH_MODES)),
    "flowTableSize": ("flow_table_size", _int(*BOUNDS["xdp.flowTableSize"])),
    "sampling": ("sampling", _int(*BOUNDS["xdp.sampling"])),
    "idleTimeout": ("idle_timeout", _num(*BOUNDS["xdp.idleTimeout"])),
    "maxFlows": ("max_flows", _int(*BOUNDS["xdp.maxFlows"])),
    "flowGauges": ("flow_gauges", _bool),
    "directions": ("directions", parse_directions),
}

_SPOOL = {
    "path": ("path", _str),
    "maxBytes": ("max_bytes", _int(*BOUNDS["spool.maxBytes"])),
}

_HTTP_AUTH = {
    "mode": ("mode", _enum(HTTP_AUTH_MODES)),
    "certFile": ("cert_file", _str),
    "keyFile": ("key_file", _str),
}

SCHEMA: dict[str, tuple[str, Any]] = {
    "mode": ("mode", _enum(MODES)),
    "interfaces": ("interfaces", _str_list),
    "devices": ("devices", _str_list),
    "interval": ("interval", _num(*BOUNDS["interval"])),
    "count": ("count", _int(*BOUNDS["count"])),
    "output": ("output", _enum(OUTPUTS)),
    "sysfs": ("sysfs", _str),
    "node": ("node", _str),
    "monitor": ("monitor", _str),
    "namespace": ("namespace", _str),
    "labels": ("labels", _labels),
    "xdp": ("xdp", _section(XdpConfig, _XDP, "xdp.")),
    "remoteWrite": ("remote_write", _targets),
    "queueSamples": ("queue_samples", _int(*BOUNDS["queueSamples"])),
    "spool": ("spool", _section(SpoolConfig, _SPOOL, "spool.")),
    "httpListen": ("http_listen", _str),
    "httpAuth": ("http_auth", _section(HttpAuth, _HTTP_AUTH, "httpAuth.")),
    "maxPushAge": ("max_push_age", _num(*BOUNDS["maxPushAge"])),
}


def from_dict(raw: Any) -> AgentConfig:
    """Validate a parsed YAML document and return the config it describes."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"config: the document must be a map, got {type(raw).__name__}")
    cfg = AgentConfig(**_fields(raw, SCHEMA, ""), from_file=True)
    if cfg.http_listen:
        parse_listen(cfg.http_listen)
    if bool(cfg.http_auth.cert_file) != bool(cfg.http_auth.key_file):
        raise UsageError("config: httpAuth: certFile and keyFile go together")
    return cfg


def to_dict(cfg: AgentConfig) -> dict[str, Any]:
    """The YAML form of a config (inverse of from_dict), as the operator renders it."""
    def emit(obj: Any, schema: dict[str, tuple[str, Any]], default: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (attr, _) in schema.items():
            value = getattr(obj, attr)
            if value == getattr(default, attr) and key != "mode":
                continue
            if dataclasses.is_dataclass(value):
                sub = {"xdp": (_XDP, XdpConfig()), "spool": (_SPOOL, SpoolConfig()),
                       "httpAuth": (_HTTP_AUTH, HttpAuth())}[key]
                value = emit(value, *sub)
            elif key == "remoteWrite":
                value = [_target_dict(t) for t in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out
    return emit(cfg, SCHEMA, AgentConfig())


def _target_dict(t: RemoteWriteTarget) -> dict[str, Any]:
    out: dict[str, Any] = {"url": t.url}
    if t.name:
        out["name"] = t.name
    if t.basic_auth:
        out["basicAuth"] = {k: getattr(t.basic_auth, a) for k, (a, _) in _BASIC_AUTH.items()
                            if getattr(t.basic_auth, a)}
    for key, attr in (("bearerTokenFile", "bearer_token_file"), ("caFile", "ca_file")):
        if getattr(t, attr):
            out[key] = getattr(t, attr)
    if t.insecure_skip_verify:
        out["insecureSkipVerify"] = True
    if t.headers:
        out["headers"] = dict(t.headers)
    return out


def load_file(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"config: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"config: {path} is not valid YAML{where}") from None
    return from_dict(raw)


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or ':PORT' -> (host, port); '' host means all interfaces."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"config: httpListen: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
