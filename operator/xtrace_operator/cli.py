"""The `xtrace-operator` command: run the operator, or render a monitor's objects without a cluster.

    xtrace-operator [run] [--namespace NS]... [--liveness URL] [--verbose]
    xtrace-operator render -f monitor.yaml [-f more.yaml]   (- reads stdin)

`render` prints, as one YAML stream, every object the operator would create for each
XTraceMonitor in the files (owner references aside: they need the live object's uid).
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from xtrace_operator import model, render


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xtrace-operator", description="XTrace operator for XTraceMonitor objects.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the operator (the default command)")
    for target in (p, run):
        target.add_argument("-n", "--namespace", action="append", default=None, metavar="NS",
                            help="watch only this namespace (repeatable; default: all namespaces)")
        target.add_argument("--liveness", default=None, metavar="URL",
                            help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
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


def _run(args: argparse.Namespace) -> int:
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
