"""The agent's readiness on its Pod: written on change only, in the right shape, never raising.

The API server is a small local HTTP server recording what it receives (plain HTTP: the
reporter takes an http:// base URL from tests; in a pod it always builds an https one).
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate
import pytest

from xtrace_agent import selfmetrics as sm
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind, Problem
from xtrace_agent.sinks import podstatus

WINDOW = 0.3  # the reporter's min_interval in these tests


class FakeApiServer:
    """Records every PATCH (path, headers, JSON body) and answers with `self.status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.status = 200
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802 (the stdlib's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append((self.path, dict(self.headers), body))
                    status = owner.status
                reply = json.dumps({"kind": "Status", "message": "pods \"x\" is forbidden"} if status >= 400
                                   else {"kind": "Pod"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def conditions(self) -> list[dict]:
        with self.lock:
            return [body["status"]["conditions"][0] for _, _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture
def token(tmp_path):
    path = tmp_path / "token"
    path.write_text("token-one\n")
    return path


@pytest.fixture
def reporter_of(api, token):
    made = []

    def make(health: Health, **kw) -> podstatus.PodStatusReporter:
        kw = {"min_interval": WINDOW, "jitter": 0.0, "timeout": 2.0, **kw}
        r = podstatus.PodStatusReporter(health, "obs", "xtrace-web-abcde", kw.pop("url", api.url), token, **kw)
        made.append(r.start())
        return r
    yield make
    for r in made:
        r.close()


def wait_for(check, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


# --- the summary (pure) -------------------------------------------------------------------------

def test_summary_reasons_and_message():
    assert podstatus.summarize([]) == podstatus.Summary(True, "AgentReady", "", ())
    s = podstatus.summarize([Problem(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found")])
    assert (s.ready, s.reason, s.message) == (False, "InterfaceNotFound", "xdp:eth1: interface not found")
    assert podstatus.summarize([Problem(Kind.LINK_DOWN, "xdp:eth0", "link down")]).reason == "LinkDown"
    assert podstatus.summarize([Problem(Kind.NOT_ATTACHED, "xdp:eth0", "attach failed: EBUSY")]).reason == "NotAttached"
    assert podstatus.summarize([Problem(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 300s")]).reason == "PushFailing"
    assert podstatus.summarize([Problem(Kind.DEVICE_NOT_FOUND, "rdma:mlx5_0", "RDMA device mlx5_0 not found")]).reason == "DeviceNotFound"
    mixed = podstatus.summarize([Problem(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found"), Problem(Kind.PUSH_FAILING, "remote_write:vm", "push failing")])
    assert mixed.reason == "Degraded"
    assert mixed.message == "remote_write:vm: push failing; xdp:eth1: interface not found"  # sorted, one line


def test_a_problem_is_a_kind_not_text_to_classify():
    health = Health()
    with pytest.raises(TypeError, match="readiness.Kind"):
        health.not_ready("InterfaceNotFound", "xdp:eth1", "interface not found")
    # the kind, not the words, says what it is
    health.not_ready(Kind.LINK_DOWN, "xdp:eth1", "interface not found")
    assert podstatus.summarize(health.problems()).reason == "LinkDown"


def test_summary_is_bounded_and_ignores_numbers():
    long = podstatus.summarize([Problem(Kind.INTERFACE_NOT_FOUND, f"xdp:eth{i}", "interface not found\nsecond line") for i in range(100)])
    assert len(long.message) == podstatus.MAX_MESSAGE and long.message.endswith("…") and "\n" not in long.message
    a = podstatus.summarize([Problem(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 121s (maxPushAge 120s): HTTP 503")])
    b = podstatus.summarize([Problem(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 126s (maxPushAge 120s): HTTP 503")])
    c = podstatus.summarize([Problem(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 126s (maxPushAge 120s): refused")])
    assert a.key == b.key != c.key and a.message != b.message


def test_outside_a_pod_nothing_starts(tmp_path):
    health = Health()
    assert podstatus.PodStatusSink.from_environment(health, env={}) is None
    env = {"POD_NAME": "p", "POD_NAMESPACE": "ns", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    assert podstatus.PodStatusReporter.from_environment(health, env, sa_dir=tmp_path) is None  # no token
    (tmp_path / "token").write_text("t")
    r = podstatus.PodStatusReporter.from_environment(health, env, sa_dir=tmp_path)
    assert r is not None and r._url.geturl() == "https://10.96.0.1:443" and r.ca_file is None
    assert r.path == "/api/v1/namespaces/ns/pods/p/status"
    (tmp_path / "ca.crt").write_text("")
    v6 = podstatus.PodStatusReporter.from_environment(health, {**env, "KUBERNETES_SERVICE_HOST": "fd00::1"},
                                                      sa_dir=tmp_path)
    assert v6._url.hostname == "fd00::1" and v6.ca_file == tmp_path / "ca.crt"
    assert podstatus.PodStatusReporter.from_environment(health, {**env, "POD_NAME": ""}, sa_dir=tmp_path) is None


def test_patch_merges_by_type_into_the_real_pod_status():
    """The body is a valid Pod status, and the real schema merges conditions by `type`.

    So the API server adds or replaces only our entry; the kubelet's Ready, ContainersReady, ...
    stay. (No API server here: the merge rule is read from the published Kubernetes schema.)
    """
    summary = podstatus.summarize([Problem(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found")])
    body = podstatus.patch_body(podstatus.condition(summary, "2025-01-01T00:00:00Z"))
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, **body},
                                 "1.33", strict=True)
    schemas = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / "v1.33.0-local-strict"
    conditions = json.loads((schemas / "podstatus-v1.json").read_text())["properties"]["conditions"]
    assert conditions["x-kubernetes-patch-strategy"] == "merge"
    assert conditions["x-kubernetes-patch-merge-key"] == "type"


# --- the writer against an API server -----------------------------------------------------------

def test_writes_once_per_change_in_the_right_shape(api, reporter_of, token):
    health = Health()
    health.not_ready(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found")
    r = reporter_of(health)
    for _ in range(5):  # five intervals, one readiness
        r.observe()
    wait_for(lambda: api.count() == 1)
    path, headers, body = api.requests[0]
    assert path == "/api/v1/namespaces/obs/pods/xtrace-web-abcde/status"
    assert headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert headers["Authorization"] == "Bearer token-one"
    (cond,) = body["status"]["conditions"]
    assert set(body) == {"status"} and set(body["status"]) == {"conditions"}
    assert cond["type"] == "xtrace.io/AgentReady" and cond["status"] == "False"
    assert cond["reason"] == "InterfaceNotFound" and cond["message"] == "xdp:eth1: interface not found"
    assert cond["lastTransitionTime"].endswith("Z")

    time.sleep(WINDOW * 1.5)
    r.observe()
    time.sleep(WINDOW * 0.5)
    assert api.count() == 1  # nothing changed: no request

    token.write_text("token-two")  # the kubelet rotated it
    health.ready("xdp:eth1")
    r.observe()
    wait_for(lambda: api.count() == 2)
    ready = api.conditions()[1]
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "AgentReady", "")
    assert api.requests[1][1]["Authorization"] == "Bearer token-two"
    # counted once the API's answer is back, a moment after the server saw the request
    wait_for(lambda: health.get(sm.POD_STATUS_WRITES) == 2)
    assert health.get(sm.POD_STATUS_ERRORS) == 0


def test_numbers_only_change_writes_nothing_and_transition_time_stays(api, reporter_of):
    health = Health()
    health.not_ready(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 121s (maxPushAge 120s): HTTP 503")
    r = reporter_of(health)
    r.observe()
    wait_for(lambda: api.count() == 1)
    for age in (126, 131, 136):
        health.not_ready(Kind.PUSH_FAILING, "remote_write:vm", f"no successful push to vm for {age}s (maxPushAge 120s): HTTP 503")
        r.observe()
    time.sleep(WINDOW * 1.5)
    assert api.count() == 1
    health.not_ready(Kind.PUSH_FAILING, "remote_write:vm", "no successful push to vm for 141s (maxPushAge 120s): connection refused")
    r.observe()
    wait_for(lambda: api.count() == 2)
    first, second = api.conditions()
    assert second["reason"] == "PushFailing" and "connection refused" in second["message"]
    # Still False: the transition happened at the first write.
    assert second["lastTransitionTime"] == first["lastTransitionTime"]


def test_at_most_one_write_per_window_latest_wins(api, reporter_of):
    health = Health()
    r = reporter_of(health, min_interval=1.0)
    r.observe()
    wait_for(lambda: api.count() == 1)  # the first observation is written at once
    for kind, reason in ((Kind.INTERFACE_NOT_FOUND, "interface not found"), (Kind.LINK_DOWN, "link down"),
                         (Kind.NOT_ATTACHED, "attach failed: EBUSY")):
        health.not_ready(kind, "xdp:eth0", reason)
        r.observe()
    time.sleep(0.3)
    assert api.count() == 1  # still inside the window
    wait_for(lambda: api.count() == 2)
    assert api.conditions()[1]["reason"] == "NotAttached"  # only the latest
    time.sleep(0.2)
    assert api.count() == 2


def test_a_change_undone_within_the_window_writes_nothing(api, reporter_of):
    health = Health()
    r = reporter_of(health, min_interval=0.5)
    r.observe()
    wait_for(lambda: api.count() == 1)
    health.not_ready(Kind.LINK_DOWN, "xdp:eth0", "link down")
    r.observe()
    health.ready("xdp:eth0")
    r.observe()
    time.sleep(0.8)
    assert api.count() == 1


def test_failures_are_counted_logged_once_and_backed_off(api, reporter_of, caplog):
    api.status = 403
    health = Health()
    health.not_ready(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found")
    caplog.set_level(logging.WARNING, logger="xtrace.podstatus")
    r = reporter_of(health, min_interval=0.1, max_backoff=0.4)
    r.observe()  # must not raise, whatever the server says
    wait_for(lambda: api.count() >= 3, timeout=3)  # retried: 0.2 s, then 0.4 s (capped) later
    time.sleep(0.1)
    assert api.count() <= 4  # back-off, not a storm
    assert health.get(sm.POD_STATUS_ERRORS) >= 3
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 1 and "HTTP 403: pods \"x\" is forbidden" in warnings[0]

    api.status = 200
    wait_for(lambda: api.conditions()[-1]["status"] == "False" and health.get(sm.POD_STATUS_WRITES) == 1)


def test_unreachable_server_or_missing_token_never_raises(api, reporter_of, token):
    health = Health()
    health.not_ready(Kind.INTERFACE_NOT_FOUND, "xdp:eth1", "interface not found")
    api.close()
    r = reporter_of(health, url=api.url, min_interval=0.05, max_backoff=0.1)
    r.observe()
    wait_for(lambda: health.get(sm.POD_STATUS_ERRORS) >= 1)
    token.unlink()
    wait_for(lambda: health.get(sm.POD_STATUS_ERRORS) >= 3)
    r.close()
    assert not r._thread.is_alive()


def test_pod_status_is_a_sink_of_the_pipeline(api, reporter_of, tmp_path):
    """cli.build_sinks adds it only in a pod; each report it takes hands readiness on."""
    from xtrace_agent import cli
    from xtrace_agent.config import AgentConfig
    from xtrace_agent.samples import Report
    from xtrace_agent.sinks.podstatus import PodStatusSink

    health = Health()
    assert not any(isinstance(s, PodStatusSink) for s in cli.build_sinks(AgentConfig(output="none"), health, {}))
    health.not_ready(Kind.STARTING, "agent", "starting: no report yet")
    sink = PodStatusSink(reporter_of(health))
    sink.write(Report(0.0))
    wait_for(lambda: api.count() == 1)
    health.ready("agent")
    sink.write(Report(1.0))
    wait_for(lambda: api.count() == 2)
    assert [c["status"] for c in api.conditions()] == ["False", "True"]
    sink.close(1.0)


def test_the_operator_docs_list_every_reason_an_agent_can_write():
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "operator.md").read_text()
    listed = doc[doc.index("The condition's `reason` is"):].split("\n\n")[0]
    from xtrace_agent import readiness

    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", listed))
    assert named == {str(k) for k in Kind} | {readiness.MIXED_REASON, readiness.READY_REASON}
