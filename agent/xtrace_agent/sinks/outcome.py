"""What one remote-write send came to: the receiver's answer (or the error instead of one) as a value.

    of_answer(answer, url, auth_retry)  an HTTP answer -> Outcome
    of_error(error, url, auth_retry)    no answer (network, TLS, a credentials file) -> Outcome

Pure: no I/O, no counters, no state. RemoteWriteSink applies an Outcome (counts it, logs it,
schedules the retry); this module only decides, so every status code's fate is one table read here
and tested without a receiver (tests/remote_write/test_outcome.py).

- 2xx: delivered.
- 400/409/415: the receiver refused the body for good (a retry would be refused again): dropped.
- 401/403/404, a vmauth 400 about the token, an unverifiable TLS certificate, an unreadable
  credentials file: a setting to fix (credentials, URL path, caFile). The data stays queued and is
  retried every `auth_retry` seconds, with an error line each time.
- anything else (5xx, 429, connection errors): retried with backoff; 429's Retry-After wins.
"""

from __future__ import annotations

import email.utils
import http.client
import ssl
import time
from typing import NamedTuple

from xtrace_agent.sinks.transport import Answer, AuthFileError, auth_problem

OK, DROPPED, RETRY = "ok", "dropped", "retry"
DROP_CODES = (400, 409, 415)
AUTH_CODES = (401, 403, 404)
RETRY_AFTER_CAP = 600.0  # seconds: a receiver asking for more is throttled for 10 minutes at most

# What of_error() classifies; anything else is a bug the sender thread logs with its traceback.
SEND_ERRORS = (AuthFileError, OSError, http.client.HTTPException)


class Outcome(NamedTuple):
    kind: str  # OK | DROPPED | RETRY
    status: int = 0  # the HTTP status, 0 when there was no answer
    message: str = ""  # for the log line: why (without the target's name)
    delay: float | None = None  # RETRY: seconds to wait; None: exponential backoff
    loud: bool = False  # RETRY: an error line every time (a setting to fix), else rate-limited warnings


def of_answer(answer: Answer, url: str, auth_retry: float) -> Outcome:
    """The fate of a body the receiver answered; `url` is already redacted."""
    status = 401 if auth_problem(answer) else answer.status
    if 200 <= status < 300:
        return Outcome(OK, status)
    if status in DROP_CODES:
        return Outcome(DROPPED, status, answer.text)
    if status in AUTH_CODES:
        what = "the URL path" if status == 404 else "the credentials (basicAuth / bearerTokenFile)"
        return Outcome(RETRY, status, f"HTTP {status} from {url}: check {what}; data stays queued and is "
                       f"retried every {auth_retry:g}s: {answer.text}", auth_retry, loud=True)
    delay = retry_after(answer.retry_after) if status == 429 and answer.retry_after else None
    return Outcome(RETRY, status, f"HTTP {status}: {answer.text}", delay)


def of_error(error: BaseException, url: str, auth_retry: float) -> Outcome:
    """The fate of a body that got no answer (one of SEND_ERRORS); `url` is already redacted."""
    if isinstance(error, AuthFileError):
        return Outcome(RETRY, 0, f"{error}: data stays queued", auth_retry, loud=True)
    if isinstance(error, ssl.SSLCertVerificationError):  # before OSError: a setting to fix, like a 401
        return Outcome(RETRY, 0, f"cannot verify the TLS certificate of {url}: {error.verify_message or error}: "
                       f"check caFile / insecureSkipVerify; data stays queued and is retried every "
                       f"{auth_retry:g}s", auth_retry, loud=True)
    return Outcome(RETRY, 0, f"cannot reach {url}: {str(error) or type(error).__name__}")


def retry_after(value: str, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when unreadable."""
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), RETRY_AFTER_CAP)
