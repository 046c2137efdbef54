"""Pure builders for the objects a monitor owns: the agent ServiceAccount, its Role and RoleBinding,
the ConfigMap and the DaemonSet.

Each builder takes the validated `Monitor` and returns a plain dict, ready for the API or for
`yaml.safe_dump`. Nothing here talks to a cluster; the handlers add owner references
(`kopf.adopt`) and apply the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import yaml

from xtrace_agent import config as agent_config
from xtrace_operator import metricsauth
from xtrace_operator.model import Monitor

CONFIG_PATH = "/etc/xtrace"
CONFIG_FILE = "agent.yaml"
SECRETS_PATH = "/etc/xtrace/secrets"
HOST_SYS = "/host/sys"
SPOOL_MOUNT = "/var/lib/xtrace/spool"
# Pod attribution: the kubelet's pod-resources socket directory, mounted read-only at the same path
POD_RESOURCES_DIR = os.path.dirname(agent_config.DEFAULT_POD_RESOURCES_SOCKET)
HASH_ANNOTATION = "xtrace.io/config-hash"
# NET_ADMIN attaches XDP, tcx links and clsact filters (egress); tests/kernel/test_egress.py runs
# the agent with exactly these in its bounding set, both directions on.
CAPABILITIES = ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
AGENT = "xtrace-agent"
OPERATOR = "xtrace-operator"
# What the operator watches: every object it creates carries both.
OWNED = {NAME_LABEL: AGENT, MANAGED_BY_LABEL: OPERATOR}


def child_name(monitor: Monitor) -> str:
    return f"xtrace-{monitor.name}"


def selector_labels(monitor: Monitor) -> dict[str, str]:
    """The DaemonSet's pod selector: immutable, so it holds only what never changes."""
    return {NAME_LABEL: AGENT, INSTANCE_LABEL: monitor.name}


def labels(monitor: Monitor) -> dict[str, str]:
    return {
        **selector_labels(monitor),
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/part-of": "xtrace",
        MANAGED_BY_LABEL: OPERATOR,
        "xtrace.io/mode": monitor.mode,
    }


def _metadata(monitor: Monitor) -> dict[str, Any]:
    return {"name": child_name(monitor), "namespace": monitor.namespace, "labels": labels(monitor)}


def spool_host_path(monitor: Monitor) -> str | None:
    vm = monitor.victoria_metrics
    if vm is None or vm.spool_max_bytes == 0:
        return None
    return f"{vm.spool_host_path.rstrip('/')}/{monitor.namespace}-{monitor.name}"


def _secret_dir(kind: str) -> str:
    return f"{SECRETS_PATH}/{kind}"


def agent_config_of(monitor: Monitor) -> agent_config.AgentConfig:
    """The agent's configuration for this monitor; secrets appear only as file paths."""
    targets: list[agent_config.RemoteWriteTarget] = []
    vm = monitor.victoria_metrics
    if vm is not None:
        basic = None
        if vm.basic is not None:
            d = _secret_dir("basic")
            basic = agent_config.BasicAuth(
                username=vm.basic.username or "",
                username_file=None if vm.basic.username else f"{d}/{vm.basic.username_key}",
                password_file=f"{d}/{vm.basic.password_key}")
        bearer = f"{_secret_dir('bearer')}/{vm.bearer.key}" if vm.bearer else None
        ca = f"{_secret_dir('ca')}/{vm.ca.key}" if vm.ca else None
        for i, url in enumerate(vm.urls):
            targets.append(agent_config.RemoteWriteTarget(
                url=url, name="victoriametrics" if len(vm.urls) == 1 else f"victoriametrics-{i}",
                basic_auth=basic, bearer_token_file=bearer, ca_file=ca,
                insecure_skip_verify=vm.insecure_skip_verify, headers=dict(vm.headers)))
    spool = spool_host_path(monitor)
    return agent_config.AgentConfig(
        mode=monitor.mode, interfaces=monitor.interfaces, devices=monitor.devices,
        interval=float(monitor.interval), output=monitor.output,
        sysfs=HOST_SYS, monitor=monitor.name, namespace=monitor.namespace,
        labels=dict(vm.extra_labels) if vm else {},
        xdp=monitor.xdp,
        nic=monitor.nic,
        rdma=monitor.rdma,
        remote_write=tuple(targets),
        queue_samples=vm.queue_samples if vm else agent_config.DEFAULT_QUEUE_SAMPLES,
        spool=agent_config.SpoolConfig(path=SPOOL_MOUNT if spool else None,
                                       max_bytes=vm.spool_max_bytes if vm else agent_config.DEFAULT_SPOOL_BYTES),
        http_listen=f"0.0.0.0:{monitor.port}",
        http_auth=agent_config.HttpAuth(**metricsauth.agent_settings(monitor.metrics)),
        max_push_age=float(vm.max_push_age) if vm else agent_config.DEFAULT_MAX_PUSH_AGE,
    )


def agent_yaml(monitor: Monitor) -> str:
    return yaml.safe_dump(agent_config.to_dict(agent_config_of(monitor)), sort_keys=False)


