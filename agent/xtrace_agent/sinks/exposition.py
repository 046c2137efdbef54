"""The Prometheus text exposition format (0.0.4): the one writer for /metrics and the legacy import.

    metrics_text(samples, extra)    /metrics: HELP/TYPE per metric name, no timestamps (the
                                    scraper stamps its scrape time)
    samples_text(samples, extra)    /api/v1/import/prometheus: one line per sample with its
                                    millisecond timestamp, labels as remote write sends them
    write_request_text(series)      the same for a decoded WriteRequest (spooled blocks)

Type and help text come from the metric's one definition (datametrics.py or selfmetrics.py); a
sample of a metric neither defines is refused at the first scrape, never served with made-up help.
Labels are sorted, empty values dropped (an empty label is an absent one), and a label the sample
already has wins over `extra`, as in remote write (prompb.series_pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xtrace_agent import datametrics, selfmetrics
from xtrace_agent.samples import Sample
from xtrace_agent.sinks.prompb import decode_labels


def escape(value: str) -> str:
    """A label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def line(name: str, pairs: Iterable[tuple[str, str]], value: float, ts_ms: int | None = None) -> str:
    """One sample line; `pairs` are (label, value) in the order to write, `__name__` skipped."""
    body = ",".join(f'{k}="{escape(v)}"' for k, v in pairs if k != "__name__" and v != "")
    head = f"{name}{{{body}}}" if body else name
    return f"{head} {format_value(value)}" + (f" {ts_ms}\n" if ts_ms is not None else "\n")


def describe(name: str) -> datametrics.DataMetric | selfmetrics.SelfMetric:
    """The one definition of a metric; a name neither registry defines is a bug, refused."""
    described = datametrics.BY_NAME.get(name) or selfmetrics.BY_NAME.get(name)
    if described is None:
        raise ValueError(f"metric {name} is defined in neither datametrics.py nor selfmetrics.py")
    return described


def metrics_text(samples: list[Sample], extra: Mapping[str, str] | None = None) -> str:
    """Samples for /metrics: one HELP/TYPE block per metric name, in first-seen order."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    out = []
    for name, group in by_name.items():
        described = describe(name)
        out.append(f"# HELP {name} {_help_escape(described.help)}\n# TYPE {name} {described.kind}\n")
        for s in group:
            labels = {**extra, **s.labels} if extra else s.labels
            out.append(line(name, sorted(labels.items()), s.value))
    return "".join(out)


def samples_text(samples: Iterable, extra: Mapping[str, str]) -> bytes:
    """(name, labels, value, seconds) samples with `extra` labels and millisecond timestamps."""
    return "".join(line(name, sorted({**extra, **labels}.items()), value, round(seconds * 1000))
                   for name, labels, value, seconds in samples).encode()


def write_request_text(series: Mapping[bytes, list[tuple[float, int]]]) -> bytes:
    """A decoded WriteRequest ({labels_bytes: [(value, ts_ms)]}) as text lines."""
    out = []
    for labels, points in series.items():
        pairs = decode_labels(labels)
        name = next((v for k, v in pairs if k == "__name__"), "")
        out.extend(line(name, pairs, value, ts) for value, ts in points)
    return "".join(out).encode()
