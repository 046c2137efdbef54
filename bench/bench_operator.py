"""The operator at scale on a real control plane: 500 fake nodes, 20 monitors with node selectors.

tools/cluster/cluster.py starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
with 500 nodes, the API server auditing every request of the operator's ServiceAccount. The operator
runs as `xtrace-operator run` with that ServiceAccount's token (as in the cluster). Twenty monitors,
each selecting its own group of 25 nodes, are created at once; measured:

- convergence: from the moment the last agent pod is Ready (the DaemonSet controller, scheduler and
  kwok's work, not ours) to every monitor's status showing READY = DESIRED = 25 (target <= 30 s);
- the operator's peak RSS (VmHWM; target <= 150 MiB);
- the operator's API requests, from the audit log: per monitor reconciled, and by verb and resource.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "cluster"))
import cluster  # noqa: E402  (tools/cluster/cluster.py: the kubeconfig it writes, with a token instead)

NODES, MONITORS = 500, 20
PER_GROUP = NODES // MONITORS
OPERATOR_USER = "system:serviceaccount:xtrace-system:xtrace-operator"
TARGET_CONVERGE_S, TARGET_RSS_MIB = 30.0, 150.0


def main() -> int:
    state = pathlib.Path(tempfile.mkdtemp(prefix="xtrace-bench-cluster-"))
    tool = [sys.executable, str(ROOT / "tools" / "cluster" / "cluster.py")]
    t = time.monotonic()
    proc = subprocess.run([*tool, "up", "--state", str(state), "--port-base", "auto",
                           "--nodes", str(NODES), "--audit", OPERATOR_USER, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
        return 1
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    started = time.monotonic() - t
    operator = None
    try:
        def kubectl(*args: str, input: str | None = None) -> str:
            p = subprocess.run([info["kubectl"], "--kubeconfig", info["kubeconfig"], *args], input=input,
                               capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(args[:3])}: {p.stderr.strip()}")
            return p.stdout

        names = [n["name"] for n in info["nodes"]]
        for g in range(MONITORS):
            kubectl("label", "nodes", *names[g * PER_GROUP:(g + 1) * PER_GROUP], f"bench-group=g{g}")
        kubectl("apply", "-k", str(ROOT / "deploy" / "manifests"))
        kubectl("wait", "--for=condition=Established", "crd/xtracemonitors.xtrace.io", "--timeout=60s")
        kubectl("create", "namespace", "bench")
        token = kubectl("create", "token", "xtrace-operator", "-n", "xtrace-system", "--duration=2h").strip()
        ca = pathlib.Path(info["kubeconfig"]).parent / "pki" / "ca.crt"
        kc = state / "operator.kubeconfig"
        kc.write_text(json.dumps(cluster.kubeconfig(info["server"], ca, token=token, user="xtrace-operator")))
        log = open(state / "operator.log", "wb")
        operator = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "xtrace-operator"), "run"],
                                    env={**os.environ, "KUBECONFIG": str(kc)}, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(3)  # the operator's start-up (imports, login, initial listing) is not what is measured
        audit = state / "logs" / "audit.log"
        audit_start = audit.stat().st_size if audit.exists() else 0
        monitors = [{"apiVersion": "xtrace.io/v1alpha1", "kind": "XTraceMonitor",
                     "metadata": {"name": f"m{g}", "namespace": "bench"},
                     "spec": {"mode": "xdp", "interfaces": [f"ib{g}"], "nodeSelector": {"bench-group": f"g{g}"}}}
                    for g in range(MONITORS)]
        t0 = time.monotonic()
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": monitors}))
        pods_ready_at = converged_at = None
        while time.monotonic() - t0 < 600 and converged_at is None:
            if pods_ready_at is None:
                pods = json.loads(kubectl("get", "pods", "-n", "bench", "-o", "json"))["items"]
                ready = sum(any(c["type"] == "Ready" and c["status"] == "True"
                                for c in p.get("status", {}).get("conditions", [])) for p in pods)
                if ready == NODES:
                    pods_ready_at = time.monotonic()
            mons = json.loads(kubectl("get", "xtm", "-n", "bench", "-o", "json"))["items"]
            done = [m for m in mons if (m.get("status") or {}).get("readyNodes") == PER_GROUP
                    and m["status"].get("desiredNodes") == PER_GROUP]
            if pods_ready_at is not None and len(done) == MONITORS:
                converged_at = time.monotonic()
                break
            time.sleep(0.5)
        if converged_at is None:
            print("did not converge within 600 s", file=sys.stderr)
            return 1
        time.sleep(5)  # a few status flushes after convergence: they must cost nothing
        with open(f"/proc/{operator.pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
        by_kind: collections.Counter = collections.Counter()
        with open(audit) as f:
            f.seek(audit_start)
            for line in f:
                event = json.loads(line)
                if event.get("user", {}).get("username") != OPERATOR_USER:
                    continue
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                by_kind[(event["verb"], resource)] += 1
        total = sum(by_kind.values())
        converge = converged_at - pods_ready_at
        rows = [
            ("control plane start-up, 500 nodes", f"{started:.1f} s", "-", True),
            ("monitors created -> last agent pod Ready", f"{pods_ready_at - t0:.1f} s", "-", True),
            ("last pod Ready -> every status READY=DESIRED", f"{converge:.1f} s", f"<= {TARGET_CONVERGE_S:g} s",
             converge <= TARGET_CONVERGE_S),
            ("operator peak RSS (VmHWM)", f"{hwm:.1f} MiB", f"<= {TARGET_RSS_MIB:g} MiB", hwm <= TARGET_RSS_MIB),
            ("operator API requests per monitor", f"{total / MONITORS:.1f}", "-", True),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{NODES} kwok nodes, {MONITORS} monitors x {PER_GROUP} nodes; the operator's requests from the audit log")
        print(f"{'name':<{width}} | {'measured':>10} | {'target':>10} | ok")
        for name, measured, target, ok in rows:
            print(f"{name:<{width}} | {measured:>10} | {target:>10} | {'yes' if ok else 'NO'}")
        print("requests by verb and resource (all monitors): " +
              ", ".join(f"{verb} {res} {n}" for (verb, res), n in sorted(by_kind.items(), key=lambda kv: -kv[1])))
        return 0 if all(r[3] for r in rows) else 1
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        subprocess.run([*tool, "down", "--state", str(state)], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