def configmap(monitor: Monitor) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(monitor),
            "data": {CONFIG_FILE: agent_yaml(monitor)}}


def serviceaccount(monitor: Monitor) -> dict[str, Any]:
    # No token by default: only the agent pods, which say so in their spec, get one.
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(monitor),
            "automountServiceAccountToken": False}


RBAC_API = "rbac.authorization.k8s.io"


def role(monitor: Monitor) -> dict[str, Any]:
    """The agents' only permission: write the AgentReady condition on their own pod's status.

    Only `patch` on `pods/status` in the monitor's namespace. It cannot be narrowed to the agents'
    own pods with resourceNames: the DaemonSet controller generates pod names (xtrace-NAME-x7k2p)
    only when it creates the pods. The agent patches nothing but its own pod (POD_NAME from the
    downward API); docs/operator.md shows an admission policy that enforces it.
    """
    return {"apiVersion": f"{RBAC_API}/v1", "kind": "Role", "metadata": _metadata(monitor),
            "rules": [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]}


def rolebinding(monitor: Monitor) -> dict[str, Any]:
    return {"apiVersion": f"{RBAC_API}/v1", "kind": "RoleBinding", "metadata": _metadata(monitor),
            "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": child_name(monitor)},
            "subjects": [{"kind": "ServiceAccount", "name": child_name(monitor), "namespace": monitor.namespace}]}


