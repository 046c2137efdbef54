"""What each answer of a receiver means (sinks/outcome.py), without a receiver: the end-to-end
behaviour of every class is tested against real servers in test_status_codes.py and test_tls_auth.py."""

from __future__ import annotations

import http.client
import ssl

import pytest

from xtrace_agent.sinks import outcome
from xtrace_agent.sinks.outcome import DROPPED, OK, RETRY
from xtrace_agent.sinks.transport import Answer, AuthFileError

URL = "http://vm:8428/api/v1/write"


def answer(status: int, text: str = "", retry_after: str | None = None, credential: str = "") -> Answer:
    return Answer(status, text, retry_after, credential)


@pytest.mark.parametrize("status", [200, 204])
def test_2xx_is_delivered(status):
    assert outcome.of_answer(answer(status), URL, 30).kind == OK


@pytest.mark.parametrize("status", [400, 409, 415])
def test_a_body_refused_for_good_is_dropped(status):
    result = outcome.of_answer(answer(status, "cannot parse"), URL, 30)
    assert (result.kind, result.status, result.message) == (DROPPED, status, "cannot parse")


@pytest.mark.parametrize("status,hint", [(401, "credentials"), (403, "credentials"), (404, "URL path")])
def test_a_setting_to_fix_keeps_the_data_and_retries_slowly_and_loudly(status, hint):
    result = outcome.of_answer(answer(status, "no"), URL, 30)
    assert result.kind == RETRY and result.delay == 30 and result.loud
    assert f"HTTP {status} from {URL}" in result.message and hint in result.message


def test_vmauths_400_about_the_token_is_bad_credentials_not_a_bad_body():
    result = outcome.of_answer(answer(400, "cannot authorize request with auth tokens [x]", credential="x"), URL, 30)
    assert result.kind == RETRY and result.status == 401 and result.loud


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_trouble_backs_off(status):
    result = outcome.of_answer(answer(status, "busy"), URL, 30)
    assert result.kind == RETRY and result.delay is None and not result.loud
    assert result.message == f"HTTP {status}: busy"


def test_429_retry_after_seconds_and_dates_capped_and_garbage_ignored():
    assert outcome.of_answer(answer(429, "", "7"), URL, 30).delay == 7.0
    assert outcome.of_answer(answer(429, "", "99999"), URL, 30).delay == outcome.RETRY_AFTER_CAP
    assert outcome.of_answer(answer(429, "", "soon"), URL, 30).delay is None  # backoff instead
    assert outcome.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert outcome.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # already past
    assert outcome.of_answer(answer(503, "", "7"), URL, 30).delay is None  # only 429's is honoured


def test_errors_without_an_answer():
    down = outcome.of_error(ConnectionRefusedError(111, "Connection refused"), URL, 30)
    assert down.kind == RETRY and down.delay is None and not down.loud and down.message.startswith(f"cannot reach {URL}")
    assert "RemoteDisconnected" in outcome.of_error(http.client.RemoteDisconnected(), URL, 30).message
    assert outcome.of_error(TimeoutError("timed out"), URL, 30).delay is None
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    result = outcome.of_error(cert, URL, 30)
    assert result.loud and result.delay == 30 and "self-signed certificate" in result.message and "caFile" in result.message
    unreadable = outcome.of_error(AuthFileError("cannot read credentials file /t: No such file"), URL, 30)
    assert unreadable.loud and unreadable.delay == 30 and "data stays queued" in unreadable.message
    for error in (AuthFileError("x"), cert, OSError(), http.client.BadStatusLine("x")):
        assert isinstance(error, outcome.SEND_ERRORS)
