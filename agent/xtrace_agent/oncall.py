"""`xtrace`: the on-call command. Asks VictoriaMetrics what XTrace pushed and says it in plain text.

    xtrace [--url URL] [--output text|json] fabric [--node N] [--since 15m]
    xtrace [--url URL] [--output text|json] top [--since 5m] [--limit 10]

`fabric` judges every RDMA port over the window with the same conditions, thresholds and precedence as
the shipped recording rules (xtrace_agent/verdicts.py), worst first, with the numbers behind each verdict;
where vmalert records the rules, the worst verdict recorded in the window is shown too. `top` prints
the top talkers (bytes/s by source and destination, pod names from kube_pod_info where present) and
the RDMA ports by throughput. Exit 2 with one line when the database cannot be reached or holds no
XTrace data for the question; 1 when it answers with an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from xtrace_agent import environ, verdicts

DEFAULT_URL = environ.URL.default
_DURATION = re.compile(r"^\d+[smhd]$")
PORT_LABELS = ("cluster", "node", "device", "port")


class Unreachable(Exception):
    pass


class QueryError(Exception):
    pass


class Client:
    """Instant queries against VictoriaMetrics' Prometheus API (`extra_label` filters every selector)."""

    def __init__(self, url: str, node: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.node = node
        self.timeout = timeout
        self.at = time.time()
        self.queries = 0

    def query(self, expr: str) -> list[tuple[dict, float]]:
        params = [("query", expr), ("time", f"{self.at:.3f}")]
        if self.node:
            params.append(("extra_label", f"node={self.node}"))
        request = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        self.queries += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace").strip().splitlines()
            raise QueryError(f"HTTP {e.code}: {detail[0][:200] if detail else e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(str(getattr(e, "reason", e))) from None
        except ValueError:
            raise QueryError("the answer is not JSON: is this a VictoriaMetrics URL?") from None
        if body.get("status") != "success":
            raise QueryError(body.get("error", "query failed"))
        out = []
        for series in body["data"]["result"]:
            value = float(series["value"][1])
            if value == value:  # NaN: no number
                out.append((series["metric"], value))
        return out


def _key(labels: dict, names=PORT_LABELS) -> tuple:
    return tuple(labels.get(n, "") for n in names)


# --- fabric ------------------------------------------------------------------------------------

def fabric(client: Client, since: str) -> list[dict]:
    ports = {_key(m): {"cluster": m.get("cluster", ""), "node": m.get("node", ""), "device": m.get("device", ""),
                       "port": m.get("port", ""), "verdict": verdicts.HEALTHY, "rank": 0, "worst_recorded": None,
                       "pfc_priorities": [], "evidence": {}}
             for m, _ in client.query(verdicts.ports(since))}
    if not ports:
        return []
    by_rank = {verdicts.rank(v): v for v in verdicts.VERDICTS}
    for m, value in client.query(verdicts.verdict_rank(since)):
        if _key(m) in ports:
            ports[_key(m)].update(rank=int(value), verdict=by_rank.get(int(value), verdicts.HEALTHY))
    for m, value in client.query(f"max_over_time(node_port:xtrace_verdict:rank[{since}])"):
        if _key(m) in ports:
            ports[_key(m)]["worst_recorded"] = by_rank.get(int(value))
    for m, _ in client.query(verdicts.pfc_priorities(since)):
        if _key(m) in ports:
            ports[_key(m)]["pfc_priorities"].append(m.get("priority", ""))
    for name, expr in verdicts.evidence(since).items():
        for m, value in client.query(expr):
            if _key(m) in ports:
                ports[_key(m)]["evidence"][name] = value
    worst = sorted(ports.values(), key=lambda p: (-p["rank"], -verdicts.rank(p["worst_recorded"] or "healthy"),
                                                   _key(p)))
    return worst


def _rate(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.3g}" if v else "0"


EVIDENCE_TEXT = {
    "ecn_per_second": lambda v: f"ECN/CNP {_rate(v)}/s",
    "rx_pause_share": lambda v: f"rx paused {v:.1%}",
    "tx_pause_share": lambda v: f"tx paused {v:.1%}",
    "rx_pause_per_second": lambda v: f"pause frames in {_rate(v)}/s",
    "tx_pause_per_second": lambda v: f"pause frames out {_rate(v)}/s",
    "discards_per_second": lambda v: f"rx discards {_rate(v)}/s",
    "transport_per_second": lambda v: f"seq errors+timeouts {_rate(v)}/s",
    "link_events": lambda v: f"link errors/downs {v:.0f}",
    "fec_ber": lambda v: f"pre-FEC BER {v:.1e}",
    "pcie_stalled": lambda v: f"PCIe stalled {v:.0%}",
    "pcie_stalled_seconds": lambda v: f"PCIe stalled >30% for {v:.0f}s",
}


def fabric_text(ports: list[dict], since: str) -> list[str]:
    lines = [f"{'NODE':<20} {'DEVICE':<12} {'PORT':<4} {'VERDICT':<18} {'WORST':<18} WHY (last {since})"]
    for p in ports:
        why = [EVIDENCE_TEXT[k](v) for k, v in p["evidence"].items() if v and k in EVIDENCE_TEXT]
        if p["pfc_priorities"]:
            why.insert(0, "PFC priority " + ",".join(sorted(p["pfc_priorities"])))
        worst = p["worst_recorded"] or "-"
        lines.append(f"{p['node']:<20} {p['device']:<12} {p['port']:<4} {p['verdict']:<18} {worst:<18} "
                     f"{'; '.join(why) or 'quiet'}")
    counts = {}
    for p in ports:
        counts[p["verdict"]] = counts.get(p["verdict"], 0) + 1
    lines.append(f"{len(ports)} ports: " + ", ".join(f"{n} {v}" for v, n in
                                                   sorted(counts.items(), key=lambda kv: -verdicts.rank(kv[0]))))
    return lines


# --- top ---------------------------------------------------------------------------------------

def top(client: Client, since: str, limit: int) -> dict:
    talkers = client.query(
        f'topk({limit}, sum by (cluster, node, src_ip, dst_ip) (rate(xtrace_network_bytes_total{{src_ip!="other"}}[{since}])))')
    pods = {}
    for m, _ in client.query(f"max by (pod_ip, namespace, pod) (last_over_time(kube_pod_info[{since}]))"):
        if m.get("pod_ip"):
            pods[m["pod_ip"]] = f"{m.get('namespace', '')}/{m.get('pod', '')}"
    flows = [{"node": m.get("node", ""), "src_ip": m.get("src_ip", ""), "dst_ip": m.get("dst_ip", ""),
              "src_pod": pods.get(m.get("src_ip", "")), "dst_pod": pods.get(m.get("dst_ip", "")),
              "bytes_per_second": v} for m, v in talkers]
    flows.sort(key=lambda f: -f["bytes_per_second"])
    ports: dict[tuple, dict] = {}
    for direction, metric in (("tx", "xtrace_rdma_port_transmit_bytes_total"), ("rx", "xtrace_rdma_port_receive_bytes_total")):
        for m, v in client.query(f"sum by ({verdicts.PORT}) (rate({metric}[{since}]))"):
            entry = ports.setdefault(_key(m), {"node": m.get("node", ""), "device": m.get("device", ""),
                                               "port": m.get("port", ""), "tx_bytes_per_second": 0.0,
                                               "rx_bytes_per_second": 0.0})
            entry[f"{direction}_bytes_per_second"] = v
    rdma = sorted(ports.values(), key=lambda p: -(p["tx_bytes_per_second"] + p["rx_bytes_per_second"]))[:limit]
    return {"talkers": flows, "rdma_ports": rdma}


def top_text(result: dict, since: str) -> list[str]:
    lines = [f"Top talkers (bytes/s, last {since})"]
    for f in result["talkers"]:
        src = f"{f['src_ip']}" + (f" ({f['src_pod']})" if f["src_pod"] else "")
        dst = f"{f['dst_ip']}" + (f" ({f['dst_pod']})" if f["dst_pod"] else "")
        lines.append(f"  {_rate(f['bytes_per_second']) + 'B/s':>10}  {src} -> {dst}  on {f['node']}")
    if not result["talkers"]:
        lines.append("  (no flows: no agent in xdp mode pushed here)")
    lines.append(f"RDMA ports by throughput (last {since})")
    for p in result["rdma_ports"]:
        lines.append(f"  {_rate(p['tx_bytes_per_second'] + p['rx_bytes_per_second']) + 'B/s':>10}  "
                     f"{p['node']} {p['device']}/{p['port']}  tx {_rate(p['tx_bytes_per_second'])}B/s "
                     f"rx {_rate(p['rx_bytes_per_second'])}B/s")
    if not result["rdma_ports"]:
        lines.append("  (no RDMA ports: no agent in rdma or nccl mode pushed here)")
    return lines


# --- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"xtrace: {message} (xtrace -h for usage)", file=sys.stderr)
        raise SystemExit(2)


def _duration(value: str) -> str:
    if not _DURATION.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 30s, 15m, 2h")
    return value


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xtrace", description="Ask VictoriaMetrics what XTrace saw.")
    p.add_argument("--url", default=environ.URL.get(),
                   help=f"VictoriaMetrics URL (env {environ.URL.name}; default {DEFAULT_URL})")
    p.add_argument("--output", choices=("text", "json"), default="text")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("fabric", help="each RDMA port's verdict and the numbers behind it, worst first")
    f.add_argument("--node", help="only this node")
    f.add_argument("--since", type=_duration, default="15m", help="the window judged (default 15m)")
    t = sub.add_parser("top", help="top talkers and RDMA ports by throughput")
    t.add_argument("--since", type=_duration, default="5m")
    t.add_argument("--limit", type=_positive, default=10, help="rows per table (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = Client(args.url, getattr(args, "node", None))
    try:
        if args.command == "fabric":
            result = fabric(client, args.since)
            empty = not result
            what = f"RDMA ports{' of node ' + args.node if args.node else ''}"
            lines = fabric_text(result, args.since) if result else []
            doc = {"since": args.since, "ports": result}
        else:
            doc = top(client, args.since, args.limit)
            empty = not doc["talkers"] and not doc["rdma_ports"]
            what = "flows or RDMA ports"
            lines = top_text(doc, args.since)
            doc["since"] = args.since
    except Unreachable as e:
        print(f"xtrace: cannot reach VictoriaMetrics at {args.url}: {e}", file=sys.stderr)
        return 2
    except QueryError as e:
        print(f"xtrace: VictoriaMetrics at {args.url} refused the query: {e}", file=sys.stderr)
        return 1
    if empty:
        print(f"xtrace: no XTrace data ({what}) in {args.url} over the last {args.since}: "
              "is an agent pushing there?", file=sys.stderr)
        return 2
    if args.output == "json":
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
