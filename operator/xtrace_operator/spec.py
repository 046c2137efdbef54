"""The XTraceMonitor spec, described once: every field, its bounds, default, pattern and meaning.

`model.py` validates monitors with these descriptors and `tools/crd.py` writes the CRD's OpenAPI
schema from them (`make crd`; a test checks the committed CRD is what it writes). Fields the agent's
config has too (`xdp.*`, `interval`, `output`, the queue and spool bounds) are the agent's own
descriptors (`xtrace_agent.config`), so a new `spec.xdp` field is declared in the agent only.

`rules` are the CRD's CEL rules, for the API server; `model.py` checks the same rules in Python
(the operator must refuse a bad monitor even where the CRD was installed without its schema).
"""

from __future__ import annotations

import re
from typing import Any

from xtrace_agent import config as agent
from xtrace_agent.fields import IFACE_PATTERN, LABEL_NAME_PATTERN, URL_PATTERN, Field, FieldError, label_names

DEFAULT_IMAGE = "ghcr.io/xtrace-io/xtrace-agent:0.1.0"
DEFAULT_PORT = 9435
DEFAULT_GRACE = 60  # seconds: detach XDP + flush the remote-write queue (push timeout 30 s) + spool
DEFAULT_SPOOL_HOST_PATH = "/var/lib/xtrace"
# Read only: model.py hands every monitor its own copy.
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
# Child names are "xtrace-<monitor>" and the monitor name is a label value: 63 - len("xtrace-").
MAX_NAME = 56

IFACE = IFACE_PATTERN
TENANT = r"^[0-9]{1,10}(:[0-9]{1,10})?$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DURATION = r"^[0-9]+(ms|s|m|h)$"

SCRAPE_KINDS = ("Service", "VMServiceScrape", "ServiceMonitor")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
TLS_SECRET_NEEDS_AUTH = "spec.metrics.tlsSecret: only with auth: kubernetes (a plain port serves no TLS)"


def matching(pattern: str, what: str):
    """A refine for a rule the operator checks and the CRD leaves to it (a name's form, say)."""
    def refine(v: str) -> str:
        if not re.match(pattern, v):
            raise FieldError(f"{v!r} is not {what}")
        return v
    return refine


def _string(description: str = "", **kw: Any) -> Field:
    return Field("string", description, nonempty=True, **kw)


def _secret_ref(name_field: str, default_key: str, description: str = "") -> Field:
    return Field("object", description, required=(name_field,), properties={
        name_field: _string(max_length=253, refine=matching(K8S_NAME, "a Secret name")),
        "key": _string(default=default_key, refine=matching(SECRET_KEY, "a Secret key")),
    })


