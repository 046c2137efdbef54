"""Who may read /metrics, decided by the real API server: TokenReview and SubjectAccessReview as the agent
makes them (xtrace_agent.kubeauth), with the agent's own ServiceAccount bound to system:auth-delegator.

Tokens come from the TokenRequest API, except the expired one: no API hands out a token that has
already expired, so the test signs one with the control plane's own service-account key (what
kube-controller-manager and the TokenRequest API sign with), beside an identical one that has not
expired, which must pass: the expiry alone makes the difference. "API server stopped" is the real
kube-apiserver process stopped with SIGSTOP (it accepts the TCP connection and never answers, the
worst case for a client), then continued.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import time

import pytest
import yaml

from tests.k8s.conftest import ROOT, Cluster, wait_for
from xtrace_agent import kubeauth

pytestmark = pytest.mark.k8s

BINDING = "xtrace-agents-metrics-auth"
READER_ROLE = ROOT / "deploy" / "manifests" / "access" / "metrics-reader.yaml"


def _bind(cluster: Cluster, name: str, role: str, ns: str, sa: str) -> None:
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})


class Parties:
    """A namespace with the agent's ServiceAccount (auth-delegator), a reader (the sample role) and a stranger."""

    def __init__(self, cluster: Cluster, tmp: pathlib.Path):
        self.cluster, self.ns = cluster, cluster.namespace()
        for sa in ("agent", "reader", "stranger"):
            cluster.kubectl("create", "serviceaccount", sa, "-n", self.ns)
        # only the ClusterRole of the sample: its example binding names a vmagent that is not here
        role = next(d for d in READER_ROLE.read_text().split("---") if "kind: ClusterRole\n" in d)
        cluster.apply(role)
        _bind(cluster, f"{self.ns}-agent", "system:auth-delegator", self.ns, "agent")
        _bind(cluster, f"{self.ns}-reader", "xtrace-metrics-reader", self.ns, "reader")
        self.agent_token = tmp / "agent-token"
        self.agent_token.write_text(cluster.token(self.ns, "agent"))

    def reviewer(self, **kw) -> kubeauth.Reviewer:
        return kubeauth.Reviewer(self.cluster.server, self.agent_token, self.cluster.ca, **kw)

    def token(self, sa: str) -> str:
        return self.cluster.token(self.ns, sa)


