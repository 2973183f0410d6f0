"""Guards on the retry layer between kit and Kaggle: the exact back-off it waits (so a user's session is
neither hammered nor stalled), the budgets it keeps, the policy it reads from the environment, and the
one line it prints. Real `requests` exceptions; the waits are recorded, not slept."""

from __future__ import annotations

import random

import pytest
import requests

from kit.errors import KitError
from kit.kaggle.retry import (
    DEFAULT_ATTEMPTS,
    RETRY_AFTER_CAP_S,
    KaggleCallError,
    RetryPolicy,
    RetryStats,
    TruncatedDownload,
    call_with_retry,
    describe,
    retry_after_s,
)

SEED = 5
SAMPLES = 400


def _http_error(status: int, retry_after: str | None = None, message: str = "Server Error") -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return requests.HTTPError(f"{status} {message}", response=response)


def _failing(errors: list[BaseException], result: str = "ok"):
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def test_policy_is_read_from_every_environment_variable() -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy()
    env = {"KIT_RETRY_ATTEMPTS": "3", "KIT_RETRY_BASE_S": "0.25", "KIT_RETRY_CAP_S": "4",
           "KIT_RATE_LIMIT_BASE_S": "7", "KIT_RATE_LIMIT_CAP_S": "70", "KIT_RATE_LIMIT_MAX_S": "700"}
    assert RetryPolicy.from_env(env) == RetryPolicy(attempts=3, base_s=0.25, cap_s=4.0, rate_base_s=7.0,
                                                    rate_cap_s=70.0, rate_max_s=700.0)
    for key, field in (("KIT_RETRY_ATTEMPTS", "attempts"), ("KIT_RETRY_BASE_S", "base_s"),
                       ("KIT_RETRY_CAP_S", "cap_s"), ("KIT_RATE_LIMIT_BASE_S", "rate_base_s"),
                       ("KIT_RATE_LIMIT_CAP_S", "rate_cap_s"), ("KIT_RATE_LIMIT_MAX_S", "rate_max_s")):
        one = RetryPolicy.from_env({key: "9"})
        assert getattr(one, field) == 9 and one == RetryPolicy(**{field: 9}), key  # only its own field
    clamped = RetryPolicy.from_env({k: "-5" for k in env})
    assert clamped == RetryPolicy(attempts=1, base_s=0.0, cap_s=0.0, rate_base_s=0.0, rate_cap_s=0.0, rate_max_s=0.0)
    assert RetryPolicy.from_env({"KIT_RETRY_ATTEMPTS": "0"}).attempts == 1  # always at least one try
    assert RetryPolicy().attempts == DEFAULT_ATTEMPTS
    with pytest.raises(KitError, match=r"^KIT_RETRY_\* / KIT_RATE_LIMIT_\*: expected numbers \(.*'soon'"):
        RetryPolicy.from_env({"KIT_RATE_LIMIT_MAX_S": "soon"})


def test_the_environment_is_the_default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("KIT_RETRY_BASE_S", "0")
    fn, calls = _failing([_http_error(500)] * 5)
    with pytest.raises(KaggleCallError, match="after 2 attempt"):
        call_with_retry(fn, "env", sleep=lambda s: None)
    assert len(calls) == 2