_URL = _string(pattern=URL_PATTERN, max_length=2048, what="an http:// or https:// URL")
_QUANTITIES = Field("object", values=_string(pattern=QUANTITY, what="a quantity", openapi_extra={
    "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}))

_AUTH = Field("object", "Credentials, always from Secrets mounted as files (never in the ConfigMap).",
              rules=(("!(has(self.basic) && has(self.bearer))",
                      "spec.victoriaMetrics.auth: set basic or bearer, not both"),),
              properties={
                  "basic": Field("object", required=("secretName",), properties={
                      "secretName": _string(max_length=253, refine=matching(K8S_NAME, "a Secret name")),
                      "username": _string("User name; when absent, read from the Secret's usernameKey."),
                      "usernameKey": _string(default="username", refine=matching(SECRET_KEY, "a Secret key")),
                      "passwordKey": _string(default="password", refine=matching(SECRET_KEY, "a Secret key")),
                  }),
                  "bearer": _secret_ref("secretName", "token"),
              })

VICTORIA_METRICS = Field(
    "object", "Where the agents push their samples (Prometheus remote write).",
    rules=(("has(self.url) != has(self.urls)", "spec.victoriaMetrics: set exactly one of url or urls"),
           ("!has(self.headers) || !self.headers.exists(k, k.matches('(?i)^(proxy-)?authorization$'))",
            "spec.victoriaMetrics.headers: Authorization must not be set here; use auth with a Secret")),
    properties={
        "url": Field("string", "Remote-write URL; a bare address (http://vm:8428) means /api/v1/write. With a "
                     "tenant: the vminsert address without a path.", pattern=URL_PATTERN, max_length=2048),
        "urls": Field("array", "Several remote-write URLs (each gets every sample), instead of url.",
                      min_items=1, max_items=8, unique=True, items=_URL),
        "tenant": _string("Cluster VictoriaMetrics tenant, ACCOUNT or ACCOUNT:PROJECT; the operator writes to "
                          "/insert/<tenant>/prometheus/api/v1/write.", pattern=TENANT,
                          what="a tenant (ACCOUNT or ACCOUNT:PROJECT, decimal)"),
        "auth": _AUTH,
        "tls": Field("object", properties={
            "caSecret": _secret_ref("name", "ca.crt", "A Secret holding the CA bundle that signs the server "
                                    "certificate."),
            "insecureSkipVerify": Field("boolean", default=False),
        }),
        "headers": Field("object", "Extra HTTP headers on every push (not for credentials).",
                         values=Field("string")),
        "extraLabels": Field("object", "Labels added to every pushed sample (with node, which the agent adds).",
                             max_properties=20, values=Field("string"), refine=label_names,
                             rules=((f"self.all(k, k.matches('{LABEL_NAME_PATTERN}') && !k.startsWith('__'))",
                                     "spec.victoriaMetrics.extraLabels: keys must be Prometheus label names"),)),
        "queueSamples": agent.SCHEMA["queueSamples"],
        "maxPushAge": agent.SCHEMA["maxPushAge"],
        "spool": Field("object", "On-disk spool for samples that could not be sent (survives agent restarts).",
                       properties={
                           "maxBytes": agent.SPOOL["maxBytes"],
                           "hostPath": _string("Host directory; each monitor uses <hostPath>/<namespace>-<name>.",
                                               default=DEFAULT_SPOOL_HOST_PATH, pattern=r"^/\S*$",
                                               what="an absolute path"),
                       }),
    })

TOLERATION = Field("object", rules=(
    ("self.operator == 'Exists' || has(self.key)", "without a key, operator must be Exists"),
    ("self.operator != 'Exists' || !has(self.value)", "value must be empty when operator is Exists"),
    ("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
     "tolerationSeconds is only valid with effect NoExecute"),
), properties={
    "key": _string(max_length=316, refine=matching(LABEL_KEY, "a taint key")),
    "operator": Field("string", enum=TOLERATION_OPERATORS, default="Equal"),
    "value": _string(max_length=63, refine=matching(LABEL_VALUE, "a taint value")),
    "effect": Field("string", enum=TOLERATION_EFFECTS),
    # No maximum in the CRD (it has none for int64); the operator keeps the value in an int32.
    "tolerationSeconds": Field("integer", openapi_extra={"format": "int64", "minimum": 0}),
})

SCRAPE = Field(
    "object", "Point a scraper at the agents' /metrics: a headless Service over the agent pods (kind Service), "
    "plus a VMServiceScrape (VictoriaMetrics operator) or a ServiceMonitor (Prometheus operator) for it, "
    "labelling each agent's self-metrics with its node. Absent: nothing is rendered.",
    required=("kind",), properties={
        "kind": Field("string", enum=SCRAPE_KINDS),
        "interval": _string("Scrape interval.", pattern=DURATION, default="30s", what="a duration such as 30s"),
    })


METRICS = Field(
    "object", "Who may read the agents' /metrics (docs/security.md). auth none (the default): the port serves "
    "plain HTTP to anyone who reaches it. auth kubernetes: TLS, and /metrics only for a bearer token the API "
    "server authenticates (TokenReview) and allows get on the non-resource URL /metrics (SubjectAccessReview); "
    "/healthz and /readyz stay open and say only ok or not ready.",
    rules=(("!has(self.tlsSecret) || self.auth == 'kubernetes'", TLS_SECRET_NEEDS_AUTH),),
    properties={
        "auth": Field("string", enum=agent.HTTP_AUTH_MODES, default="none"),
        "tlsSecret": Field("object", "A Secret with tls.crt and tls.key (cert-manager's shape; ca.crt for the "
                           "scrapers), mounted and reloaded when it changes. Absent: each agent makes a self-signed "
                           "certificate at start.", required=("name",), properties={
                               "name": _string(max_length=253, pattern=K8S_NAME, what="a Secret name"),
                           }),
    })


def _names(description: str, what: str) -> Field:
    return Field("array", description, max_items=64, unique=True, items=_string(pattern=IFACE, what=what))


SPEC = Field("object", "What to monitor, where, and where to send the metrics.", rules=(
    ("self.mode != 'xdp' || (has(self.interfaces) && self.interfaces.size() > 0)",
     "spec.interfaces: xdp mode needs at least one interface"),
    ("self.mode == 'xdp' || !has(self.interfaces) || self.interfaces.size() == 0",
     "spec.interfaces: rdma and nccl modes read RDMA devices, not interfaces; use spec.devices"),
    ("self.mode != 'xdp' || !has(self.devices) || self.devices.size() == 0",
     "spec.devices: only rdma and nccl modes read RDMA devices"),
    ("self.mode == 'xdp' || !has(self.xdp)", "spec.xdp: only valid in xdp mode"),
    ("self.mode != 'xdp' || !has(self.nic)", "spec.nic: only valid in rdma and nccl modes"),
    ("self.mode != 'xdp' || !has(self.rdma)", "spec.rdma: only valid in rdma and nccl modes"),
), properties={
    "mode": agent.SCHEMA["mode"],
    "interfaces": _names('Network interfaces (names or shell globs such as "ens*") to attach XDP to. xdp mode '
                         'only.', "an interface name or glob"),
    "devices": _names('RDMA devices (names or globs such as "mlx5_*") to read. Empty means every device. '
                      'rdma/nccl only.', "an RDMA device name or glob"),
    "nodeSelector": Field("object", "Run agents only on nodes with these labels (empty means every schedulable "
                          "node).", values=Field("string", max_length=63)),
    "tolerations": Field("array", "Taints the agent tolerates (for example GPU node taints).", max_items=32,
                         items=TOLERATION),
    "interval": agent.SCHEMA["interval"],
    "output": agent.SCHEMA["output"],
    "port": Field("integer", "Host port of the agent's /metrics, /healthz and /readyz (host network; unique per "
                  "node).", bounds=(1024, 65535), default=DEFAULT_PORT),
    "xdp": agent.SCHEMA["xdp"],
    "nic": agent.SCHEMA["nic"],
    # the agent's rdma section without its socket path: the operator mounts the kubelet's directory
    # where the agent looks by default
    "rdma": Field("object", "RDMA device options. rdma and nccl modes only.",
                  properties={"podAttribution": agent.RDMA["podAttribution"]}),
    "victoriaMetrics": VICTORIA_METRICS,
    "image": _string("Agent image.", default=DEFAULT_IMAGE, pattern=r"^\S+$", what="an image reference"),
    "imagePullPolicy": Field("string", enum=PULL_POLICIES, default="IfNotPresent"),
    "imagePullSecrets": Field("array", items=Field("object", required=("name",),
                                                   properties={"name": Field("string")})),
    "resources": Field("object", "Agent container resources (BCC compiles the XDP program at start-up; leave "
                       "memory for it).", default=DEFAULT_RESOURCES,
                       properties={"requests": _QUANTITIES, "limits": _QUANTITIES}),
    "privileged": Field("boolean", "Run the agent privileged instead of with the capabilities BPF, NET_ADMIN, "
                        "PERFMON, SYS_ADMIN, SYS_RESOURCE.", default=False),
    "hostKernelHeaders": Field("boolean", "Mount the node's /lib/modules and /usr/src for the agent's compile. "
                               "The agent image carries kernel headers of its own and uses the node's only when "
                               "their version is closer to the running kernel; a node without those directories "
                               "keeps the pod from starting.", default=False),
    "priorityClassName": _string("PriorityClass of the agent pods (system-node-critical keeps them through node "
                                 "pressure).", refine=matching(K8S_NAME, "a PriorityClass name")),
    "terminationGracePeriodSeconds": Field("integer", "Time the agent gets to detach XDP and flush its queue on "
                                           "shutdown.", bounds=(10, 3600), default=DEFAULT_GRACE),
    "scrape": SCRAPE,
    "metrics": METRICS,
})