def config_hash(monitor: Monitor) -> str:
    """What rolls the agents: the config file plus everything mounted beside it (secret refs)."""
    vm = monitor.victoria_metrics
    mounts = (_secret_volumes(monitor) if vm else []) + metricsauth.volumes(monitor.metrics)[0]
    blob = json.dumps({"config": agent_yaml(monitor), "secrets": mounts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _secret_volumes(monitor: Monitor) -> list[dict[str, Any]]:
    vm = monitor.victoria_metrics
    if vm is None:
        return []
    out = []
    if vm.basic is not None:
        keys = [vm.basic.password_key] + ([] if vm.basic.username else [vm.basic.username_key])
        out.append(("basic", vm.basic.secret, keys))
    if vm.bearer is not None:
        out.append(("bearer", vm.bearer.name, [vm.bearer.key]))
    if vm.ca is not None:
        out.append(("ca", vm.ca.name, [vm.ca.key]))
    return [{"name": f"secret-{kind}",
             "secret": {"secretName": secret, "defaultMode": 0o400,
                        "items": [{"key": k, "path": k} for k in dict.fromkeys(keys)]}}
            for kind, secret, keys in out]


def _host(name: str, path: str, kind: str = "Directory") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _storage(monitor: Monitor) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent's volumes and where its container mounts them."""
    volumes = [
        {"name": "config", "configMap": {"name": child_name(monitor)}},
        _host("host-sys", "/sys"),
        _host("bpffs", "/sys/fs/bpf"),
        # The root filesystem is read-only; BCC and Python still need a scratch directory.
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        *_secret_volumes(monitor),
        *metricsauth.volumes(monitor.metrics)[0],
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_PATH, "readOnly": True},
        {"name": "host-sys", "mountPath": HOST_SYS, "readOnly": True},
        {"name": "bpffs", "mountPath": "/sys/fs/bpf", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *({"name": v["name"], "mountPath": _secret_dir(v["name"].removeprefix("secret-")), "readOnly": True}
          for v in _secret_volumes(monitor)),
        *metricsauth.volumes(monitor.metrics)[1],
    ]
    if monitor.host_kernel_headers:
        # The image carries kernel headers of its own; these are for hosts whose headers match the
        # running kernel more closely. BCC resolves /lib/modules/$(uname -r)/build -> /usr/src/...,
        # so both are mounted at the same paths. Type Directory: a node without them keeps the
        # pod from starting, which is why this is not the default (hostPath has no "optional").
        volumes += [_host("lib-modules", "/lib/modules"), _host("usr-src", "/usr/src")]
        mounts += [{"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
                   {"name": "usr-src", "mountPath": "/usr/src", "readOnly": True}]
    if monitor.rdma.pod_attribution:
        # The kubelet's pod-resources API: read-only, and it tells which pods hold which devices on
        # this node (README "Pod attribution"). Type Directory: without a kubelet there, the pod waits.
        volumes.append(_host("pod-resources", POD_RESOURCES_DIR))
        mounts.append({"name": "pod-resources", "mountPath": POD_RESOURCES_DIR, "readOnly": True})
    spool = spool_host_path(monitor)
    if spool:
        volumes.append(_host("spool", spool, "DirectoryOrCreate"))
        mounts.append({"name": "spool", "mountPath": SPOOL_MOUNT})
    return volumes, mounts


def _security(monitor: Monitor) -> dict[str, Any]:
    if monitor.privileged:
        security: dict[str, Any] = {"privileged": True}
    else:
        security = {"privileged": False, "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)}}
    security["readOnlyRootFilesystem"] = True
    return security


def _container(monitor: Monitor, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    # with metrics.auth the port speaks TLS only; the kubelet does not verify a probe's certificate
    scheme = "HTTPS" if monitor.metrics.secure else "HTTP"

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": monitor.port, "scheme": scheme},
                "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}

    return {
        "name": "agent",
        "image": monitor.image,
        "imagePullPolicy": monitor.image_pull_policy,
        "args": ["--config", f"{CONFIG_PATH}/{CONFIG_FILE}"],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            # Where the agent writes its readiness reason (xtrace.io/AgentReady): its own pod.
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # the generated certificate names the pod's (the node's) address
            *([{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
              if monitor.metrics.secure and not monitor.metrics.tls_secret else []),
        ],
        "ports": [{"name": "metrics", "containerPort": monitor.port, "protocol": "TCP"}],
        "resources": monitor.resources,
        "securityContext": _security(monitor),
        "volumeMounts": mounts,
        # BCC compiles the program at start-up (several seconds): liveness waits for it.
        "startupProbe": probe("/healthz", 5, 24),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_spec(monitor: Monitor) -> dict[str, Any]:
    volumes, mounts = _storage(monitor)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": child_name(monitor),
        # The token lets the agent patch its pod's status (and nothing else: see role()). It is the
        # kubelet-rotated projected token; the agent re-reads it on every write.
        # No readinessGates on AgentReady: the probe on /readyz already says the same thing, and a
        # gate would tie readiness to the API server (an agent that cannot write its condition
        # would stay unready, or stuck at its last value, while it monitors fine).
        "automountServiceAccountToken": True,
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        # The agent detaches XDP and flushes its queue on SIGTERM; this bounds how long it may take.
        "terminationGracePeriodSeconds": monitor.termination_grace_period,
        "containers": [_container(monitor, mounts)],
        "volumes": volumes,
    }
    if monitor.node_selector:
        pod_spec["nodeSelector"] = dict(monitor.node_selector)
    if monitor.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in monitor.tolerations]
    if monitor.priority_class_name:
        pod_spec["priorityClassName"] = monitor.priority_class_name
    if monitor.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in monitor.image_pull_secrets]
    return pod_spec


def daemonset(monitor: Monitor, hash_: str | None = None) -> dict[str, Any]:
    """The agent DaemonSet: one pod per selected node, on the host network, rolled by config hash."""
    hash_ = hash_ or config_hash(monitor)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {**_metadata(monitor), "annotations": {HASH_ANNOTATION: hash_}},
        "spec": {
            "selector": {"matchLabels": selector_labels(monitor)},
            # One node at a time by default behaviour would take hours on 1000 nodes; 10% keeps
            # most of the fleet observed during a rollout.
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                "metadata": {"labels": labels(monitor), "annotations": {HASH_ANNOTATION: hash_}},
                "spec": _pod_spec(monitor),
            },
        },
    }


SCRAPE_API = {"VMServiceScrape": "operator.victoriametrics.com/v1beta1", "ServiceMonitor": "monitoring.coreos.com/v1"}


def service(monitor: Monitor) -> dict[str, Any]:
    """A headless Service over the agent pods: one endpoint per node's agent, for a scraper to find."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(monitor),
            "spec": {"clusterIP": "None", "selector": selector_labels(monitor),
                     "ports": [{"name": "metrics", "port": monitor.port, "targetPort": "metrics", "protocol": "TCP"}]}}


def scrape(monitor: Monitor) -> dict[str, Any]:
    """The VMServiceScrape or ServiceMonitor for the Service above: /metrics of every agent, labelled by node."""
    assert monitor.scrape is not None and monitor.scrape.kind in SCRAPE_API
    endpoint = {"port": "metrics", "path": "/metrics", "interval": monitor.scrape.interval,
                # the agents' self-metrics carry no node label of their own: the pod's node is the one
                "relabelings" if monitor.scrape.kind == "ServiceMonitor" else "relabelConfigs": [
                    {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
                # metrics.auth: https, the scraper's own token, the certificate's trust
                **metricsauth.scrape_endpoint(monitor.metrics, child_name(monitor), monitor.namespace)}
    return {"apiVersion": SCRAPE_API[monitor.scrape.kind], "kind": monitor.scrape.kind, "metadata": _metadata(monitor),
            "spec": {"selector": {"matchLabels": selector_labels(monitor)}, "endpoints": [endpoint]}}


def objects(monitor: Monitor) -> list[dict[str, Any]]:
    """Every object the operator creates for a monitor, in apply order (permissions before pods)."""
    objs = [serviceaccount(monitor), role(monitor), rolebinding(monitor), configmap(monitor), daemonset(monitor)]
    if monitor.scrape is not None:
        objs.append(service(monitor))
        if monitor.scrape.kind != "Service":
            objs.append(scrape(monitor))
    return objs


def scrape_leftovers(monitor: Monitor) -> list[tuple[str, str]]:
    """(apiVersion, kind) of the scrape objects a monitor no longer asks for, to delete."""
    wanted = set() if monitor.scrape is None else {"Service", monitor.scrape.kind}
    return [(api, kind) for kind, api in [("Service", "v1"), *SCRAPE_API.items()] if kind not in wanted]
