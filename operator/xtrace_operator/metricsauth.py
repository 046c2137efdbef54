"""spec.metrics (model.Metrics, described in spec.py): what the operator renders for who may read /metrics.

`auth: kubernetes` makes the agents serve their port over TLS and answer /metrics only to a bearer token
the API server authenticates (TokenReview) and authorizes (SubjectAccessReview, `get` on the
non-resource URL /metrics: the sample ClusterRole `xtrace-metrics-reader`). What that takes, and no more:

- the agents' ServiceAccount in the subjects of one ClusterRoleBinding to `system:auth-delegator`
  (create tokenreviews and subjectaccessreviews, nothing else), `xtrace-agents-metrics-auth`. The
  manifests and the chart ship it without subjects; the operator keeps its subject list equal to the
  monitors that ask for auth. One binding, not one per monitor: a cluster-scoped object cannot be owned
  by a namespaced monitor, so per-monitor bindings would outlive their monitors, and Helm removes the
  shipped one on uninstall. The operator may patch only that binding, and may bind only that role;
- the probes switched to HTTPS (the kubelet does not verify a probe's certificate and sends no
  token: /healthz and /readyz need none and say only ok or not ready);
- the certificate: the Secret `tlsSecret.name` (cert-manager's shape: tls.crt, tls.key, ca.crt)
  mounted read-only, or none (the agent makes its own at start);
- the scrape objects: `scheme: https`, the scraper's own ServiceAccount token as bearer
  (`bearerTokenFile`), and `tlsConfig`: the Secret's `ca.crt` and the Service's DNS name as server
  name, or `insecureSkipVerify` for the agent's own certificate (still encrypted, still a token).
"""

from __future__ import annotations

from typing import Any

from xtrace_operator.model import Metrics

AGENTS_BINDING = "xtrace-agents-metrics-auth"
AUTH_DELEGATOR = "system:auth-delegator"
READER_ROLE = "xtrace-metrics-reader"
TLS_MOUNT = "/etc/xtrace/metrics-tls"
# the in-pod path of a scraper's own projected ServiceAccount token (Prometheus, vmagent)
SCRAPER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
RBAC_API = "rbac.authorization.k8s.io"


def agents_binding(subjects: list[tuple[str, str]]) -> dict[str, Any]:
    """The shipped ClusterRoleBinding with these (namespace, ServiceAccount) subjects, sorted."""
    return {"apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": AGENTS_BINDING},
            "roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": AUTH_DELEGATOR},
            "subjects": [{"kind": "ServiceAccount", "namespace": ns, "name": sa} for ns, sa in sorted(set(subjects))]}


def volumes(endpoint: Metrics) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts) for the certificate Secret; none without one."""
    if not endpoint.tls_secret:
        return [], []
    vol = {"name": "metrics-tls", "secret": {"secretName": endpoint.tls_secret, "defaultMode": 0o400,
                                             "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                       {"key": "tls.key", "path": "tls.key"}]}}
    return [vol], [{"name": "metrics-tls", "mountPath": TLS_MOUNT, "readOnly": True}]


def agent_settings(endpoint: Metrics) -> dict[str, Any]:
    """The agent config's httpAuth section (agent_config.HttpAuth's fields)."""
    if not endpoint.secure:
        return {}
    out: dict[str, Any] = {"mode": "kubernetes"}
    if endpoint.tls_secret:
        out.update(cert_file=f"{TLS_MOUNT}/tls.crt", key_file=f"{TLS_MOUNT}/tls.key")
    return out


def scrape_endpoint(endpoint: Metrics, service: str, namespace: str) -> dict[str, Any]:
    """What a VMServiceScrape's or ServiceMonitor's endpoint adds to get in (the same fields in both)."""
    if not endpoint.secure:
        return {}
    if endpoint.tls_secret:
        tls = {"ca": {"secret": {"name": endpoint.tls_secret, "key": "ca.crt"}},
               "serverName": f"{service}.{namespace}.svc"}
    else:
        tls = {"insecureSkipVerify": True}
    return {"scheme": "https", "bearerTokenFile": SCRAPER_TOKEN, "tlsConfig": tls}