def test_backoff_doubles_to_the_cap_with_jitter_on_both_sides() -> None:
    exact = RetryPolicy(base_s=0.1, cap_s=1.0, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    jittered = RetryPolicy(base_s=0.1, cap_s=10.0, jitter=0.5)
    rng = random.Random(SEED)
    second = [jittered.delay(2, rng) for _ in range(SAMPLES)]  # raw 0.2, scaled by [0.5, 1.5]
    assert 0.1 <= min(second) < 0.12 and 0.28 < max(second) <= 0.3
    assert sum(second) / SAMPLES == pytest.approx(0.2, rel=0.05)
    capped = [RetryPolicy(base_s=1.0, cap_s=1.0, jitter=0.5).delay(3, rng) for _ in range(SAMPLES)]
    assert max(capped) <= 1.0 and min(capped) < 0.6  # the cap bounds the jittered delay too
    assert RetryPolicy(base_s=0.0, cap_s=1.0).delay(4, rng) == 0.0


def test_rate_limit_waits_double_and_only_lengthen_with_retry_after() -> None:
    policy = RetryPolicy(rate_base_s=0.1, rate_cap_s=0.5, jitter=0.0)
    assert [policy.rate_delay(n, None) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert policy.rate_delay(1, 0.0) == pytest.approx(0.1)  # Kaggle's usual Retry-After: 0 is ignored
    assert policy.rate_delay(1, 0.05) == pytest.approx(0.1)  # a shorter Retry-After never shortens it
    assert policy.rate_delay(1, 3.0) == pytest.approx(3.0)
    rng = random.Random(SEED)
    jittered = [RetryPolicy(rate_base_s=0.1, rate_cap_s=0.5, jitter=0.5).rate_delay(1, None, rng)
                for _ in range(SAMPLES)]
    assert 0.1 <= min(jittered) < 0.11 and 0.14 < max(jittered) <= 0.15  # jitter only lengthens
    assert RetryPolicy(rate_base_s=0.0).rate_delay(1, None) == 0.0


def test_retry_after_header_is_read_capped_and_ignored_when_unusable() -> None:
    assert retry_after_s(_http_error(429, "0.5")) == 0.5
    assert retry_after_s(_http_error(429, "-3")) == 0.0
    assert retry_after_s(_http_error(429, "99999")) == RETRY_AFTER_CAP_S
    assert retry_after_s(_http_error(429)) is None
    assert retry_after_s(_http_error(429, "Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # an HTTP date, long past
    assert retry_after_s(_http_error(429, "soon")) is None  # neither seconds nor a date
    assert retry_after_s(ValueError("no response at all")) is None

    class Bare(Exception):
        response = object()  # a response without headers

    class Listy(Exception):
        class response:  # noqa: N801 - shaped like a response whose headers are not a mapping
            headers = [("Retry-After", "5")]

    assert retry_after_s(Bare()) is None and retry_after_s(Listy()) is None


def test_waits_follow_the_given_random_source_and_reach_the_callback() -> None:
    policy = RetryPolicy(attempts=5, base_s=0.01, cap_s=1.0, jitter=0.5, rate_base_s=0.02, rate_cap_s=1.0)
    slept: list[float] = []
    told: list[tuple[str, int, str, float]] = []
    fn, calls = _failing([_http_error(500), _http_error(503), _http_error(429, "0"), _http_error(429, "0"),
                          requests.ConnectionError("reset"), _http_error(429, "0")])
    stats = RetryStats()
    assert call_with_retry(fn, "get thing", policy, on_retry=lambda *a: told.append(a), stats=stats,
                           sleep=slept.append, rng=random.Random(SEED)) == "ok"
    twin = random.Random(SEED)
    expected = [policy.delay(1, twin), policy.delay(2, twin), policy.rate_delay(1, 0.0, twin),
                policy.rate_delay(2, 0.0, twin), policy.delay(3, twin),  # 429s do not spend attempts
                policy.rate_delay(1, 0.0, twin)]  # another error ends a 429 spell
    assert slept == pytest.approx(expected)
    assert told == [("get thing", 1, "http-500", slept[0]), ("get thing", 2, "http-503", slept[1]),
                    ("get thing", 1, "http-429", slept[2]), ("get thing", 2, "http-429", slept[3]),
                    ("get thing", 3, "connection", slept[4]), ("get thing", 1, "http-429", slept[5])]
    assert len(calls) == 7 and stats.retries == 6 and stats.failures == 0
    assert stats.by_reason == {"http-500": 1, "http-503": 1, "http-429": 3, "connection": 1}


def test_attempt_budget_is_exact() -> None:
    for attempts in (1, 2, 4):
        fn, calls = _failing([_http_error(502)] * attempts + [ValueError("a bug: never reached")])
        slept: list[float] = []
        with pytest.raises(KaggleCallError) as info:
            call_with_retry(fn, "pull x", RetryPolicy(attempts=attempts, base_s=0.01, jitter=0.0), sleep=slept.append)
        assert str(info.value) == f"pull x: still failing after {attempts} attempt(s) (HTTP 502: 502 Server Error); try again later"
        assert len(calls) == attempts and slept == pytest.approx([0.01 * 2**i for i in range(attempts - 1)])


def test_rate_limit_budget_is_time_spent_waiting_inclusive() -> None:
    policy = RetryPolicy(rate_base_s=1.0, rate_cap_s=10.0, rate_max_s=3.0, jitter=0.0)
    fn, _ = _failing([_http_error(429), _http_error(429)])
    slept: list[float] = []
    assert call_with_retry(fn, "list", policy, sleep=slept.append) == "ok"  # waits 1 + 2 = exactly the budget
    assert slept == [1.0, 2.0]
    fn, _ = _failing([_http_error(429)] * 3)
    stats = RetryStats()
    with pytest.raises(KaggleCallError, match=r"^list: Kaggle kept rate-limiting \(HTTP 429\) for 3 s; try again later$"):
        call_with_retry(fn, "list", policy, stats=stats, sleep=lambda s: None)  # a third wait (4 s) would overshoot
    assert (stats.retries, stats.failures) == (2, 1)


def test_failures_are_counted_once_each() -> None:
    stats = RetryStats()
    for _ in range(3):
        with pytest.raises(KaggleCallError):
            call_with_retry(_failing([_http_error(404)])[0], "get", RetryPolicy(), stats=stats, sleep=lambda s: None)
    with pytest.raises(KaggleCallError):
        call_with_retry(_failing([_http_error(500)] * 2)[0], "get", RetryPolicy(attempts=2, base_s=0.0), stats=stats,
                        sleep=lambda s: None)
    assert (stats.failures, stats.retries, stats.by_reason) == (4, 1, {"http-500": 1})


def test_describe_is_one_clean_line() -> None:
    assert describe(_http_error(503, message="Service\n  Unavailable")) == "HTTP 503: 503 Service Unavailable"
    assert describe(requests.ConnectionError("connection   reset\nby peer")) == "ConnectionError: connection reset by peer"
    assert describe(TimeoutError()) == "TimeoutError: TimeoutError"  # no message: the type names it
    assert describe(TruncatedDownload("cut at 10 of 20 bytes")) == "truncated: cut at 10 of 20 bytes"
    assert len(describe(ValueError("x" * 1000))) == 200
