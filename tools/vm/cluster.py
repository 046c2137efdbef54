"""A local VictoriaMetrics cluster on 127.0.0.1: `make vm-cluster` / `make vm-cluster-down`.

    cluster.py up     build the cluster binaries if missing (tools/vm/build.sh cluster), start three
                      vmstorage, one vminsert (-replicationFactor=2) and one vmselect (replicas
                      deduplicated with -dedup.minScrapeInterval=1ms), wait until all are healthy,
                      write .vmcluster/urls.json:
                      {"insert": URL, "select": URL, "storage": [{"pid", "dir", "http"}, ...]}
    cluster.py down   stop what urls.json lists and remove the data

Ports come from VM_CLUSTER_PORT (default 18480) upwards: vminsert, vmselect, then per vmstorage
its http, vminsert and vmselect ports. Any failure (a port in use, a failed build, a component
that does not become healthy): one line on stderr, exit 1, nothing left running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import localhost  # noqa: E402  (tools/localhost.py, shared with tools/cluster)

REPO = os.path.dirname(os.path.dirname(HERE))
STATE = os.path.join(REPO, ".vmcluster")
URLS = os.path.join(STATE, "urls.json")
STORAGE_NODES = 3


class Failure(Exception):
    pass


def _build() -> str:
    done = subprocess.run(["bash", os.path.join(HERE, "build.sh"), "cluster"], stdout=subprocess.PIPE, stderr=None,
                          text=True)
    if done.returncode != 0:
        raise Failure("")  # build.sh printed its one line
    return done.stdout.strip()


def up() -> None:
    if os.path.exists(URLS):
        raise Failure(f"a cluster is already up ({URLS}): run make vm-cluster-down first")
    base = int(os.environ.get("VM_CLUSTER_PORT", "18480"))
    ports = list(range(base, base + 2 + 3 * STORAGE_NODES))
    busy = [p for p in ports if not localhost.port_free(p)]
    if busy:
        raise Failure(f"port {busy[0]} on 127.0.0.1 is in use: stop what holds it or set VM_CLUSTER_PORT")
    bin_dir = _build()
    os.makedirs(STATE, exist_ok=True)
    started: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(STATE, f"{name}.log"), "ab")
        proc = subprocess.Popen([os.path.join(bin_dir, name.split("-")[0]), *args, "-loggerLevel=WARN"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        started.append(proc)
        return proc

    try:
        storage, inserts, selects = [], [], []
        for i in range(STORAGE_NODES):
            http, ins, sel = ports[2 + 3 * i: 5 + 3 * i]
            data = os.path.join(STATE, f"vmstorage-{i}")
            proc = spawn(f"vmstorage-{i}", f"-httpListenAddr=127.0.0.1:{http}", f"-vminsertAddr=127.0.0.1:{ins}",
                         f"-vmselectAddr=127.0.0.1:{sel}", f"-storageDataPath={data}", "-retentionPeriod=100y")
            storage.append({"pid": proc.pid, "dir": data, "http": f"http://127.0.0.1:{http}"})
            inserts.append(f"127.0.0.1:{ins}")
            selects.append(f"127.0.0.1:{sel}")
        insert = f"http://127.0.0.1:{ports[0]}"
        select = f"http://127.0.0.1:{ports[1]}"
        spawn("vminsert", f"-httpListenAddr=127.0.0.1:{ports[0]}", f"-storageNode={','.join(inserts)}",
              "-replicationFactor=2")
        spawn("vmselect", f"-httpListenAddr=127.0.0.1:{ports[1]}", f"-storageNode={','.join(selects)}",
              "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=0s")
        urls = [s["http"] for s in storage] + [insert, select]
        deadline = time.monotonic() + 60
        while not all(localhost.http_ok(u + "/health", timeout=1) for u in urls):
            dead = [p for p in started if p.poll() is not None]
            if dead:
                raise Failure(f"{os.path.basename(dead[0].args[0])} exited with {dead[0].returncode} "
                              f"(see {STATE}/*.log)")
            if time.monotonic() > deadline:
                raise Failure(f"the cluster was not healthy after 60 s (see {STATE}/*.log)")
            time.sleep(0.2)
        state = {"insert": insert, "select": select, "storage": storage,
                 "pids": [p.pid for p in started]}
        with open(URLS + ".tmp", "w") as f:
            json.dump(state, f, indent=2)
        os.replace(URLS + ".tmp", URLS)
    except BaseException:
        localhost.stop([p.pid for p in started])
        shutil.rmtree(STATE, ignore_errors=True)
        raise
    print(f"vm-cluster up: insert {insert}/insert/<tenant>/prometheus, select {select}/select/<tenant>/prometheus")


def down() -> None:
    try:
        with open(URLS) as f:
            state = json.load(f)
    except FileNotFoundError:
        shutil.rmtree(STATE, ignore_errors=True)
        return
    except ValueError:
        raise Failure(f"{URLS} is not valid JSON: stop the processes by hand and remove {STATE}") from None
    localhost.stop(state.get("pids", []))
    shutil.rmtree(STATE, ignore_errors=True)
    print("vm-cluster down")


def main(argv: list[str]) -> int:
    if argv not in (["up"], ["down"]):
        print("usage: cluster.py up|down", file=sys.stderr)
        return 2
    try:
        up() if argv == ["up"] else down()
    except Failure as e:
        if str(e):
            print(f"make vm-cluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
