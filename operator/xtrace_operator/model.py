"""The validated monitor: an XTraceMonitor spec with the CRD's defaults applied and its rules checked.

The API server already applies the CRD's defaults and rules, but the operator does not rely on
that: `xtrace-operator render` runs without a cluster, and a CRD installed without its schema (or
an older one) must not produce a broken DaemonSet. So every default here mirrors the CRD's (a test
compares them) and every rule raises `InvalidSpec` with the field path and the problem, which the
operator copies verbatim into the InvalidSpec condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from xtrace_agent import config as agent_config
from xtrace_operator import metricsauth

MODES = agent_config.MODES
ATTACH_MODES = agent_config.ATTACH_MODES
OUTPUTS = agent_config.OUTPUTS
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")

DEFAULT_IMAGE = "ghcr.io/xtrace-io/xtrace-agent:0.1.0"
DEFAULT_PORT = 9435
DEFAULT_GRACE = 60  # seconds: detach XDP + flush the remote-write queue (push timeout 30 s) + spool
DEFAULT_SPOOL_HOST_PATH = "/var/lib/xtrace"
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
# Child names are "xtrace-<monitor>" and the monitor name is a label value: 63 - len("xtrace-").
MAX_NAME = 56

_IFACE = re.compile(r"^[A-Za-z0-9_.:@*?!\[\]-]{1,64}$")
_TENANT = re.compile(r"^[0-9]{1,10}(:[0-9]{1,10})?$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _plain(x: float) -> str:
    """A bound as people write it: 1048576, not 1.04858e+06; 0.05 stays 0.05."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class InvalidSpec(ValueError):
    """A spec the operator refuses; the message names the field and the problem."""


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class BasicAuth:
    secret: str
    password_key: str = "password"
    username: str | None = None  # inline user name; otherwise read from the Secret
    username_key: str = "username"


@dataclass(frozen=True)
class VictoriaMetrics:
    urls: tuple[str, ...]  # the remote-write endpoints, tenant path already applied
    tenant: str | None = None
    basic: BasicAuth | None = None
    bearer: SecretKey | None = None
    ca: SecretKey | None = None
    insecure_skip_verify: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    extra_labels: dict[str, str] = field(default_factory=dict)
    queue_samples: int = agent_config.DEFAULT_QUEUE_SAMPLES
    max_push_age: float = agent_config.DEFAULT_MAX_PUSH_AGE
    spool_max_bytes: int = agent_config.DEFAULT_SPOOL_BYTES  # 0: no spool, in-memory queue only
    spool_host_path: str = DEFAULT_SPOOL_HOST_PATH


SCRAPE_KINDS = ("Service", "VMServiceScrape", "ServiceMonitor")


@dataclass(frozen=True)
class Scrape:
    """What points a scraper at the agents' /metrics: a headless Service, plus the scrape object
    of the VictoriaMetrics operator (VMServiceScrape) or of the Prometheus operator (ServiceMonitor)."""

    kind: str
    interval: str = "30s"


@dataclass(frozen=True)
class Monitor:
    name: str
    namespace: str
    mode: str = "xdp"
    interfaces: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    interval: float = agent_config.DEFAULT_INTERVAL
    output: str = "text"
    port: int = DEFAULT_PORT
    xdp: agent_config.XdpConfig = field(default_factory=agent_config.XdpConfig)  # the agent's own type
    victoria_metrics: VictoriaMetrics | None = None
    scrape: Scrape | None = None
    metrics: metricsauth.MetricsEndpoint = field(default_factory=metricsauth.MetricsEndpoint)
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=lambda: DEFAULT_RESOURCES)
    privileged: bool = False
    host_kernel_headers: bool = False  # mount the node's /lib/modules and /usr/src (the image has its own)
    priority_class_name: str | None = None
    termination_grace_period: int = DEFAULT_GRACE
    uid: str = ""
    created: str = ""  # metadata.creationTimestamp: the older of two conflicting monitors wins


# --- readers: each returns a typed value or raises InvalidSpec naming the field ---------------

