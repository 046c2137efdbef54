"""The hand-written encoder, checked against the protobuf library compiled from remote.proto."""

from __future__ import annotations

import math

import pytest
import snappy  # python-snappy: an independent snappy block decoder
from prometheus_client.parser import text_string_to_metric_families

from tests.remote_write import remote_pb2
from tests.remote_write.conftest import decode, report
from xtrace_agent.config import RemoteWriteTarget
from xtrace_agent.samples import Sample
from xtrace_agent.sinks import exposition, prompb
from xtrace_agent.sinks.remote_write import target_name
from xtrace_agent.sinks.transport import push_path, redact

EXTRA = {"node": "n1", "monitor": "m", "zone": ""}


def _reference(samples, extra):
    """The same request built with the protobuf library."""
    req = remote_pb2.WriteRequest()
    for s in samples:
        ts = req.timeseries.add()
        for k, v in sorted({**extra, **s.labels, "__name__": s.name}.items()):
            if v:
                ts.labels.add(name=k, value=v)
        ts.samples.add(value=s.value, timestamp=round(s.timestamp * 1000))
    return req


def test_encode_samples_matches_the_protobuf_library_byte_for_byte():
    samples = report(3, 50).samples + [
        Sample("odd", {"b": "ü\"\n\\", "a": "x" * 300, "empty": ""}, -1.5, 1.0),
        Sample("neg_ts", {}, 2.0, -1.0),
        Sample("inf", {"z": "1"}, math.inf, 1e9),
    ]
    enc = prompb.SeriesEncoder(EXTRA)
    raw = enc.encode_samples(samples)
    assert raw == _reference(samples, EXTRA).SerializeToString()
    # and the library decodes it back to the same points
    req = remote_pb2.WriteRequest.FromString(raw)
    assert len(req.timeseries) == len(samples)
    odd = req.timeseries[100]
    assert [(lab.name, lab.value) for lab in odd.labels] == [
        ("__name__", "odd"), ("a", "x" * 300), ("b", "ü\"\n\\"), ("monitor", "m"), ("node", "n1")]
    assert req.timeseries[101].samples[0].timestamp == -1000


def test_the_samples_own_label_wins_over_the_sinks():
    enc = prompb.SeriesEncoder({"node": "sink-node"})
    req = remote_pb2.WriteRequest.FromString(enc.encode_samples([Sample("m", {"node": "own"}, 1, 1)]))
    assert {(lab.name, lab.value) for lab in req.timeseries[0].labels} == {("__name__", "m"), ("node", "own")}


def test_grouped_request_keeps_time_order_and_our_decoder_agrees():
    enc = prompb.SeriesEncoder(EXTRA)
    samples = report(2, 5).samples + report(0, 5).samples + report(1, 5).samples  # out of order
    grouped = prompb.group(enc.entries(samples))
    body = prompb.compress(prompb.encode_write_request(grouped))
    # snappy *block* format: python-snappy's block decoder reads it
    req = remote_pb2.WriteRequest.FromString(snappy.decompress(body))
    assert len(req.timeseries) == 10
    for ts in req.timeseries:
        times = [s.timestamp for s in ts.samples]
        assert times == sorted(times) and len(times) == 3
        names = [lab.name for lab in ts.labels]
        assert names == sorted(names)
    assert prompb.decode_write_request(prompb.decompress(body)) == grouped
    assert sorted(decode(body), key=str) == sorted(
        decode(prompb.compress(enc.encode_samples(samples))), key=str)


def test_chunks_never_split_a_series():
    grouped = {bytes([i]): [(1.0, t) for t in range(i + 1)] for i in range(10)}
    parts = prompb.chunks(grouped, 7)
    assert [sum(len(p) for p in part.values()) for part in parts] == [6, 4, 5, 6, 7, 8, 9, 10]
    assert {k: v for part in parts for k, v in part.items()} == grouped


def test_text_format_for_the_legacy_endpoint_parses():
    """Live samples and a decoded spool block render the same text, and a real parser reads it."""
    samples = [Sample("m_total", {"q": 'a"b\\c\nd'}, 5, 2.5), Sample("g", {}, 0.25, 3)]
    enc = prompb.SeriesEncoder(EXTRA)
    text = exposition.samples_text(samples, EXTRA).decode()
    assert text == exposition.write_request_text(prompb.group(enc.entries(samples))).decode()
    assert "m_total{" in text and " 5 2500\n" in text and "g{" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sample = families["m_total"].samples[0]
    assert sample.labels == {"q": 'a"b\\c\nd', "node": "n1", "monitor": "m"}
    assert sample.value == 5


@pytest.mark.parametrize("codec", ["snappy", "zstd"])
def test_both_codecs_round_trip_and_are_told_apart(codec):
    raw = prompb.SeriesEncoder(EXTRA).encode_samples([Sample("m", {"a": "1"}, 2, 3)] * 50)
    body = prompb.compress(raw, codec)
    assert prompb.codec_of(body) == codec
    assert prompb.decompress(body) == raw
    other = "snappy" if codec == "zstd" else "zstd"
    assert prompb.decompress(prompb.recompress(body, other)) == raw
    assert prompb.codec_of(prompb.recompress(body, other)) == other


def test_url_forms():
    assert push_path("http://vm:8428") == "/api/v1/write"
    assert push_path("http://vm:8428/api/v1/write") == "/api/v1/write"
    assert push_path("http://vminsert:8480/insert/42/prometheus") == "/insert/42/prometheus/api/v1/write"
    assert push_path("http://vminsert:8480/insert/1:2/prometheus/api/v1/write") == "/insert/1:2/prometheus/api/v1/write"
    assert push_path("https://mimir/api/v1/push?x=1") == "/api/v1/push?x=1"
    assert redact("http://user:secret@vm:8428/api/v1/write") == "http://vm:8428/api/v1/write"
    assert target_name(RemoteWriteTarget(url="http://user:secret@vm:8428/x")) == "vm:8428"
