"""A local VictoriaMetrics cluster on 127.0.0.1: `make vm-cluster` / `make vm-cluster-down`, and the tests'.

    cluster.py up    [--state DIR] [--port-base N|auto] [--json]
                     build the cluster binaries if missing (tools/vm/build.sh cluster), start three
                     vmstorage, one vminsert and one vmselect, wait until all are healthy, write
                     DIR/cluster.json (urls, every component's argv, pid, ports, log)
    cluster.py down  [--state DIR]             stop what cluster.json lists, remove DIR
    cluster.py stop  NAME [--kill] [--state DIR]  stop one component (SIGTERM, or SIGKILL with --kill)
    cluster.py start NAME [--state DIR]        start it again: same ports, same data; back once healthy

NAME is vminsert, vmselect or vmstorage-0..2. vminsert writes every sample to two distinct vmstorage
(-replicationFactor=2); vmselect runs with -replicationFactor=2 too, so that with one vmstorage down it
answers from the other replica instead of 503 (partial), and with -dedup.minScrapeInterval=1ms, so the
two replicas and a block an agent resent count once (vmstorage deduplicates the same way when it merges).

DIR defaults to .vmcluster in the checkout (XTRACE_VM_CLUSTER_STATE); ports run from the port base
(VM_CLUSTER_PORT, default 18480) upwards: vminsert, vmselect, then per vmstorage its http, vminsert and
vmselect ports. Any failure (a port in use, a failed build, a component that does not become healthy):
one line on stderr, exit 1, nothing left running. Standard library only (runs before any virtualenv).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import localhost  # noqa: E402  (tools/localhost.py, shared with tools/cluster)

REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_STATE = os.path.join(REPO, ".vmcluster")
DEFAULT_PORT_BASE = 18480
STORAGE_NODES = 3
PORTS = 2 + 3 * STORAGE_NODES
REPLICATION = "-replicationFactor=2"
DEDUP = "-dedup.minScrapeInterval=1ms"


class Failure(Exception):
    """One line for the user: what failed and what to do."""


def _build() -> str:
    done = subprocess.run(["bash", os.path.join(HERE, "build.sh"), "cluster"], stdout=subprocess.PIPE, stderr=None,
                          text=True)
    if done.returncode != 0:
        raise Failure("")  # build.sh printed its one line
    return done.stdout.strip()


def components(bin_dir: str, state: str, base: int) -> dict[str, dict]:
    """Every process of the cluster: {name: {"argv", "http"}} in start order (storage first)."""
    out: dict[str, dict] = {}
    inserts, selects = [], []
    for i in range(STORAGE_NODES):
        http, ins, sel = (base + 2 + 3 * i + k for k in range(3))
        out[f"vmstorage-{i}"] = {"http": f"http://127.0.0.1:{http}", "argv": [
            os.path.join(bin_dir, "vmstorage"), f"-httpListenAddr=127.0.0.1:{http}",
            f"-vminsertAddr=127.0.0.1:{ins}", f"-vmselectAddr=127.0.0.1:{sel}",
            f"-storageDataPath={os.path.join(state, f'vmstorage-{i}')}", "-retentionPeriod=100y", DEDUP]}
        inserts.append(f"127.0.0.1:{ins}")
        selects.append(f"127.0.0.1:{sel}")
    out["vminsert"] = {"http": f"http://127.0.0.1:{base}", "argv": [
        os.path.join(bin_dir, "vminsert"), f"-httpListenAddr=127.0.0.1:{base}",
        f"-storageNode={','.join(inserts)}", REPLICATION]}
    # latencyOffset 0s: a sample is queryable at once; no result cache, so a repeated query measures the work
    out["vmselect"] = {"http": f"http://127.0.0.1:{base + 1}", "argv": [
        os.path.join(bin_dir, "vmselect"), f"-httpListenAddr=127.0.0.1:{base + 1}",
        f"-storageNode={','.join(selects)}", REPLICATION, DEDUP, "-search.latencyOffset=0s",
        "-search.disableCache"]}
    for c in out.values():
        c["argv"].append("-loggerLevel=WARN")
    return out


def _spawn(state: str, name: str, comp: dict) -> None:
    comp["log"] = os.path.join(state, f"{name}.log")
    with open(comp["log"], "ab") as log:
        proc = subprocess.Popen(comp["argv"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    comp["pid"] = proc.pid
    comp["proc"] = proc  # only while this tool runs: poll() tells an exit from a slow start


def _reachable(vminsert: dict) -> set[str]:
    """The vmstorage addresses (their -vminsertAddr) vminsert has a connection to."""
    try:
        with urllib.request.urlopen(vminsert["http"] + "/metrics", timeout=2) as r:
            lines = r.read().decode().splitlines()
    except OSError:
        return set()
    return {line.split('addr="', 1)[1].split('"', 1)[0] for line in lines
            if line.startswith("vm_rpc_vmstorage_is_reachable{") and line.endswith(" 1")}


def _ready(all_comps: dict[str, dict], name: str) -> bool:
    """Healthy, and connected: /health answers as soon as the port listens, but vminsert and vmselect
    need their vmstorage connections (until then vmselect answers 503, vminsert reroutes), and a
    restarted vmstorage is only back once vminsert writes to it again."""
    comp = all_comps[name]
    if not localhost.http_ok(comp["http"] + "/health", timeout=1):
        return False
    running = {n: c for n, c in all_comps.items() if c.get("pid")}
    storage = {next(a.split("=", 1)[1] for a in c["argv"] if a.startswith("-vminsertAddr=")): n
               for n, c in running.items() if n.startswith("vmstorage-")}
    if name == "vminsert":
        return set(storage) <= _reachable(comp)
    if name == "vmselect":
        return localhost.http_ok(comp["http"] + "/select/0/prometheus/api/v1/labels", timeout=5)
    if "vminsert" in running:
        return any(storage.get(addr) == name for addr in _reachable(running["vminsert"]))
    return True


def _wait_healthy(state: str, all_comps: dict[str, dict], names: list[str], timeout: float = 60) -> None:
    comps = {n: all_comps[n] for n in names}
    deadline = time.monotonic() + timeout
    while not all(_ready(all_comps, n) for n in names):
        for name, c in comps.items():
            if c["proc"].poll() is not None:
                raise Failure(f"{name} exited with {c['proc'].returncode} (see {c['log']})")
        if time.monotonic() > deadline:
            raise Failure(f"the cluster was not healthy after {timeout:.0f} s (see {state}/*.log)")
        time.sleep(0.2)


def _save(state: str, info: dict) -> None:
    path = os.path.join(state, "cluster.json")
    plain = {**info, "components": {n: {k: v for k, v in c.items() if k != "proc"}
                                    for n, c in info["components"].items()}}
    with open(path + ".tmp", "w") as f:
        json.dump(plain, f, indent=2)
    os.replace(path + ".tmp", path)


def _load(state: str) -> dict | None:
    try:
        with open(os.path.join(state, "cluster.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        raise Failure(f"{state}/cluster.json is not valid JSON: stop the processes by hand and remove {state}") \
            from None


def up(state: str, base: int) -> dict:
    if os.path.exists(os.path.join(state, "cluster.json")):
        raise Failure(f"a cluster is already up ({state}): run make vm-cluster-down first")
    busy = [p for p in range(base, base + PORTS) if not localhost.port_free(p)]
    if busy:
        raise Failure(f"port {busy[0]} on 127.0.0.1 is in use: stop what holds it or set VM_CLUSTER_PORT")
    bin_dir = _build()
    os.makedirs(state, exist_ok=True)
    comps = components(bin_dir, state, base)
    try:
        for name, comp in comps.items():
            _spawn(state, name, comp)
        _wait_healthy(state, comps, list(comps))
        version = subprocess.run([os.path.join(bin_dir, "vmstorage"), "-version"], capture_output=True,
                                 text=True).stdout.strip()
        info = {"version": version, "insert": comps["vminsert"]["http"], "select": comps["vmselect"]["http"],
                "storage": [n for n in comps if n.startswith("vmstorage-")], "components": comps}
        _save(state, info)
    except BaseException:
        localhost.stop([c["pid"] for c in comps.values() if "pid" in c])
        shutil.rmtree(state, ignore_errors=True)
        raise
    return info


def down(state: str) -> bool:
    info = _load(state)
    if info:
        # vminsert and vmselect first, so that neither logs the storage nodes' going away
        localhost.stop([c["pid"] for c in reversed(list(info["components"].values())) if c.get("pid")])
    existed = os.path.exists(state)
    shutil.rmtree(state, ignore_errors=True)
    return bool(info) or existed


def _component(state: str, name: str) -> tuple[dict, dict]:
    info = _load(state)
    if not info:
        raise Failure(f"no cluster is up ({state}): run make vm-cluster first")
    if name not in info["components"]:
        raise Failure(f"no component {name!r}: one of {', '.join(info['components'])}")
    return info, info["components"][name]


def stop_one(state: str, name: str, kill: bool) -> None:
    info, comp = _component(state, name)
    if comp.get("pid"):
        localhost.stop([comp["pid"]], grace=0 if kill else 10)
    comp["pid"] = None
    _save(state, info)


def start_one(state: str, name: str) -> None:
    info, comp = _component(state, name)
    if comp.get("pid") and localhost.alive(comp["pid"]):
        raise Failure(f"{name} is running (pid {comp['pid']})")
    _spawn(state, name, comp)
    try:
        _wait_healthy(state, info["components"], [name])
    except Failure:
        localhost.stop([comp["pid"]])
        comp["pid"] = None
        raise
    finally:
        _save(state, info)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        print(f"cluster.py: {message} (usage: cluster.py up|down|stop NAME|start NAME [--state DIR] "
              "[--port-base N|auto] [--kill] [--json])", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str]) -> int:
    p = _Parser(prog="cluster.py", description="A local VictoriaMetrics cluster on 127.0.0.1.")
    p.add_argument("command", choices=["up", "down", "stop", "start"])
    p.add_argument("name", nargs="?", help="the component to stop or start (vminsert, vmselect, vmstorage-N)")
    p.add_argument("--state", default=os.environ.get("XTRACE_VM_CLUSTER_STATE", DEFAULT_STATE))
    p.add_argument("--port-base", default=os.environ.get("VM_CLUSTER_PORT", str(DEFAULT_PORT_BASE)),
                   help=f"first of {PORTS} ports on 127.0.0.1, or `auto` for a free block")
    p.add_argument("--kill", action="store_true", help="stop with SIGKILL")
    p.add_argument("--json", action="store_true", help="print cluster.json on stdout after `up`")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if (args.name is None) != (args.command in ("up", "down")):
        print("cluster.py: stop and start take a component name, up and down none", file=sys.stderr)
        return 2
    if args.port_base == "auto":
        args.port_base = str(localhost.free_block(PORTS))
    if not args.port_base.isdigit() or not 1024 <= int(args.port_base) <= 65535 - PORTS:
        print("cluster.py: the port base must be `auto` or a port between 1024 and 65000", file=sys.stderr)
        return 2
    state = os.path.abspath(args.state)
    try:
        if args.command == "up":
            info = up(state, int(args.port_base))
            if args.json:
                print(json.dumps(_load(state)))
            else:
                print(f"vm-cluster up ({info['version']}): insert {info['insert']}/insert/<tenant>/prometheus, "
                      f"select {info['select']}/select/<tenant>/prometheus")
        elif args.command == "down":
            if down(state) and not args.json:
                print("vm-cluster down")
        elif args.command == "stop":
            stop_one(state, args.name, args.kill)
        else:
            start_one(state, args.name)
    except Failure as e:
        if str(e):
            print(f"make vm-cluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
