"""The `xtrace-operator` command: run the operator, or render a monitor's objects without a cluster.

    xtrace-operator [run] [--namespace NS]... [--liveness URL] [--connect-timeout S] [--verbose]
    xtrace-operator render -f monitor.yaml [-f more.yaml]   (- reads stdin)

`render` prints, as one YAML stream, every object the operator would create for each
XTraceMonitor in the files (owner references aside: they need the live object's uid).
Bad input is one line on stderr and exit code 2.

`run` first waits (bounded) for the Kubernetes API to answer: without a configuration or an
answer it exits 1 with one line, and the pod's restart backoff takes over. Left to itself, kopf
would retry for about a minute and then die in a handful of tracebacks.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import yaml

from xtrace_operator import model, render


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2; argparse would print the whole usage first
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xtrace-operator", description="XTrace operator for XTraceMonitor objects.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run the operator (the default command)")
    for target in (p, run):
        target.add_argument("-n", "--namespace", action="append", default=None, metavar="NS",
                            help="watch only this namespace (repeatable; default: all namespaces)")
        target.add_argument("--liveness", default=None, metavar="URL",
                            help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
        target.add_argument("--connect-timeout", type=_seconds, default=None, metavar="SECONDS",
                            help="how long to wait at startup for the Kubernetes API (default 30)")
        target.add_argument("-v", "--verbose", action="store_true", default=None, help="log handler details")
    rend = sub.add_parser("render", help="print every object the operator would create for a monitor")
    rend.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                      help="XTraceMonitor YAML (repeatable; - for stdin)")
    return p


def _load(path: str) -> list[Any]:
    try:
        if path == "-":
            return [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
        with open(path, encoding="utf-8") as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as e:
        raise model.InvalidSpec(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise model.InvalidSpec(f"{path} is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None


class _Dumper(yaml.SafeDumper):
    """Prints multi-line strings (the agent config) as literal blocks, readable in a review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_files(paths: list[str]) -> str:
    """The YAML stream `render` prints; raises InvalidSpec naming the file and the problem."""
    out: list[dict[str, Any]] = []
    for path in paths:
        docs = _load(path)
        if not docs:
            raise model.InvalidSpec(f"{path}: no XTraceMonitor found")
        for doc in docs:
            try:
                monitor = model.from_body(doc)
            except model.InvalidSpec as e:
                raise model.InvalidSpec(f"{path}: {e}") from None
            out.extend(render.objects(monitor))
    return yaml.dump_all(out, Dumper=_Dumper, sort_keys=False)


def _why(error: BaseException) -> str:
    """The short reason behind a urllib3 connection error (it nests the OSError two levels down)."""
    reason = getattr(error, "reason", None) or error
    cause = reason.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(reason).split(": ", 1)[-1]


def _reach_api(timeout: float) -> str | None:
    """None once the Kubernetes API answers (any HTTP status), else the one line explaining why not.

    The configuration is the one kopf's own login and the handlers' client use: in-cluster,
    then KUBECONFIG / ~/.kube/config.
    """
    import kubernetes
    import urllib3

    from xtrace_operator import kube
    try:
        kube.configure()
    except (kubernetes.config.ConfigException, OSError, yaml.YAMLError) as e:
        return f"no Kubernetes configuration (not in a cluster, no usable kubeconfig): {e}"
    cfg = kubernetes.client.Configuration.get_default_copy()
    cfg.retries = 0  # the loop below is the retry, bounded by the deadline
    version = kubernetes.client.VersionApi(kubernetes.client.ApiClient(cfg))
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            version.get_code(_request_timeout=(max(0.5, min(5.0, deadline - time.monotonic())), 10))
            return None
        except kubernetes.client.ApiException:
            return None  # it answered: authentication and permissions are kopf's business
        except (urllib3.exceptions.HTTPError, OSError) as e:
            why = _why(e)
        if time.monotonic() >= deadline:
            return f"cannot reach the Kubernetes API at {cfg.host}: {why} (gave up after {timeout:g} s)"
        if not warned:
            print(f"xtrace-operator: waiting up to {timeout:g} s for the Kubernetes API at {cfg.host} ({why})",
                  file=sys.stderr, flush=True)
            warned = True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _run(args: argparse.Namespace) -> int:
    # kopf installs its own SIGTERM handler only once its tasks run, after the first handlers may
    # already have started: a SIGTERM before that (a pod deleted during start-up) must still stop
    # the process cleanly (main() turns the KeyboardInterrupt into exit 0), not kill it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    problem = _reach_api(30.0 if args.connect_timeout is None else args.connect_timeout)
    if problem:
        print(f"xtrace-operator: {problem}", file=sys.stderr)
        return 1

    import kopf

    import xtrace_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    namespaces = args.namespace or ()
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
             liveness_endpoint=args.liveness)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "render":
        try:
            sys.stdout.write(render_files(args.filename))
        except model.InvalidSpec as e:
            print(f"xtrace-operator: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
