"""The validated monitor: an XTraceMonitor spec with the CRD's defaults applied and its rules checked.

The API server already applies the CRD's defaults and rules, but the operator does not rely on
that: `xtrace-operator render` runs without a cluster, and a CRD installed without its schema (or
an older one) must not produce a broken DaemonSet. Both read one description (`spec.py`: the CRD
is generated from it), so every default here is the CRD's; every rule raises `InvalidSpec` with the
field path and the problem, which the operator copies verbatim into the InvalidSpec condition.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from xtrace_agent import config as agent_config
from xtrace_agent.fields import Field, FieldError, http_url
from xtrace_agent.sinks.transport import push_path
from xtrace_operator import spec as S
from xtrace_operator.spec import DEFAULT_GRACE, DEFAULT_IMAGE, DEFAULT_PORT, DEFAULT_RESOURCES, MAX_NAME

MODES = agent_config.MODES
ATTACH_MODES = agent_config.ATTACH_MODES
OUTPUTS = agent_config.OUTPUTS


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
    spool_host_path: str = S.DEFAULT_SPOOL_HOST_PATH


@dataclass(frozen=True)
class Scrape:
    """What points a scraper at the agents' /metrics: a headless Service, plus the scrape object
    of the VictoriaMetrics operator (VMServiceScrape) or of the Prometheus operator (ServiceMonitor)."""

    kind: str
    interval: str = "30s"


@dataclass(frozen=True)
class Metrics:
    """spec.metrics: who may read the agents' /metrics (what it renders: metricsauth.py)."""

    auth: str = "none"  # or "kubernetes": TLS, and a token the API server reviews
    tls_secret: str | None = None  # the certificate's Secret; None: each agent makes its own

    @property
    def secure(self) -> bool:
        return self.auth == "kubernetes"


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
    nic: agent_config.NicConfig = field(default_factory=agent_config.NicConfig)  # the agent's own type
    rdma: agent_config.RdmaConfig = field(default_factory=agent_config.RdmaConfig)  # the agent's own type
    victoria_metrics: VictoriaMetrics | None = None
    scrape: Scrape | None = None
    metrics: Metrics = field(default_factory=Metrics)
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))
    privileged: bool = False
    host_kernel_headers: bool = False  # mount the node's /lib/modules and /usr/src (the image has its own)
    priority_class_name: str | None = None
    termination_grace_period: int = DEFAULT_GRACE
    uid: str = ""
    created: str = ""  # metadata.creationTimestamp: the older of two conflicting monitors wins


# --- readers: each returns a typed value or raises InvalidSpec naming the field ---------------

class _Reader:
    """One object of the spec, read field by field against its descriptor (spec.py)."""

    def __init__(self, raw: Any, path: str, desc: Field):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidSpec(f"{path}: must be an object, got {raw!r}")
        self.raw, self.path, self.fields = raw, path, desc.properties or {}
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str) -> Any:
        """The raw value, or the field's default."""
        self.used.add(key)
        value = self.raw.get(key)
        return self.fields[key].default if value is None else value

    def value(self, key: str) -> Any:
        """The value checked by its descriptor, or the descriptor's default (None without one)."""
        self.used.add(key)
        desc, value = self.fields[key], self.raw.get(key)
        if value is None:
            return desc.default
        try:
            return desc.parse(value)
        except FieldError as e:
            raise InvalidSpec(f"{self.where(key)}{e.at}: {e}") from None

    def required(self, key: str) -> Any:
        if not self.has(key):
            raise InvalidSpec(f"{self.where(key)}: required")
        return self.value(key)

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        return _Reader(self.raw.get(key), self.where(key), self.fields[key])

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise InvalidSpec(f"{self.where(unknown[0])}: unknown field")


def _secret_key(r: _Reader, name_field: str) -> SecretKey:
    out = SecretKey(r.required(name_field), r.value("key"))
    r.done()
    return out


def _rdma(r: _Reader) -> agent_config.RdmaConfig:
    """spec.rdma: the agent's own descriptors and type. The socket path stays the agent's default:
    the operator mounts the kubelet's directory there."""
    out = agent_config.RdmaConfig(pod_attribution=r.value("podAttribution"))
    r.done()
    return out


def _xdp(r: _Reader) -> agent_config.XdpConfig:
    """spec.xdp is the agent's own xdp section: the same descriptors, the agent's own type."""
    out = agent_config.XdpConfig(**{f.attr: r.value(key) for key, f in agent_config.XDP.items()})
    r.done()
    return out


def _nic(r: _Reader) -> agent_config.NicConfig:
    """spec.nic is the agent's own nic section (the same descriptors, the agent's own type); unset
    fields keep the agent's defaults."""
    values = {f.attr: r.value(key) for key, f in agent_config.NIC.items()}
    out = agent_config.NicConfig(**{k: v for k, v in values.items() if v is not None})
    r.done()
    return out


