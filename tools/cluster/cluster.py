#!/usr/bin/env python3
"""A real local Kubernetes control plane on 127.0.0.1, for `make cluster` and the test suite.

    cluster.py up   [--state DIR] [--port-base N|auto] [--nodes N] [--audit USER]
                                                                 start; return once every component is healthy
    cluster.py down [--state DIR]                                stop every process `up` started, remove the state

Processes: etcd, kube-apiserver (Node,RBAC authorization, a generated CA and serving certificate, a
ServiceAccount signing key), kube-controller-manager (garbage collector, DaemonSet and ServiceAccount
token controllers among its defaults; node lifecycle off: kwok's nodes never run a kubelet), kube-scheduler,
and kwok, which plays the kubelet for N fake nodes (their pods become Running and Ready; nothing executes
in them). The binaries come from build.sh (built from their Go modules, cached outside the checkout).

`up` writes DIR/kubeconfig (admin), DIR/bin/kubectl and DIR/cluster.json (ports, pids, nodes); with
--audit USER, the API server logs every request of that user (one JSON line each) to DIR/logs/audit.log,
which is how the benchmark counts the operator's requests. Every
failure is one line on stderr and exit 1, with nothing left running; the components' logs stay in
DIR/logs for a failed start. Only the standard library and the `openssl` command are used, so it runs
before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import localhost  # noqa: E402  (tools/localhost.py, shared with tools/vm)

REPO = HERE.parent.parent
DEFAULT_STATE = REPO / ".cluster"
DEFAULT_PORT_BASE = 16440
NODE_LABEL = "xtrace.io/local-node"
SERVICE_CIDR = "10.96.0.0/16"
# Offsets from the port base: one place that says which component listens where.
PORTS = {"apiserver": 3, "etcd": 0, "etcd-peer": 1, "controller-manager": 4, "scheduler": 5, "kwok": 6}


class Failure(Exception):
    """One line for the user: what failed and what to do."""


def _say(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def build() -> Path:
    """The directory holding the pinned binaries (built on first use)."""
    proc = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise Failure("building the control plane's binaries failed (see the lines above)")
    return Path(proc.stdout.strip().splitlines()[-1])


# --- certificates -------------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def _cert(pki: Path, name: str, subject: str, ext: str) -> None:
    """A key and a certificate signed by the local CA, with the given X.509v3 extensions."""
    (pki / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=pki)


def make_pki(pki: Path) -> None:
    if shutil.which("openssl") is None:
        raise Failure("openssl is not installed: apt-get install openssl")
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=xtrace-local-ca", cwd=pki)
    sans = ("IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    _cert(pki, "apiserver", "/CN=kube-apiserver",
          f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    _cert(pki, "admin", "/O=system:masters/CN=xtrace-admin",
          "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n")
    # ServiceAccount tokens: RSA, the algorithm every client library verifies.
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None,
               token: str | None = None, user: str = "admin") -> dict:
    """A kubeconfig with one context; credentials inline, so the file stands alone."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()
    creds = {"token": token} if token else {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "xtrace-local",
        "clusters": [{"name": "xtrace-local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "xtrace-local", "context": {"cluster": "xtrace-local", "user": user}}],
    }


# --- processes ----------------------------------------------------------------------------------

def _start(state: Path, name: str, argv: list[str]) -> int:
    log = open(state / "logs" / f"{name}.log", "ab")
    # A session of its own: the components outlive `make cluster` and ignore the terminal's ^C.
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=state)
    log.close()
    return proc.pid


def _wait(what: str, check, pids: dict[str, int], state: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for name, pid in pids.items():
            if not localhost.alive(pid):
                tail = (state / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise Failure(f"{name} exited while starting: {tail[0] if tail else 'no output'} "
                              f"(log: {state / 'logs' / (name + '.log')})")
        time.sleep(0.2)
    raise Failure(f"{what} did not become healthy within {timeout:.0f} s (logs in {state / 'logs'})")


def _kubectl(state: Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([str(state / "bin" / "kubectl"), "--kubeconfig", str(state / "kubeconfig"), *args],
                          input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"kubectl {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def node_manifest(name: str, index: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages nodes carrying this annotation; nothing else should touch them
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", NODE_LABEL: "true", "xtrace.io/node-index": str(index)},
        },
        "spec": {},
        # kept by kwok: distinct node addresses, as a real cluster has (hostNetwork pods get them)
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(index)},
                                 {"type": "Hostname", "address": name}]},
    }


def node_ip(index: int) -> str:
    return f"10.0.{index // 250}.{index % 250 + 1}"


