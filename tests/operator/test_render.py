"""The pure builders: every object is valid Kubernetes (strict schemas) and says what the agent needs."""

from __future__ import annotations

import itertools

import kubernetes_validate
import pytest
import yaml

from tests.operator.conftest import SAMPLES, load_sample
from xtrace_operator import model, render

K8S_VERSION = "1.33"

BASE = {"mode": "xdp", "interfaces": ["eth0"]}
VARIATIONS = {
    "mode": [{}, {"mode": "rdma", "interfaces": [], "devices": ["mlx5_0"]}, {"mode": "nccl", "interfaces": []}],
    "privilege": [{}, {"privileged": True}],
    "vm": [{}, {"victoriaMetrics": {"url": "http://vm:8428"}},
           {"victoriaMetrics": {"urls": ["https://a:8480", "https://b:8480"], "tenant": "3",
                                "auth": {"basic": {"secretName": "vm-basic", "username": "xtrace"}},
                                "tls": {"caSecret": {"name": "ca"}, "insecureSkipVerify": False},
                                "spool": {"maxBytes": 0}}},
           {"victoriaMetrics": {"url": "https://vm", "auth": {"bearer": {"secretName": "tok", "key": "t"}},
                                "spool": {"hostPath": "/data/xtrace"}}}],
    "placement": [{}, {"nodeSelector": {"kubernetes.io/os": "linux"},
                       "tolerations": [{"operator": "Exists"},
                                       {"key": "k", "value": "v", "effect": "NoExecute",
                                        "tolerationSeconds": 30}],
                       "priorityClassName": "system-node-critical",
                       "imagePullSecrets": [{"name": "regcred"}]}],
}


def _matrix():
    keys = list(VARIATIONS)
    for combo in itertools.product(*(VARIATIONS[k] for k in keys)):
        spec = dict(BASE)
        for part in combo:
            spec.update(part)
        if spec["mode"] != "xdp":
            spec.pop("interfaces")
        yield spec


MATRIX = list(_matrix())


def _monitor(spec, name="m", namespace="ns"):
    return model.parse(name, namespace, spec)


def _validate(objs):
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_samples_render_valid_objects(path):
    objs = render.objects(model.from_body(load_sample(path)))
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "DaemonSet"]
    _validate(objs)


def test_matrix_renders_valid_objects():
    assert len(MATRIX) == 48
    for spec in MATRIX:
        _validate(render.objects(_monitor(spec)))


def _pod(spec):
    return render.daemonset(_monitor(spec))["spec"]["template"]["spec"]