class _Reader:
    def __init__(self, raw: Any, path: str):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidSpec(f"{path}: must be an object, got {raw!r}")
        self.raw, self.path = raw, path
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def number(self, key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
        v = self.get(key, default)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise InvalidSpec(f"{self.where(key)}: must be {kind}, got {v!r}")
        if not lo <= v <= hi:
            raise InvalidSpec(f"{self.where(key)}: must be between {_plain(lo)} and {_plain(hi)}, got {v!r}")
        return v if integer else float(v)

    def enum(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.get(key, default)
        if v not in choices:
            raise InvalidSpec(f"{self.where(key)}: must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v

    def string(self, key: str, default: str | None = None, pattern: re.Pattern | None = None,
               what: str = "") -> str | None:
        v = self.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise InvalidSpec(f"{self.where(key)}: must be a non-empty string, got {v!r}")
        if pattern and not pattern.match(v):
            raise InvalidSpec(f"{self.where(key)}: {v!r} is not {what}")
        return v

    def boolean(self, key: str, default: bool = False) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise InvalidSpec(f"{self.where(key)}: must be true or false, got {v!r}")
        return v

    def strings(self, key: str, pattern: re.Pattern, what: str, max_items: int = 64) -> tuple[str, ...]:
        v = self.get(key, [])
        if not isinstance(v, list):
            raise InvalidSpec(f"{self.where(key)}: must be a list, got {v!r}")
        if len(v) > max_items:
            raise InvalidSpec(f"{self.where(key)}: at most {max_items} items, got {len(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, str) or not pattern.match(item):
                raise InvalidSpec(f"{self.where(key)}[{i}]: {item!r} is not {what}")
        if len(set(v)) != len(v):
            raise InvalidSpec(f"{self.where(key)}: items must be unique")
        return tuple(v)

    def string_map(self, key: str) -> dict[str, str]:
        v = self.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise InvalidSpec(f"{self.where(key)}: must be a map of strings to strings, got {v!r}")
        return dict(v)

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key), self.where(key))

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise InvalidSpec(f"{self.where(unknown[0])}: unknown field")


def _secret_key(r: _Reader, name_field: str, default_key: str) -> SecretKey:
    name = r.string(name_field, pattern=_K8S_NAME, what="a Secret name")
    if name is None:
        raise InvalidSpec(f"{r.where(name_field)}: required")
    key = r.string("key", default_key, _SECRET_KEY, "a Secret key")
    r.done()
    return SecretKey(name, key)


def _bounded(r: _Reader, key: str, bound: str, default: float, integer: bool = False) -> Any:
    """A number under the agent's own bound for it (agent_config.BOUNDS: one place for every limit)."""
    return r.number(key, default, *agent_config.BOUNDS[bound], integer=integer)


def _xdp(r: _Reader) -> agent_config.XdpConfig:
    d = agent_config.XdpConfig()
    out = agent_config.XdpConfig(
        attach_mode=r.enum("attachMode", d.attach_mode, ATTACH_MODES),
        flow_table_size=_bounded(r, "flowTableSize", "xdp.flowTableSize", d.flow_table_size, integer=True),
        sampling=_bounded(r, "sampling", "xdp.sampling", d.sampling, integer=True),
        idle_timeout=float(_bounded(r, "idleTimeout", "xdp.idleTimeout", d.idle_timeout)),
        max_flows=_bounded(r, "maxFlows", "xdp.maxFlows", d.max_flows, integer=True),
        flow_gauges=r.boolean("flowGauges", d.flow_gauges),
        directions=_directions(r, d.directions),
    )
    r.done()
    return out


def _directions(r: _Reader, default: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return agent_config.parse_directions(r.get("directions", list(default)))
    except ValueError as e:
        raise InvalidSpec(f"{r.where('directions')}: {e}") from None


_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


def _scrape(r: _Reader) -> Scrape:
    if not r.has("kind"):
        raise InvalidSpec(f"{r.where('kind')}: required")
    out = Scrape(kind=r.enum("kind", "", SCRAPE_KINDS),
                 interval=r.string("interval", "30s", _DURATION, "a duration such as 30s"))
    r.done()
    return out


def _endpoint(url: Any, where: str, tenant: str | None) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise InvalidSpec(f"{where}: must be an http:// or https:// URL, got {url!r}")
    path = urlsplit(url).path
    if tenant is None:
        # A bare server address means single-node VictoriaMetrics' remote-write endpoint.
        return url.rstrip("/") + "/api/v1/write" if path in ("", "/") else url
    if path not in ("", "/"):
        raise InvalidSpec(f"{where}: with a tenant, give the vminsert address without a path "
                          f"(the operator adds /insert/<tenant>/prometheus/api/v1/write), got {url!r}")
    return f"{url.rstrip('/')}/insert/{tenant}/prometheus/api/v1/write"


def _labels(r: _Reader, key: str) -> dict[str, str]:
    labels = r.string_map(key)
    for k in labels:
        if not _LABEL_NAME.match(k) or k.startswith("__"):
            raise InvalidSpec(f"{r.where(key)}: {k!r} is not a valid Prometheus label name")
    return labels


def _victoria_metrics(r: _Reader) -> VictoriaMetrics:
    tenant = r.string("tenant", pattern=_TENANT, what="a tenant (ACCOUNT or ACCOUNT:PROJECT, decimal)")
    if r.has("url") == r.has("urls"):
        raise InvalidSpec(f"{r.path}: set exactly one of url or urls")
    if r.has("url"):
        urls = (_endpoint(r.get("url"), r.where("url"), tenant),)
    else:
        raw = r.get("urls")
        if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
            raise InvalidSpec(f"{r.where('urls')}: must be a list of 1 to 8 URLs, got {raw!r}")
        urls = tuple(_endpoint(u, f"{r.where('urls')}[{i}]", tenant) for i, u in enumerate(raw))
        if len(set(urls)) != len(urls):
            raise InvalidSpec(f"{r.where('urls')}: items must be unique")
    basic = bearer = ca = None
    auth = r.sub("auth")
    if auth.has("basic") and auth.has("bearer"):
        raise InvalidSpec(f"{auth.path}: set basic or bearer, not both")
    if auth.has("basic"):
        b = auth.sub("basic")
        secret = b.string("secretName", pattern=_K8S_NAME, what="a Secret name")
        if secret is None:
            raise InvalidSpec(f"{b.where('secretName')}: required")
        basic = BasicAuth(secret=secret,
                          password_key=b.string("passwordKey", "password", _SECRET_KEY, "a Secret key"),
                          username=b.string("username"),
                          username_key=b.string("usernameKey", "username", _SECRET_KEY, "a Secret key"))
        b.done()
    if auth.has("bearer"):
        bearer = _secret_key(auth.sub("bearer"), "secretName", "token")
    auth.done()
    tls = r.sub("tls")
    if tls.has("caSecret"):
        ca = _secret_key(tls.sub("caSecret"), "name", "ca.crt")
    insecure = tls.boolean("insecureSkipVerify")
    tls.done()
    headers = r.string_map("headers")
    for k in headers:
        # Credentials in a header would land in the ConfigMap: auth takes Secrets instead.
        if k.lower() in ("authorization", "proxy-authorization"):
            raise InvalidSpec(f"{r.where('headers')}: {k} must not be set here; use auth with a Secret")
    spool = r.sub("spool")
    d = VictoriaMetrics(urls=urls)
    out = VictoriaMetrics(
        urls=urls, tenant=tenant, basic=basic, bearer=bearer, ca=ca, insecure_skip_verify=insecure,
        headers=headers, extra_labels=_labels(r, "extraLabels"),
        queue_samples=_bounded(r, "queueSamples", "queueSamples", d.queue_samples, integer=True),
        max_push_age=_bounded(r, "maxPushAge", "maxPushAge", d.max_push_age),
        spool_max_bytes=_bounded(spool, "maxBytes", "spool.maxBytes", d.spool_max_bytes, integer=True),
        spool_host_path=spool.string("hostPath", d.spool_host_path, re.compile(r"^/[^\s]*$"),
                                     "an absolute path"),
    )
    spool.done()
    r.done()
    return out


def _tolerations(r: _Reader) -> tuple[dict[str, Any], ...]:
    raw = r.get("tolerations", [])
    if not isinstance(raw, list):
        raise InvalidSpec(f"{r.where('tolerations')}: must be a list, got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        t = _Reader(item, f"{r.where('tolerations')}[{i}]")
        tol: dict[str, Any] = {}
        if t.has("key"):
            tol["key"] = t.string("key", pattern=_LABEL_KEY, what="a taint key")
        op = t.enum("operator", "Equal", TOLERATION_OPERATORS)
        tol["operator"] = op
        if t.has("value"):
            if op == "Exists":
                raise InvalidSpec(f"{t.where('value')}: must be empty when operator is Exists")
            tol["value"] = t.string("value", pattern=_LABEL_VALUE, what="a taint value")
        effect = t.enum("effect", "", TOLERATION_EFFECTS)
        if effect:
            tol["effect"] = effect
        if t.has("tolerationSeconds"):
            if effect != "NoExecute":
                raise InvalidSpec(f"{t.where('tolerationSeconds')}: only valid with effect NoExecute")
            tol["tolerationSeconds"] = t.number("tolerationSeconds", 0, 0, 1 << 31, integer=True)
        if "key" not in tol and op != "Exists":
            raise InvalidSpec(f"{t.path}: without a key, operator must be Exists")
        t.done()
        out.append(tol)
    return tuple(out)


def _resources(r: _Reader) -> dict[str, Any]:
    if not r.has("resources"):
        return DEFAULT_RESOURCES
    res = r.sub("resources")
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = res.get(part)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InvalidSpec(f"{res.where(part)}: must be a map, got {values!r}")
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, str)) or not _QUANTITY.match(str(v)):
                raise InvalidSpec(f"{res.where(part)}.{k}: {v!r} is not a quantity")
        out[part] = dict(values)
    res.done()
    return out


def parse(name: str, namespace: str, spec: Any, uid: str = "", created: str = "") -> Monitor:
    """Validate a monitor's spec, fill in defaults, and return the model the renderers take."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not _K8S_NAME.match(name) or "." in name:
        raise InvalidSpec(f"metadata.name: must be a DNS label of at most {MAX_NAME} characters, got {name!r}")
    r = _Reader(spec, "spec")
    mode = r.enum("mode", "xdp", MODES)
    interfaces = r.strings("interfaces", _IFACE, "an interface name or glob")
    devices = r.strings("devices", _IFACE, "an RDMA device name or glob")
    if mode == "xdp" and not interfaces:
        raise InvalidSpec("spec.interfaces: xdp mode needs at least one interface")
    if mode == "xdp" and devices:
        raise InvalidSpec("spec.devices: only rdma and nccl modes read RDMA devices")
    if mode != "xdp" and interfaces:
        raise InvalidSpec(f"spec.interfaces: {mode} mode reads RDMA devices, not interfaces; use spec.devices")
    if mode != "xdp" and r.has("xdp"):
        raise InvalidSpec(f"spec.xdp: only valid in xdp mode, not {mode}")
    node_selector = r.string_map("nodeSelector")
    for k, v in node_selector.items():
        if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v) or len(v) > 63:
            raise InvalidSpec(f"spec.nodeSelector: {k}={v!r} is not a valid label selector term")
    policy = r.enum("imagePullPolicy", "IfNotPresent", PULL_POLICIES)
    pull_secrets = r.get("imagePullSecrets", [])
    if not isinstance(pull_secrets, list) or not all(isinstance(s, dict) and set(s) == {"name"}
                                                     and _K8S_NAME.match(str(s["name"])) for s in pull_secrets):
        raise InvalidSpec(f"spec.imagePullSecrets: must be a list of {{name: SECRET}}, got {pull_secrets!r}")
    priority = r.string("priorityClassName", pattern=_K8S_NAME, what="a PriorityClass name")
    monitor = Monitor(
        name=name, namespace=namespace, mode=mode, interfaces=interfaces, devices=devices,
        node_selector=node_selector, tolerations=_tolerations(r),
        interval=_bounded(r, "interval", "interval", agent_config.DEFAULT_INTERVAL),
        output=r.enum("output", "text", OUTPUTS),
        port=r.number("port", DEFAULT_PORT, 1024, 65535, integer=True),
        xdp=_xdp(r.sub("xdp")),
        victoria_metrics=_victoria_metrics(r.sub("victoriaMetrics")) if r.has("victoriaMetrics") else None,
        scrape=_scrape(r.sub("scrape")) if r.has("scrape") else None,
        metrics=_metrics(r.get("metrics")),
        image=r.string("image", DEFAULT_IMAGE, re.compile(r"^\S+$"), "an image reference"),
        image_pull_policy=policy, image_pull_secrets=tuple(s["name"] for s in pull_secrets),
        resources=_resources(r), privileged=r.boolean("privileged"), priority_class_name=priority,
        host_kernel_headers=r.boolean("hostKernelHeaders"),
        termination_grace_period=r.number("terminationGracePeriodSeconds", DEFAULT_GRACE, 10, 3600,
                                          integer=True),
        uid=uid, created=created,
    )
    r.done()
    return monitor


def _metrics(raw: Any) -> metricsauth.MetricsEndpoint:
    try:
        return metricsauth.parse(raw)
    except metricsauth.MetricsSpecError as e:
        raise InvalidSpec(str(e)) from None


def from_body(body: Any) -> Monitor:
    """The model of a whole XTraceMonitor object (as kopf or a YAML file gives it)."""
    if not isinstance(body, dict):
        raise InvalidSpec(f"the document must be an object, got {type(body).__name__}")
    from xtrace_operator import GROUP, KIND, VERSION
    if body.get("apiVersion") != f"{GROUP}/{VERSION}" or body.get("kind") != KIND:
        raise InvalidSpec(f"expected apiVersion {GROUP}/{VERSION} kind {KIND}, "
                          f"got {body.get('apiVersion')!r} {body.get('kind')!r}")
    meta = body.get("metadata") or {}
    return parse(meta.get("name"), meta.get("namespace") or "default", body.get("spec"),
                 uid=meta.get("uid", ""), created=meta.get("creationTimestamp", ""))
