"""Bounded exponential back-off with jitter for calls to Kaggle.

In:  a zero-argument callable, a label naming what it does, and a `RetryPolicy`.
Out: the callable's result; or, once the attempts are spent (or at once for a permanent error),
     a `KaggleCallError` whose one-line message names the call and the last failure.

Transient (retried): HTTP 429 and 5xx, connection errors and resets, timeouts, broken or
truncated transfers (`TruncatedDownload`). Everything else (4xx, bad arguments) fails at once.
Rate limits (429) have their own budget: Kaggle's can last minutes and its Retry-After is not
reliable (often 0), so waits start at `rate_base_s` and double up to `rate_cap_s`, a Retry-After
(seconds or an HTTP date) only ever lengthens a wait (up to RETRY_AFTER_CAP_S), and kit gives up
after `rate_max_s` of waiting, not after a count. Other transient failures also have a time
budget (`call_budget_s`): a call that keeps stalling past the read timeout gives up after it, so
one `kit status` never hangs for minutes on one stalled call. A reply that is not JSON (an HTML
error page, an empty or truncated body) counts as transient ("bad-reply").
HTTP 401 is never retried: it raises `CredentialsRejected`, naming the fix.
The policy comes from the environment so tests and impatient users can shrink it:
KIT_RETRY_ATTEMPTS, KIT_RETRY_BASE_S, KIT_RETRY_CAP_S, KIT_CALL_BUDGET_S; KIT_RATE_LIMIT_BASE_S,
KIT_RATE_LIMIT_CAP_S, KIT_RATE_LIMIT_MAX_S.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from kit.errors import KitError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 6
DEFAULT_BASE_S = 1.0
DEFAULT_CAP_S = 30.0
JITTER_FRACTION = 0.5  # each delay is scaled by a random factor in [1 - j, 1 + j]
BACKOFF_FACTOR = 2.0
RETRY_AFTER_CAP_S = 600.0
DEFAULT_RATE_BASE_S = 10.0
DEFAULT_RATE_CAP_S = 300.0  # 5 minutes between tries at most
DEFAULT_RATE_MAX_S = 1800.0  # give up after half an hour of rate limiting
DEFAULT_CALL_BUDGET_S = 90.0  # transient failures of one call (stalls included) stop being retried after this
RATE_LIMITED = "http-429"
BAD_REPLY = "bad-reply"
UNAUTHENTICATED = 401
CREDENTIALS_FIX = ("Kaggle rejected the credentials (HTTP 401: the API key or token is wrong, expired or revoked): "
                   "create a new token at https://www.kaggle.com/settings/api and save it as ~/.kaggle/kaggle.json "
                   "(chmod 600) or set KAGGLE_API_TOKEN")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_MESSAGE = 200


class KaggleCallError(KitError):
    """A call to Kaggle failed for good (permanent error, or transient errors past the budget)."""


class CredentialsRejected(KaggleCallError):
    """Kaggle answered 401: the credentials kit sent are wrong, expired or revoked (never retried)."""


class KaggleUnreachable(KaggleCallError):
    """Transient failures (5xx, stalls, resets, 429) outlasted the retry budget: Kaggle may be fine later."""


class TruncatedDownload(IOError):
    """A download ended before the promised number of bytes arrived."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and the delay between them: base * factor**(n-1), capped, with jitter."""

    attempts: int = DEFAULT_ATTEMPTS
    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S
    jitter: float = JITTER_FRACTION
    rate_base_s: float = DEFAULT_RATE_BASE_S
    rate_cap_s: float = DEFAULT_RATE_CAP_S
    rate_max_s: float = DEFAULT_RATE_MAX_S
    call_budget_s: float = DEFAULT_CALL_BUDGET_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        env = os.environ if environ is None else environ
        try:
            return cls(
                attempts=max(1, int(env.get("KIT_RETRY_ATTEMPTS", DEFAULT_ATTEMPTS))),
                base_s=max(0.0, float(env.get("KIT_RETRY_BASE_S", DEFAULT_BASE_S))),
                cap_s=max(0.0, float(env.get("KIT_RETRY_CAP_S", DEFAULT_CAP_S))),
                rate_base_s=max(0.0, float(env.get("KIT_RATE_LIMIT_BASE_S", DEFAULT_RATE_BASE_S))),
                rate_cap_s=max(0.0, float(env.get("KIT_RATE_LIMIT_CAP_S", DEFAULT_RATE_CAP_S))),
                rate_max_s=max(0.0, float(env.get("KIT_RATE_LIMIT_MAX_S", DEFAULT_RATE_MAX_S))),
                call_budget_s=max(0.0, float(env.get("KIT_CALL_BUDGET_S", DEFAULT_CALL_BUDGET_S))),
            )
        except ValueError as exc:
            raise KitError(f"KIT_RETRY_* / KIT_RATE_LIMIT_*: expected numbers ({exc})") from None

    def rate_delay(self, spell: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `spell`-th 429 in a row: doubling from rate_base_s up to rate_cap_s;
        a Retry-After above that lengthens the wait (0, Kaggle's usual value, is ignored); it is capped at
        RETRY_AFTER_CAP_S (callers give up rather than wait past `rate_max_s`), so no wait is unbounded."""
        raw = min(self.rate_cap_s, self.rate_base_s * BACKOFF_FACTOR ** (spell - 1))
        wait = raw * (rng or random).uniform(1.0, 1.0 + self.jitter)
        if retry_after:
            wait = max(wait, min(retry_after, RETRY_AFTER_CAP_S))
        return max(0.0, wait)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        raw = min(self.cap_s, self.base_s * BACKOFF_FACTOR ** (attempt - 1))
        r = (rng or random).uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, min(self.cap_s, raw * r))


class RetryStats:
    """Thread-safe counters of what the retry layer did (for summaries and the fault figures)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.failures = 0
        self.by_reason: dict[str, int] = {}

    def record(self, reason: str) -> None:
        with self._lock:
            self.retries += 1
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1


STATS = RetryStats()


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (requests' HTTPError), if any."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _is_connection_problem(exc: BaseException) -> bool:
    try:
        import requests
        import urllib3.exceptions
    except ImportError:  # pragma: no cover - requests ships with the kaggle client
        return isinstance(exc, (ConnectionError, TimeoutError))
    transient = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.ReadTimeoutError,
        ConnectionError,
        TimeoutError,
    )
    return isinstance(exc, transient)


def classify(exc: BaseException) -> str | None:
    """A short reason when `exc` is transient ('http-429', 'http-500', 'connection', 'truncated',
    'bad-reply'), else None."""
    if isinstance(exc, TruncatedDownload):
        return "truncated"
    if isinstance(exc, json.JSONDecodeError):  # requests' JSONDecodeError is one too: an HTML page, a cut body
        return BAD_REPLY
    status = http_status(exc)
    if status is not None:
        return f"http-{status}" if status in TRANSIENT_STATUS else None
    if _is_connection_problem(exc):
        return "connection"
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After value asks for (delta-seconds or an HTTP date, RFC 9110 10.2.3), in
    [0, RETRY_AFTER_CAP_S]; None when absent or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(RETRY_AFTER_CAP_S, max(0.0, seconds))


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header on a 429/503 reply, if it holds one (capped)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return parse_retry_after(headers.get("Retry-After") if hasattr(headers, "get") else None)


def describe(exc: BaseException) -> str:
    """One line for an exception: 'HTTP 500: message', 'truncated: ...' or 'ConnectionError: ...'."""
    if isinstance(exc, TruncatedDownload):
        return f"truncated: {exc}"[:MAX_MESSAGE]
    status = http_status(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, json.JSONDecodeError):
        return "Kaggle's reply was not JSON (an error page, or an empty or truncated body)"
    if status is not None:
        return f"HTTP {status}: {text}"[:MAX_MESSAGE]
    return f"{type(exc).__name__}: {text}"[:MAX_MESSAGE]


class RateLimitWait:
    """The 429 budget of a call kit loops over itself (push, submit): the waits Kaggle asks for (Retry-After,
    bounded) and kit's back-off, given up once they would pass `rate_max_s`."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.spell = 0
        self.waited = 0.0

    def next_wait(self, exc: BaseException, what: str, nothing_done: str) -> float:
        """Seconds to wait before trying again, or KaggleUnreachable (`nothing_done` says what did not happen)."""
        self.spell += 1
        wait = self.policy.rate_delay(self.spell, retry_after_s(exc))
        if self.waited + wait > self.policy.rate_max_s:
            raise KaggleUnreachable(f"{what}: Kaggle kept rate-limiting (HTTP 429) for {self.waited:.0f} s; "
                                    f"{nothing_done}; try again later")
        self.waited += wait
        return wait


def advice(exc: BaseException) -> str:
    """What to do about a permanent failure, as the tail of its one-line message ('' when nothing to add)."""
    status = http_status(exc)
    if status == 403:
        return "; Kaggle does not let these credentials do this (or hides it): check the name and your access"
    if status == 404:
        return "; Kaggle has no such thing (or does not show it yet): check the name, or try again in a minute"
    if status is not None and 400 <= status < 500:
        return "; Kaggle refused the request: fix what it names, then run the command again"
    return "; run the command again, and report it if it persists"


def call_with_retry(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[str, int, str, float], None] | None = None,
    retry_if: Callable[[BaseException], str | None] = classify,
    stats: RetryStats = STATS,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run `fn` until it succeeds, retrying transient failures with back-off; see module docstring."""
    policy = policy or RetryPolicy.from_env()
    attempt = spell = 0
    rate_waited = 0.0
    started = time.monotonic()
    while True:
        try:
            return fn()
        except KitError:
            raise
        except Exception as exc:
            if http_status(exc) == UNAUTHENTICATED:
                stats.record_failure()
                raise CredentialsRejected(f"{what}: {CREDENTIALS_FIX}") from None
            reason = retry_if(exc)
            if reason is None:
                stats.record_failure()
                raise KaggleCallError(f"{what}: {describe(exc)}{advice(exc)}") from None
            if reason == RATE_LIMITED:  # its own budget: time, not attempts
                spell += 1
                wait = policy.rate_delay(spell, retry_after_s(exc), rng)
                if rate_waited + wait > policy.rate_max_s:
                    stats.record_failure()
                    raise KaggleUnreachable(f"{what}: Kaggle kept rate-limiting (HTTP 429) for "
                                            f"{rate_waited:.0f} s; try again later") from None
                rate_waited += wait
                count = spell
            else:
                spell = 0
                attempt += 1
                if attempt >= policy.attempts:
                    stats.record_failure()
                    raise KaggleUnreachable(
                        f"{what}: still failing after {policy.attempts} attempt(s) ({describe(exc)}); try again later"
                    ) from None
                wait = policy.delay(attempt, rng)
                spent = time.monotonic() - started
                if spent + wait > policy.call_budget_s:
                    stats.record_failure()
                    raise KaggleUnreachable(
                        f"{what}: no good answer within {spent:.0f} s ({attempt} attempt(s), last: {describe(exc)}; "
                        "$KIT_CALL_BUDGET_S sets the budget); try again later") from None
                count = attempt
            stats.record(reason)
            if on_retry:
                on_retry(what, count, reason, wait)
            sleep(wait)
