"""spec.metrics rendered: nothing changes without it; with auth, what the agents and a scraper need."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from xtrace_operator import metricsauth, model, render

BASE = {"mode": "rdma", "scrape": {"kind": "VMServiceScrape"}}


def _objs(spec: dict) -> dict[str, dict]:
    return {o["kind"]: o for o in render.objects(model.parse("sec", "ns1", spec))}


def _container(objs: dict) -> dict:
    return objs["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]


def test_auth_none_renders_what_no_metrics_field_renders():
    assert _objs({**BASE, "metrics": {"auth": "none"}}) == _objs(BASE)
    c = _container(_objs(BASE))
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert "httpAuth" not in yaml.safe_load(_objs(BASE)["ConfigMap"]["data"]["agent.yaml"])
    assert "scheme" not in _objs(BASE)["VMServiceScrape"]["spec"]["endpoints"][0]


@pytest.mark.parametrize("kind", ["VMServiceScrape", "ServiceMonitor"])
def test_a_named_secret_is_mounted_configured_and_trusted_by_the_scraper(kind):
    objs = _objs({**BASE, "scrape": {"kind": kind}, "metrics": {"auth": "kubernetes", "tlsSecret": {"name": "agent-tls"}}})
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "metrics-tls")
    assert vol["secret"]["secretName"] == "agent-tls" and {i["key"] for i in vol["secret"]["items"]} == \
        {"tls.crt", "tls.key"}
    c = _container(objs)
    assert {"name": "metrics-tls", "mountPath": metricsauth.TLS_MOUNT, "readOnly": True} in c["volumeMounts"]
    assert all(c[p]["httpGet"]["scheme"] == "HTTPS" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert "POD_IP" not in {e["name"] for e in c["env"]}  # the Secret names itself
    cfg = yaml.safe_load(objs["ConfigMap"]["data"]["agent.yaml"])
    assert cfg["httpAuth"] == {"mode": "kubernetes", "certFile": f"{metricsauth.TLS_MOUNT}/tls.crt",
                               "keyFile": f"{metricsauth.TLS_MOUNT}/tls.key"}
    [endpoint] = objs[kind]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["bearerTokenFile"] == metricsauth.SCRAPER_TOKEN
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "agent-tls", "key": "ca.crt"}},
                                     "serverName": "xtrace-sec.ns1.svc"}
    for obj in objs.values():
        if obj["kind"] not in render.SCRAPE_API:
            kubernetes_validate.validate(obj, "1.33", strict=True)


def test_the_generated_certificate_and_a_changed_secret_roll_the_agents():
    generated = _objs({**BASE, "metrics": {"auth": "kubernetes"}})
    env = {e["name"]: e for e in _container(generated)["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert generated["VMServiceScrape"]["spec"]["endpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}
    hashes = {render.config_hash(model.parse("sec", "ns1", {**BASE, "metrics": m})) for m in (
        {"auth": "none"}, {"auth": "kubernetes"}, {"auth": "kubernetes", "tlsSecret": {"name": "a"}},
        {"auth": "kubernetes", "tlsSecret": {"name": "b"}})}
    assert len(hashes) == 4


def test_the_agents_binding_lists_each_agent_once_sorted():
    crb = metricsauth.agents_binding([("b", "xtrace-y"), ("a", "xtrace-x"), ("b", "xtrace-y")])
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": "system:auth-delegator"}
    assert [(s["namespace"], s["name"]) for s in crb["subjects"]] == [("a", "xtrace-x"), ("b", "xtrace-y")]
    kubernetes_validate.validate(crb, "1.33", strict=True)