def test_daemonset_has_what_the_agent_needs():
    pod = _pod({**BASE, "victoriaMetrics": {"url": "http://vm"}})
    (c,) = pod["containers"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["automountServiceAccountToken"] is True  # for the AgentReady condition (test_agent_report.py)
    assert c["args"] == ["--config", "/etc/xtrace/agent.yaml"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    assert sorted(c["securityContext"]["capabilities"]["add"]) == sorted(render.CAPABILITIES)
    assert c["securityContext"]["privileged"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for path in ("/host/sys", "/sys/fs/bpf"):
        assert mounts[path]["readOnly"] is True
    assert hosts["host-sys"] == "/sys"
    # the image brings its own kernel headers: no host header mounts unless asked for
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts
    assert hosts["spool"] == "/var/lib/xtrace/ns-m" and not mounts[render.SPOOL_MOUNT].get("readOnly")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9435, "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_privileged_replaces_capabilities():
    c = _pod({**BASE, "privileged": True})["containers"][0]
    assert c["securityContext"]["privileged"] is True and "capabilities" not in c["securityContext"]


def test_placement_comes_from_the_spec():
    pod = _pod({**BASE, "nodeSelector": {"gpu": "yes"}, "tolerations": [{"operator": "Exists"}], "port": 9500})
    assert pod["nodeSelector"] == {"gpu": "yes"} and pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["containers"][0]["ports"][0]["containerPort"] == 9500


def test_rolling_update_and_config_hash():
    m1, m2 = _monitor(BASE), _monitor({**BASE, "interval": 10})
    ds1, ds2 = render.daemonset(m1), render.daemonset(m2)
    assert ds1["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert ds1["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]
    h1 = ds1["spec"]["template"]["metadata"]["annotations"][render.HASH_ANNOTATION]
    h2 = ds2["spec"]["template"]["metadata"]["annotations"][render.HASH_ANNOTATION]
    assert h1 == render.config_hash(m1) != h2
    assert render.config_hash(_monitor(BASE)) == h1  # deterministic
    # The selector holds only what never changes (it is immutable on a DaemonSet).
    assert ds1["spec"]["selector"] == ds2["spec"]["selector"] == {"matchLabels": render.selector_labels(m1)}
    assert ds1["spec"]["template"]["metadata"]["labels"].items() >= render.selector_labels(m1).items()


def test_secret_change_rolls_the_pods():
    a = {**BASE, "victoriaMetrics": {"url": "http://vm", "auth": {"bearer": {"secretName": "one"}}}}
    b = {**BASE, "victoriaMetrics": {"url": "http://vm", "auth": {"bearer": {"secretName": "two"}}}}
    assert render.config_hash(_monitor(a)) != render.config_hash(_monitor(b))


SECRET_SPECS = [
    {**BASE, "victoriaMetrics": {"url": "http://vm", "auth": {"basic": {"secretName": "vm-basic"}}}},
    {**BASE, "victoriaMetrics": {"url": "http://vm", "auth": {"bearer": {"secretName": "vm-token"}},
                                 "tls": {"caSecret": {"name": "vm-ca"}}}},
]


@pytest.mark.parametrize("spec", SECRET_SPECS, ids=["basic", "bearer"])
def test_secrets_are_files_never_configmap_or_env(spec):
    m = _monitor(spec)
    cm, ds = render.configmap(m), render.daemonset(m)
    text = cm["data"]["agent.yaml"]
    config = yaml.safe_load(text)
    target = config["remoteWrite"][0]
    files = [target.get("bearerTokenFile"), target.get("caFile"),
             *(target.get("basicAuth") or {}).values()]
    assert any(files)
    for f in filter(None, files):
        assert f.startswith(render.SECRETS_PATH + "/")
    # Nothing but paths: no inline credential fields, no Secret names leaking into the config.
    assert "password:" not in text and "token:" not in text and "vm-basic" not in text and "vm-token" not in text
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in c["env"])
    secret_volumes = [v for v in ds["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert secret_volumes and all(v["secret"]["defaultMode"] == 0o400 for v in secret_volumes)
    mounted = {m_["mountPath"] for m_ in c["volumeMounts"] if m_["name"].startswith("secret-")}
    for f in filter(None, files):
        assert f.rsplit("/", 1)[0] in mounted


def test_tenant_builds_the_vminsert_path():
    m = _monitor({**BASE, "victoriaMetrics": {"url": "http://vminsert:8480/", "tenant": "12:3"}})
    assert m.victoria_metrics.urls == ("http://vminsert:8480/insert/12:3/prometheus/api/v1/write",)
    with pytest.raises(model.InvalidSpec, match="without a path"):
        _monitor({**BASE, "victoriaMetrics": {"url": "http://vminsert:8480/api/v1/write", "tenant": "12"}})


def test_names_and_labels():
    m = _monitor(BASE, name="edge", namespace="obs")
    for obj in render.objects(m):
        assert obj["metadata"]["name"] == "xtrace-edge" and obj["metadata"]["namespace"] == "obs"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "edge"
        assert labels.items() >= render.OWNED.items()


def test_scrape_adds_a_valid_headless_service_and_its_scrape_object():
    base = {"mode": "xdp", "interfaces": ["eth0"], "port": 9500}
    assert [o["kind"] for o in render.objects(_monitor(base))][-1] == "DaemonSet"
    for kind, extra in (("Service", []), ("VMServiceScrape", ["VMServiceScrape"]),
                        ("ServiceMonitor", ["ServiceMonitor"])):
        objs = render.objects(_monitor({**base, "scrape": {"kind": kind}}))
        assert [o["kind"] for o in objs][5:] == ["Service", *extra]
        svc = objs[5]
        _validate([svc])
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == 9500
        assert svc["spec"]["selector"] == objs[4]["spec"]["selector"]["matchLabels"]
    left = render.scrape_leftovers(_monitor({**base, "scrape": {"kind": "ServiceMonitor"}}))
    assert left == [("operator.victoriametrics.com/v1beta1", "VMServiceScrape")]
    with pytest.raises(model.InvalidSpec, match="spec.scrape.kind: required"):
        _monitor({**base, "scrape": {"interval": "10s"}})
    with pytest.raises(model.InvalidSpec, match="spec.scrape.interval"):
        _monitor({**base, "scrape": {"kind": "Service", "interval": "soon"}})


def test_host_kernel_headers_are_mounted_only_when_asked():
    pod = render.daemonset(_monitor({"mode": "xdp", "interfaces": ["eth0"], "hostKernelHeaders": True}))
    spec = pod["spec"]["template"]["spec"]
    _validate([pod])
    hosts = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert hosts["lib-modules"] == {"path": "/lib/modules", "type": "Directory"}
    assert hosts["usr-src"] == {"path": "/usr/src", "type": "Directory"}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
