"""The two Kubernetes API calls the operator makes on its children: server-side apply and delete.

Plain dicts in and out, through the `kubernetes` client's transport (authentication, TLS,
in-cluster or kubeconfig). Configuration is loaded on first use, not at import: the client
reads KUBECONFIG when loaded, and tests point it at their API server first with `configure()`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import kubernetes

_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None

PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("apps/v1", "DaemonSet"): "/apis/apps/v1/namespaces/{ns}/daemonsets",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"):
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("operator.victoriametrics.com/v1beta1", "VMServiceScrape"):
        "/apis/operator.victoriametrics.com/v1beta1/namespaces/{ns}/vmservicescrapes",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


def configure(host: str | None = None, *, verify_ssl: bool = True) -> None:
    """Use this API server (tests), or the in-cluster / kubeconfig configuration when host is None."""
    global _client
    with _lock:
        if host is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            cfg = kubernetes.client.Configuration.get_default_copy()
        else:
            cfg = kubernetes.client.Configuration(host=host)
            cfg.verify_ssl = verify_ssl
        _client = kubernetes.client.ApiClient(cfg)


def _api() -> kubernetes.client.ApiClient:
    if _client is None:
        configure()
    assert _client is not None
    return _client


def request(method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
            content_type: str = "application/json") -> dict | None:
    """One API call; JSON in and out. A non-2xx answer raises ApiError."""
    api = _api()
    headers = {"Accept": "application/json", "Content-Type": content_type}
    _, url, headers, data, _ = api.param_serialize(method, path, query_params=query or [],
                                                   header_params=headers, body=body,
                                                   auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers, body=data, _request_timeout=30)
    raw = resp.read()
    if not 200 <= resp.status < 300:
        try:
            reason = json.loads(raw).get("message") or raw.decode(errors="replace")
        except (ValueError, AttributeError):
            reason = raw.decode(errors="replace") if raw else ""
        raise ApiError(resp.status, reason[:300])
    return json.loads(raw) if raw else {}


def _collection(obj: dict[str, Any]) -> str:
    return PATHS[obj["apiVersion"], obj["kind"]].format(ns=obj["metadata"].get("namespace", ""))


def delete(api_version: str, kind: str, namespace: str, name: str) -> None:
    try:
        request("DELETE", f"{PATHS[api_version, kind].format(ns=namespace)}/{name}",
              body={"propagationPolicy": "Background"})
    except ApiError as e:
        if e.status != 404:
            raise


FIELD_MANAGER = "xtrace-operator"


def apply(obj: dict[str, Any]) -> dict:
    """Make the object exist as given through server-side apply; returns the object as stored.

    One field manager owns every field the operator renders, with force: a hand edit to one of
    those fields is taken back at the next apply, a field the operator stopped rendering (a
    removed nodeSelector key, a toleration) is removed, and fields that other actors or the API
    server's defaulting set stay theirs. An unchanged object costs one request and no write.
    """
    meta = obj["metadata"]
    body = json.loads(json.dumps(obj))  # a plain copy: kopf.adopt may leave its own types behind
    stored = request("PATCH", f"{_collection(obj)}/{meta['name']}", body,
                     query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                     content_type="application/apply-patch+yaml")
    return stored or {}