def _scrape(r: _Reader) -> Scrape:
    out = Scrape(kind=r.required("kind"), interval=r.value("interval"))
    r.done()
    return out


def _metrics(r: _Reader) -> Metrics:
    auth = r.value("auth")
    secret = r.sub("tlsSecret")
    name = secret.required("name") if r.has("tlsSecret") else None
    secret.done()
    if name is not None and auth != "kubernetes":
        raise InvalidSpec(S.TLS_SECRET_NEEDS_AUTH)
    r.done()
    return Metrics(auth=auth, tls_secret=name)


def _endpoint(url: Any, where: str, tenant: str | None) -> str:
    """The URL the agent posts to: the agent's own completion (push_path) of what the spec says."""
    try:
        http_url(url)
    except FieldError as e:
        raise InvalidSpec(f"{where}: {e}") from None
    parts = urlsplit(url)
    if tenant is not None:
        if parts.path not in ("", "/"):
            raise InvalidSpec(f"{where}: with a tenant, give the vminsert address without a path "
                              f"(the operator adds /insert/<tenant>/prometheus/api/v1/write), got {url!r}")
        parts = parts._replace(path=f"/insert/{tenant}/prometheus")
    elif parts.path not in ("", "/"):
        return url  # a path given is used as given
    path, _, query = push_path(urlunsplit(parts)).partition("?")
    return urlunsplit(parts._replace(path=path, query=query))


def _urls(r: _Reader, tenant: str | None) -> tuple[str, ...]:
    if r.has("url") == r.has("urls"):
        raise InvalidSpec(f"{r.path}: set exactly one of url or urls")
    if r.has("url"):
        return (_endpoint(r.get("url"), r.where("url"), tenant),)
    raw = r.get("urls")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
        raise InvalidSpec(f"{r.where('urls')}: must be a list of 1 to 8 URLs, got {raw!r}")
    urls = tuple(_endpoint(u, f"{r.where('urls')}[{i}]", tenant) for i, u in enumerate(raw))
    if len(set(urls)) != len(urls):
        raise InvalidSpec(f"{r.where('urls')}: items must be unique")
    return urls


def _auth(r: _Reader) -> tuple[BasicAuth | None, SecretKey | None]:
    basic = bearer = None
    if r.has("basic") and r.has("bearer"):
        raise InvalidSpec(f"{r.path}: set basic or bearer, not both")
    if r.has("basic"):
        b = r.sub("basic")
        basic = BasicAuth(secret=b.required("secretName"), password_key=b.value("passwordKey"),
                          username=b.value("username"), username_key=b.value("usernameKey"))
        b.done()
    if r.has("bearer"):
        bearer = _secret_key(r.sub("bearer"), "secretName")
    r.done()
    return basic, bearer


def _victoria_metrics(r: _Reader) -> VictoriaMetrics:
    tenant = r.value("tenant")
    urls = _urls(r, tenant)
    basic, bearer = _auth(r.sub("auth"))
    tls = r.sub("tls")
    ca = _secret_key(tls.sub("caSecret"), "name") if tls.has("caSecret") else None
    insecure = tls.value("insecureSkipVerify")
    tls.done()
    headers = r.value("headers") or {}
    for k in headers:
        # Credentials in a header would land in the ConfigMap: auth takes Secrets instead.
        if k.lower() in ("authorization", "proxy-authorization"):
            raise InvalidSpec(f"{r.where('headers')}: {k} must not be set here; use auth with a Secret")
    spool = r.sub("spool")
    out = VictoriaMetrics(
        urls=urls, tenant=tenant, basic=basic, bearer=bearer, ca=ca, insecure_skip_verify=insecure,
        headers=headers, extra_labels=r.value("extraLabels") or {},
        queue_samples=r.value("queueSamples"), max_push_age=float(r.value("maxPushAge")),
        spool_max_bytes=spool.value("maxBytes"), spool_host_path=spool.value("hostPath"),
    )
    spool.done()
    r.done()
    return out


def _toleration(t: _Reader) -> dict[str, Any]:
    tol: dict[str, Any] = {}
    if t.has("key"):
        tol["key"] = t.value("key")
    op = tol["operator"] = t.value("operator")
    if t.has("value"):
        if op == "Exists":
            raise InvalidSpec(f"{t.where('value')}: must be empty when operator is Exists")
        tol["value"] = t.value("value")
    effect = t.value("effect") or ""
    if effect:
        tol["effect"] = effect
    if t.has("tolerationSeconds"):
        if effect != "NoExecute":
            raise InvalidSpec(f"{t.where('tolerationSeconds')}: only valid with effect NoExecute")
        seconds = t.value("tolerationSeconds")
        if not 0 <= seconds <= 1 << 31:
            raise InvalidSpec(f"{t.where('tolerationSeconds')}: must be between 0 and {1 << 31}, got {seconds!r}")
        tol["tolerationSeconds"] = seconds
    if "key" not in tol and op != "Exists":
        raise InvalidSpec(f"{t.path}: without a key, operator must be Exists")
    t.done()
    return tol