@pytest.fixture(scope="module")
def parties(cluster: Cluster, tmp_path_factory) -> Parties:
    return Parties(cluster, tmp_path_factory.mktemp("auth"))


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_reader_allowed_stranger_forbidden_nobody_unauthenticated(parties: Parties):
    r = parties.reviewer()
    ok = r.check(bearer(parties.token("reader")))
    assert ok.status == 200 and ok.user == f"system:serviceaccount:{parties.ns}:reader"
    no = r.check(bearer(parties.token("stranger")))
    assert no.status == 403 and no.user == f"system:serviceaccount:{parties.ns}:stranger"
    for header in (None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", bearer("garbage"),
                   bearer(parties.token("reader")[:-4] + "AAAA")):  # a real token with its signature broken
        assert r.check(header).status == 401, header


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(cluster: Cluster, claims: dict) -> str:
    """A JWT signed RS256 with the control plane's service-account key (tools/cluster: pki/sa.key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    key = serialization.load_pem_private_key((cluster.ca.parent / "sa.key").read_bytes(), password=None)
    head = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(key.sign(head.encode(), padding.PKCS1v15(), hashes.SHA256()))


def _claims_of(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_an_expired_token_is_unauthenticated(parties: Parties):
    """The reader's own claims (issuer, audience, ServiceAccount uid), re-signed: once live, once expired."""
    claims = _claims_of(parties.token("reader"))
    claims = {k: v for k, v in claims.items() if k in ("iss", "aud", "sub", "kubernetes.io")}
    claims["kubernetes.io"] = {k: v for k, v in claims["kubernetes.io"].items() if k in ("namespace", "serviceaccount")}
    now = int(time.time())
    r = parties.reviewer()
    live = _signed(parties.cluster, {**claims, "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "jti": "live"})
    assert r.check(bearer(live)).status == 200
    dead = _signed(parties.cluster, {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600, "jti": "dead"})
    verdict = r.check(bearer(dead))
    assert verdict.status == 401, verdict


def test_verdicts_are_cached_then_asked_again(parties: Parties):
    """Allowed for the first ttl, asked again after it: a removed binding ends access within that time."""
    ns = parties.ns
    parties.cluster.kubectl("create", "serviceaccount", "brief", "-n", ns)
    _bind(parties.cluster, f"{ns}-brief", "xtrace-metrics-reader", ns, "brief")
    token = parties.token("brief")
    r = parties.reviewer(ttl=(3.0, 1.0))
    assert r.check(bearer(token)).status == 200
    parties.cluster.kubectl("delete", "clusterrolebinding", f"{ns}-brief")
    assert r.check(bearer(token)).status == 200  # cached
    wait_for(lambda: r.check(bearer(token)).status == 403, 30, "403 once the cached verdict expired", every=0.5)


def test_api_server_stopped_answers_503_and_caches_nothing(parties: Parties, cluster: Cluster):
    r = parties.reviewer(timeout=1.0)
    reader, stranger = parties.token("reader"), parties.token("stranger")
    assert r.check(bearer(reader)).status == 200
    pid = cluster.info["pids"]["kube-apiserver"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        verdict = r.check(bearer(stranger))
        assert verdict.status == 503 and "unreachable" in verdict.why, verdict
        assert time.monotonic() - t0 < 5  # bounded by the timeout, not by the scraper's patience
        assert r.check(bearer(reader)).status == 200  # an allowed verdict from before: cached
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 60,
             "the API server back", every=0.5)
    assert r.check(bearer(stranger)).status == 403  # the 503 was not remembered


def test_an_agent_without_auth_delegator_answers_503(parties: Parties, tmp_path):
    """The agent's own ServiceAccount may not review: 503 naming the missing binding, never data."""
    token = tmp_path / "token"
    token.write_text(parties.token("stranger"))
    r = kubeauth.Reviewer(parties.cluster.server, token, parties.cluster.ca)
    verdict = r.check(bearer(parties.token("reader")))
    assert verdict.status == 503 and "system:auth-delegator" in verdict.why, verdict


def test_the_operator_may_change_that_one_binding_and_grant_that_one_role(installed: Cluster,
                                                                          operator_kubeconfig: str):
    """deploy/manifests' RBAC: patch on xtrace-agents-metrics-auth and bind on system:auth-delegator, nothing wider."""
    def can(*args: str) -> bool:
        return installed.kubectl("auth", "can-i", *args, kubeconfig=operator_kubeconfig, check=False) \
            .stdout.strip() == "yes"
    assert can("patch", "clusterrolebindings/xtrace-agents-metrics-auth")
    assert not can("patch", "clusterrolebindings/xtrace-operator") and not can("create", "clusterrolebindings")
    assert not can("delete", "clusterrolebindings/xtrace-agents-metrics-auth")
    assert can("bind", "clusterroles/system:auth-delegator") and not can("bind", "clusterroles/cluster-admin")
    assert not can("escalate", "clusterroles") and not can("create", "tokenreviews.authentication.k8s.io")
    # The binding ships without subjects (the operator adds the secured monitors' agents); in the shared
    # cluster another test's monitor may hold one now, so the shipped file says it, not the live object.
    shipped = [d for d in yaml.safe_load_all((ROOT / "deploy/manifests/rbac.yaml").read_text())
               if d and d.get("kind") == "ClusterRoleBinding" and d["metadata"]["name"] == BINDING]
    assert len(shipped) == 1 and not shipped[0].get("subjects")
    binding = installed.get("clusterrolebinding", BINDING)
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    before = binding.get("subjects") or []
    # and the grant works as the operator will use it: subjects added under its own identity
    sa = {"kind": "ServiceAccount", "name": "someone", "namespace": "default"}
    installed.kubectl("patch", "clusterrolebinding", BINDING, "--type=merge",
                      "-p", json.dumps({"subjects": before + [sa]}), kubeconfig=operator_kubeconfig)
    assert sa in installed.get("clusterrolebinding", BINDING)["subjects"]
    restore = {"subjects": before} if before else {"subjects": None}
    installed.kubectl("patch", "clusterrolebinding", BINDING, "--type=merge", "-p", json.dumps(restore))
