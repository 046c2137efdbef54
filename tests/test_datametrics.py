"""Data metrics are defined once (datametrics.py), like self-metrics: a metric missing from the registry
fails (at import, or at the first scrape), /metrics serves the defined help, and the docs' metric
tables say what the registries say."""

from __future__ import annotations

import glob
import os
import re
import urllib.error
import urllib.request

import pytest
import yaml

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig
from xtrace_agent.health import Health
from xtrace_agent.samples import Report, Sample
from xtrace_agent.sinks.exposition import metrics_text
from xtrace_agent.sinks.http import MetricsServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW = {"interface": "eth0", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": "1", "dst_port": "2",
        "protocol": "17", "traffic_type": "ethernet"}


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# --- the registry ------------------------------------------------------------------------------
def test_definitions_are_consistent_unique_and_apart_from_the_self_metrics():
    names = [m.name for m in vars(dm).values() if isinstance(m, dm.DataMetric)]
    assert len(names) == len(set(names)) == len(dm.BY_NAME)
    assert not set(dm.BY_NAME) & set(sm.BY_NAME)
    for m in dm.BY_NAME.values():
        assert m.name.startswith("xtrace_") and m.help.endswith(".") and "XTrace metric" not in m.help
        assert (m.kind == "counter") == m.name.endswith(dm.COUNTER_SUFFIXES)  # a histogram's series are counters
        assert m.unit in ("", "bytes", "packets", "bytes/s", "seconds", "bits"), m
        assert not set(m.labels) & set(m.optional), m


def test_a_misspelt_data_metric_fails_at_import():
    with pytest.raises(AttributeError):
        dm.NETWORK_PAKCETS  # noqa: B018 (what `from ... import` or `dm.X.name` in a collector runs)


def test_a_metric_defined_nowhere_is_refused_at_the_first_scrape():
    with pytest.raises(ValueError, match="xtrace_network_packts_total is defined in neither datametrics.py nor"):
        metrics_text([Sample("xtrace_network_packts_total", FLOW, 1, 0.0)])


def test_metrics_serves_the_defined_help_and_type_and_names_an_undefined_metric(caplog):
    srv = MetricsServer(AgentConfig(http_listen="127.0.0.1:0"), Health())
    srv.start()
    try:
        url = f"http://127.0.0.1:{srv.port}/metrics"
        srv.write(Report(0.0, [Sample(dm.NETWORK_PACKETS.name, FLOW, 5, 0.0),
                               Sample(dm.RDMA_PORT_RATE.name, {"device": "mlx5_0", "port": "1"}, 12.5e9, 0.0)]))
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        assert f"# HELP xtrace_network_packets_total {dm.NETWORK_PACKETS.help}\n" in text
        assert "# TYPE xtrace_network_packets_total counter\n" in text
        assert f"# HELP xtrace_rdma_port_rate_bytes_per_second {dm.RDMA_PORT_RATE.help}\n" in text
        assert "# TYPE xtrace_rdma_port_rate_bytes_per_second gauge\n" in text
        assert "XTrace metric" not in text
        srv.write(Report(0.0, [Sample("xtrace_made_up_total", {}, 1, 0.0)]))
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(url, timeout=5)
        assert answer.value.code == 500
        assert answer.value.read().decode() == ("metric xtrace_made_up_total is defined in neither datametrics.py "
                                                "nor selfmetrics.py\n")
    finally:
        srv.close(2)


def test_allows_checks_required_and_optional_labels():
    assert dm.NETWORK_PACKETS.allows(FLOW)
    assert dm.NETWORK_PACKETS.allows({**FLOW, "direction": "egress", "rdma_opcode": "4", "dest_qp": "17"})
    assert not dm.NETWORK_PACKETS.allows({k: v for k, v in FLOW.items() if k != "src_ip"})
    assert not dm.NETWORK_PACKETS.allows({**FLOW, "vlan": "7"})


# --- the docs say what the registries say -----------------------------------------------------------
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# a full metric name: not a recording rule's (level:metric:op), a path, or a wildcard (xtrace_network_*)
NAME = re.compile(r"(?<![\w:/.-])xtrace_[a-z0-9_]*[a-z0-9](?![\w*/])")


def _rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_every_metric_the_docs_name_is_defined_and_every_defined_metric_is_documented():
    named = {doc: set(NAME.findall(_read(doc))) for doc in DOCS}
    defined = set(dm.BY_NAME) | set(sm.BY_NAME)
    assert {doc: sorted(names - defined) for doc, names in named.items() if names - defined} == {}
    assert sorted(defined - set().union(*named.values())) == []


def test_readme_xdp_table_lists_every_xdp_data_metric_with_its_labels():
    rows = _rows(_read("README.md"), "| metric | labels | meaning |")
    listed = set()
    for metric_cell, labels_cell, _ in rows:
        metrics = [dm.BY_NAME[n] for n in NAME.findall(metric_cell) if n in dm.BY_NAME]
        listed.update(m.name for m in metrics)
        groups = re.findall(r"`([^`]+)`", labels_cell)
        if not metrics or metric_cell.startswith("(") or not labels_cell.startswith("`"):
            continue  # a row about several kinds, or "as the flow"
        required = set(groups[0].split(", "))
        extra = {label for g in groups[1:] for label in g.split(", ")}
        for m in metrics:
            assert required == set(m.labels), (m.name, labels_cell)
            assert extra <= set(m.optional), (m.name, labels_cell)
    assert listed == {m.name for m in dm.BY_NAME.values() if m.source in ("xdp", "drops", "tcp")}


def test_rdma_metrics_table_has_every_rdma_metric_with_its_type_and_unit():
    rows = _rows(_read("docs/rdma-metrics.md"), "| metric | type | unit | what |")
    listed = {}
    for metric_cell, kind, unit, _ in rows:
        (name,) = NAME.findall(metric_cell)
        listed[name] = (kind, unit)
        m = dm.BY_NAME[name]
        assert kind == m.kind, name
        assert unit == m.unit or not m.unit, (name, unit)
        labels = re.search(r"\{([^}]*)\}", metric_cell)
        assert set(labels.group(1).split(",") if labels else ()) | {"device", "port"} == set(m.labels), name
    assert set(listed) == {m.name for m in dm.BY_NAME.values() if m.source == "rdma"}


def test_queries_alert_table_lists_exactly_the_shipped_alerts():
    rows = _rows(_read("docs/queries.md"), "| alert | fires when | for |")
    documented = [re.fullmatch(r"`(\w+)`", row[0]).group(1) for row in rows]
    rules = yaml.safe_load(_read("deploy/rules/xtrace.rules.yml"))
    shipped = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert documented == shipped