def _tolerations(r: _Reader) -> tuple[dict[str, Any], ...]:
    raw = r.get("tolerations") or []
    if not isinstance(raw, list):
        raise InvalidSpec(f"{r.where('tolerations')}: must be a list, got {raw!r}")
    item = r.fields["tolerations"].items
    return tuple(_toleration(_Reader(x, f"{r.where('tolerations')}[{i}]", item)) for i, x in enumerate(raw))


def _resources(r: _Reader) -> dict[str, Any]:
    if not r.has("resources"):
        return copy.deepcopy(DEFAULT_RESOURCES)
    res = r.sub("resources")
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = res.get(part)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InvalidSpec(f"{res.where(part)}: must be a map, got {values!r}")
        quantity = res.fields[part].values
        for k, v in values.items():
            try:
                if isinstance(v, bool) or not isinstance(v, (int, str)):
                    raise FieldError("not a quantity")
                quantity.parse(str(v))
            except FieldError:
                raise InvalidSpec(f"{res.where(part)}.{k}: {v!r} is not a quantity") from None
        out[part] = dict(values)
    res.done()
    return out


def _placement(r: _Reader) -> tuple[dict[str, str], tuple[str, ...]]:
    """spec.nodeSelector and spec.imagePullSecrets: their keys and names as the API wants them."""
    node_selector = r.value("nodeSelector") or {}
    for k, v in node_selector.items():
        if not re.match(S.LABEL_KEY, k) or not re.match(S.LABEL_VALUE, v):
            raise InvalidSpec(f"spec.nodeSelector: {k}={v!r} is not a valid label selector term")
    pull_secrets = r.get("imagePullSecrets") or []
    if not isinstance(pull_secrets, list) or not all(isinstance(s, dict) and set(s) == {"name"}
                                                     and re.match(S.K8S_NAME, str(s["name"])) for s in pull_secrets):
        raise InvalidSpec(f"spec.imagePullSecrets: must be a list of {{name: SECRET}}, got {pull_secrets!r}")
    return node_selector, tuple(s["name"] for s in pull_secrets)


def _modes(r: _Reader) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """spec.mode with what it reads: the CRD's CEL rules on the spec, in Python."""
    mode, interfaces, devices = r.value("mode"), r.value("interfaces") or (), r.value("devices") or ()
    if mode == "xdp" and not interfaces:
        raise InvalidSpec("spec.interfaces: xdp mode needs at least one interface")
    if mode == "xdp" and devices:
        raise InvalidSpec("spec.devices: only rdma and nccl modes read RDMA devices")
    if mode != "xdp" and interfaces:
        raise InvalidSpec(f"spec.interfaces: {mode} mode reads RDMA devices, not interfaces; use spec.devices")
    if mode != "xdp" and r.has("xdp"):
        raise InvalidSpec(f"spec.xdp: only valid in xdp mode, not {mode}")
    if mode == "xdp" and r.has("nic"):
        raise InvalidSpec("spec.nic: only valid in rdma and nccl modes")
    if mode == "xdp" and r.has("rdma"):
        raise InvalidSpec("spec.rdma: only valid in rdma and nccl modes")
    return mode, interfaces, devices


def parse(name: str, namespace: str, spec: Any, uid: str = "", created: str = "") -> Monitor:
    """Validate a monitor's spec, fill in defaults, and return the model the renderers take."""
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or "." in name
            or not re.match(S.K8S_NAME, name)):
        raise InvalidSpec(f"metadata.name: must be a DNS label of at most {MAX_NAME} characters, got {name!r}")
    r = _Reader(spec, "spec", S.SPEC)
    mode, interfaces, devices = _modes(r)
    node_selector, pull_secrets = _placement(r)
    monitor = Monitor(
        name=name, namespace=namespace, mode=mode, interfaces=interfaces, devices=devices,
        node_selector=node_selector, tolerations=_tolerations(r),
        interval=float(r.value("interval")), output=r.value("output"), port=r.value("port"),
        xdp=_xdp(r.sub("xdp")),
        nic=_nic(r.sub("nic")),
        rdma=_rdma(r.sub("rdma")),
        victoria_metrics=_victoria_metrics(r.sub("victoriaMetrics")) if r.has("victoriaMetrics") else None,
        scrape=_scrape(r.sub("scrape")) if r.has("scrape") else None,
        metrics=_metrics(r.sub("metrics")),
        image=r.value("image"), image_pull_policy=r.value("imagePullPolicy"), image_pull_secrets=pull_secrets,
        resources=_resources(r), privileged=r.value("privileged"),
        priority_class_name=r.value("priorityClassName"), host_kernel_headers=r.value("hostKernelHeaders"),
        termination_grace_period=r.value("terminationGracePeriodSeconds"),
        uid=uid, created=created,
    )
    r.done()
    return monitor


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