def _audit_flags(state: Path, user: str | None) -> list[str]:
    if not user:
        return []
    policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
              "omitStages": ["RequestReceived", "ResponseStarted"],  # one line per request, when it ends
              "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}]}
    (state / "audit-policy.json").write_text(json.dumps(policy))
    return [f"--audit-policy-file={state / 'audit-policy.json'}", f"--audit-log-path={state / 'logs' / 'audit.log'}",
            "--audit-log-format=json", "--audit-log-mode=blocking"]


def _check_ports(ports: dict[str, int], port_base: int) -> None:
    for name, port in ports.items():
        if not localhost.port_free(port):
            raise Failure(f"port {port} on 127.0.0.1 ({name}) is in use: stop what holds it, or choose "
                          f"other ports with XTRACE_CLUSTER_PORT_BASE (now {port_base})")


def _prepare(state: Path, bindir: Path, ports: dict[str, int]) -> dict:
    """A fresh state directory: kubectl, the PKI, the admin kubeconfig; the cluster's info, no pids yet."""
    for tool in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"):
        if not os.access(bindir / tool, os.X_OK):
            raise Failure(f"{bindir / tool} is missing: run tools/cluster/build.sh")
    if state.exists():
        shutil.rmtree(state)
    (state / "logs").mkdir(parents=True)
    (state / "bin").mkdir()
    (state / "bin" / "kubectl").symlink_to(bindir / "kubectl")
    pki = state / "pki"
    make_pki(pki)
    server = f"https://127.0.0.1:{ports['apiserver']}"
    admin = kubeconfig(server, pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key")
    (state / "kubeconfig").write_text(json.dumps(admin, indent=1))
    return {"server": server, "kubeconfig": str(state / "kubeconfig"), "kubectl": str(state / "bin" / "kubectl"),
            "ports": ports, "pids": {}, "nodes": [], "bin": str(bindir)}


def _start_storage_and_api(state: Path, bindir: Path, info: dict, audit_user: str | None) -> None:
    """etcd, then kube-apiserver on it; each waited for."""
    ports, pids, pki = info["ports"], info["pids"], state / "pki"
    pids["etcd"] = _start(state, "etcd", [
        str(bindir / "etcd"), "--name=xtrace", f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
        f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
        f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
        f"--initial-cluster=xtrace=http://127.0.0.1:{ports['etcd-peer']}",
        "--unsafe-no-fsync",  # a throwaway test cluster: speed over durability
        "--quota-backend-bytes=2147483648", "--log-level=warn"])
    _save(state, info)
    _wait("etcd", lambda: localhost.http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), pids, state)
    pids["kube-apiserver"] = _start(state, "kube-apiserver", [
        str(bindir / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        # the "kubernetes" Service's endpoints would be 127.0.0.1, which validation refuses
        "--endpoint-reconciler-type=none", *_audit_flags(state, audit_user)])
    _save(state, info)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    _wait("kube-apiserver", lambda: localhost.http_ok(f"{info['server']}/readyz", context=ctx), pids, state)


def _start_controllers(state: Path, bindir: Path, info: dict) -> None:
    """kube-controller-manager, kube-scheduler and kwok (the fake kubelet); each waited for."""
    ports, pids, pki, kc = info["ports"], info["pids"], state / "pki", info["kubeconfig"]
    pids["kube-controller-manager"] = _start(state, "kube-controller-manager", [
        str(bindir / "kube-controller-manager"), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
        f"--secure-port={ports['controller-manager']}", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        "--use-service-account-credentials=false",
        # no kubelet heartbeats reach a real node-lifecycle controller's expectations: kwok keeps
        # the nodes Ready, and taint-based eviction would only add noise
        "--controllers=*,-node-lifecycle-controller",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"])
    pids["kube-scheduler"] = _start(state, "kube-scheduler", [
        str(bindir / "kube-scheduler"), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
        f"--secure-port={ports['scheduler']}", "--leader-elect=false",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"])
    pids["kwok"] = _start(state, "kwok", [
        str(bindir / "kwok"), f"--kubeconfig={kc}", "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--server-address=127.0.0.1:{ports['kwok']}", f"--config={HERE / 'kwok-stages.yaml'}",
        "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1"])
    _save(state, info)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for name, port in (("kube-controller-manager", ports["controller-manager"]),
                       ("kube-scheduler", ports["scheduler"])):
        _wait(name, lambda p=port: localhost.http_ok(f"https://127.0.0.1:{p}/healthz", context=insecure),
              pids, state)
    _wait("kwok", lambda: localhost.http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), pids, state)


def _add_nodes(state: Path, info: dict, nodes: int) -> None:
    """The fake nodes, Ready and schedulable, and the default ServiceAccount new namespaces need."""
    pids = info["pids"]
    manifests = [node_manifest(f"xtrace-node-{i}", i) for i in range(1, nodes + 1)]
    _kubectl(state, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    _wait(f"{nodes} Ready nodes", lambda: _ready_nodes(state) >= nodes, pids, state)
    # The API server taints every new node not-ready; the node-lifecycle controller, which would
    # lift it once the node reports Ready, is off (above), so lift it here, once.
    _kubectl(state, "taint", "nodes", "--all", "node.kubernetes.io/not-ready:NoSchedule-")
    # ServiceAccounts in new namespaces need their token controller and the root CA published
    _wait("the default ServiceAccount", lambda: _has_default_sa(state), pids, state)
    info["nodes"] = [{"name": m["metadata"]["name"], "labels": m["metadata"]["labels"]} for m in manifests]


def _save(state: Path, info: dict) -> None:
    (state / "cluster.json").write_text(json.dumps(info, indent=1))


def up(state: Path, port_base: int, nodes: int, audit_user: str | None = None) -> dict:
    if (state / "cluster.json").exists():
        info = json.loads((state / "cluster.json").read_text())
        if all(localhost.alive(p) for p in info["pids"].values()):
            _say(f"already running (state {state}); `make cluster-down` stops it")
            return info
        down(state, quiet=True)
    ports = {name: port_base + off for name, off in PORTS.items()}
    _check_ports(ports, port_base)
    t0 = time.monotonic()
    info = _prepare(state, build(), ports)
    try:
        _start_storage_and_api(state, Path(info["bin"]), info, audit_user)
        _start_controllers(state, Path(info["bin"]), info)
        _add_nodes(state, info, nodes)
        _save(state, info)
    except BaseException:
        localhost.stop(list(reversed(list(info["pids"].values()))), group=True)
        raise
    _say(f"control plane healthy in {time.monotonic() - t0:.1f} s: {info['server']}")
    return info


def _ready_nodes(state: Path) -> int:
    try:
        items = json.loads(_kubectl(state, "get", "nodes", "-o", "json"))["items"]
    except Failure:
        return 0
    return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
               for n in items)


def _has_default_sa(state: Path) -> bool:
    try:
        _kubectl(state, "get", "serviceaccount", "default", "-n", "default")
        _kubectl(state, "get", "configmap", "kube-root-ca.crt", "-n", "default")
        return True
    except Failure:
        return False


def down(state: Path, quiet: bool = False) -> None:
    info_file = state / "cluster.json"
    if info_file.exists():
        try:
            pids = json.loads(info_file.read_text()).get("pids", {})
            # reverse start order: kwok and the controllers before the API server, etcd last
            localhost.stop(list(reversed(list(pids.values()))), group=True)
        except ValueError:
            pass
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)
        if not quiet:
            _say(f"stopped; removed {state}")
    elif not quiet:
        _say("nothing to stop")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description="A local Kubernetes control plane on 127.0.0.1.")
    p.add_argument("command", choices=["up", "down", "build"])
    p.add_argument("--state", type=Path, default=Path(os.environ.get("XTRACE_CLUSTER_STATE", DEFAULT_STATE)))
    p.add_argument("--port-base", default=os.environ.get("XTRACE_CLUSTER_PORT_BASE", str(DEFAULT_PORT_BASE)),
                   help="first of seven ports on 127.0.0.1, or `auto` for a free block")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--audit", default=None, metavar="USER", help="log every API request of USER to logs/audit.log")
    p.add_argument("--json", action="store_true", help="print cluster.json on stdout after `up`")
    args = p.parse_args(argv)
    if args.port_base == "auto":
        args.port_base = localhost.free_block(len(PORTS))
    elif not args.port_base.isdigit() or not 1024 <= int(args.port_base) <= 65000:
        print("cluster.py: --port-base must be `auto` or a port between 1024 and 65000", file=sys.stderr)
        return 2
    args.port_base = int(args.port_base)
    if not 1 <= args.nodes <= 2000:
        print("cluster.py: --nodes must be between 1 and 2000", file=sys.stderr)
        return 2
    state = args.state.resolve()
    try:
        if args.command == "build":
            print(build())
        elif args.command == "up":
            info = up(state, args.port_base, args.nodes, args.audit)
            if args.json:
                print(json.dumps(info))
            else:
                for n in info["nodes"]:
                    labels = ",".join(f"{k}={v}" for k, v in n["labels"].items() if k.startswith("xtrace.io/"))
                    print(f"node {n['name']}  Ready  {labels}")
                print(f"kubectl: {info['kubectl']}")
                print(f"export KUBECONFIG={info['kubeconfig']}")
        else:
            down(state)
    except Failure as e:
        print(f"make cluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
