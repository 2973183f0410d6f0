"""Kit's Kaggle invariants as properties (docs/kaggle-invariants.md): Hypothesis drives the emulator with
sequences of kit operations, each meeting any class of answer on the RPCs it makes, and the invariants are
asserted after every step.

Answer classes (`kit.kaggle.emulator.answers`): 400 401 403 404 409, 429 with any Retry-After (seconds, a
date, garbage, none), 500, 502/503 with an HTML body, an empty or truncated JSON body, a stall, a lost
reply; plus read-after-write lag of any length and pages of any size. Invariants after each step:
  - no traceback: an operation either succeeds or raises a user error whose message is one line naming
    the call (and, for a 401, the credentials' fix);
  - no duplicate kernel version and no duplicate submission (the emulator counts both);
  - the ledger parses, its records are consistent (versions unique and ordered, a pending push only
    while kit cannot tell) and no temporary file is left beside it;
  - every retry is announced (the retry counter moves with the announcements) and every step ends
    within a bound; a 429's Retry-After is honoured (an announced wait at least that long).
The default profile keeps `make test` in budget; the `deep` test runs the same property far longer.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
from helpers.kaggle_support import COMPETITION, quick_rendered
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.cli import user_errors
from kit.kaggle.client import connect
from kit.kaggle.emulator.answers import ANSWER_CLASSES, retry_after
from kit.kaggle.ledger import Ledger
from kit.kaggle.pull import pull_all
from kit.kaggle.push import PushUncertain, push_one
from kit.kaggle.reconcile import PollPolicy
from kit.kaggle.retry import CREDENTIALS_FIX, STATS, CredentialsRejected, RetryPolicy, parse_retry_after
from kit.kaggle.status import refresh, wait_until_done
from kit.kaggle.submit import refresh_submissions, send

SHAPE = "TpuV5E8"
KERNELS = "kernels.KernelsApiService/"
COMPETITIONS = "competitions.CompetitionApiService/"
# Each operation kit performs, the RPCs it makes, and the words its error lines start with.
OPERATIONS = {
    "push": ([KERNELS + "SaveKernel", KERNELS + "GetKernel"], ("push ", "get kernel ")),
    "status": ([KERNELS + "GetKernelSessionStatus"], ("status ",)),
    "pull": ([KERNELS + "ListKernelSessionOutput"], ("list outputs ", "outputs ")),
    "submit": ([COMPETITIONS + "StartSubmissionUpload", COMPETITIONS + "CreateSubmission",
                COMPETITIONS + "ListSubmissions"], ("submit ", "list submissions ")),
    "submissions": ([COMPETITIONS + "ListSubmissions"], ("list submissions ",)),
    "check competition": ([COMPETITIONS + "ListDataFiles"], ("check competition ",)),
}
WHAT_TO_DO = ("try again", "fix ", "check ", "--force", "kaggle.com", "run the command again")
STEP_BOUND_S = 40.0  # no step may take longer (stalls are 1 s, windows under 1 s, budgets a few s)
RETRY_AFTERS = st.one_of(st.none(), st.sampled_from(["0", "1", "2", "-3", "soon", "1e9",
                                                     "Wed, 21 Oct 2015 07:28:00 GMT"]))
MAX_HONOURED_S = 2.0  # Retry-Afters above this would make the tests slow: 1e9 is capped and given up on


@st.composite
def answers(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(ANSWER_CLASSES))
    if kind == "429":
        after = draw(RETRY_AFTERS)
        return "429" if after is None else f"429:{after}"
    return kind


STEP = st.fixed_dictionaries({
    "op": st.sampled_from(sorted(OPERATIONS)),
    "answers": st.lists(st.tuples(st.integers(0, 2), answers()), min_size=0, max_size=3),
    "lag_s": st.sampled_from([0.0, 0.2, 1.5]),
    "page": st.sampled_from([0, 1, 2, 7]),
})
FAST_POLL = PollPolicy(first_s=0.05, max_s=0.2)


class World:
    """One emulator for all examples; a fresh ledger, kernel name and submission file per step."""

    def __init__(self, make, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in {"KIT_CONSISTENCY_S": "0.6", "KIT_READ_TIMEOUT_S": "0.5", "KIT_CALL_BUDGET_S": "3",
                            "KIT_PENDING_SETTLE_S": "3600", "KIT_SUBMISSION_GRACE_S": "2"}.items():
            monkeypatch.setenv(name, value)
        self.emulator = make(stall_s=1.0, lag_s=0.0, daily_submissions=10_000)
        self.tmp = tmp
        self.events: list[tuple[str, int, str, float]] = []
        self.client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05, rate_base_s=0.05,
                                                 rate_cap_s=0.2, rate_max_s=6, call_budget_s=3),
                              on_retry=lambda *event: self.events.append(event))
        self.counter = itertools.count()
        self.base = Ledger(tmp / "base" / "ledger.json")
        done = quick_rendered(tmp / "build", "quick-done", pad=2000)  # COMPLETE: for pulls
        push_one(self.client, self.base, done, SHAPE)
        wait_until_done(self.client, self.base, poll=FAST_POLL, timeout_s=60)
        push_one(self.client, self.base, quick_rendered(tmp / "build", "quick-long", sleep_s=600), SHAPE)
        self.sample = tmp / "competition" / "sample_submission.csv"

    def fresh_ledger(self) -> Ledger:
        n = next(self.counter)
        ledger = Ledger(self.tmp / f"ledger-{n}" / "ledger.json")
        with ledger.transaction() as data:
            data.update(json.loads(self.base.path.read_text()))
        return ledger

    def run(self, op: str, ledger: Ledger) -> None:
        n = next(self.counter)
        if op == "push":
            push_one(self.client, ledger, quick_rendered(self.tmp / "build", f"quick-prop-{n}", seed=n, pad=100), SHAPE,
                     sleep=time.sleep)
        elif op == "status":
            refresh(self.client, ledger, ["quick-long"])
        elif op == "pull":
            pull_all(self.client, ledger, ["quick-done"], self.tmp / f"runs-{n}")
        elif op == "submit":
            csv = self.tmp / f"sub-{n}.csv"
            rows = self.sample.read_text().splitlines()
            csv.write_text("\n".join([rows[0]] + [f"{r.split(',')[0]},{(i * 7 + n) % 100 / 100}"
                                                  for i, r in enumerate(rows[1:])]) + "\n")
            send(self.client, ledger, csv, COMPETITION, self.sample)
        elif op == "submissions":
            refresh_submissions(self.client, ledger, COMPETITION)
        else:
            problem = self.client.competition_access(COMPETITION)
            assert problem == "" or "\n" not in problem


def _check_invariants(world: World, step: dict, ledger: Ledger, error: BaseException | None, took: float,
                      retries_before: int, events_before: int) -> None:
    op = step["op"]
    if error is not None:
        assert isinstance(error, user_errors()), f"{op}: a traceback ({type(error).__name__}: {error})"
        text = str(error)
        assert text and "\n" not in text, f"{op}: not one line: {text!r}"
        assert text.startswith(OPERATIONS[op][1] + ("check credentials",)), f"{op}: does not name the call: {text}"
        assert any(words in text for words in WHAT_TO_DO), f"{op}: does not say what to do: {text}"
        if CREDENTIALS_FIX in text:
            assert "HTTP 401" in text
    used = [a for call, a in world.emulator.answers.used if call in OPERATIONS[op][0]]
    if "HTTP 401" in str(error or ""):
        assert CREDENTIALS_FIX in str(error), str(error)
    stats = world.emulator.stats()
    assert stats["identical_versions"] == 0, "a duplicate kernel version"
    assert stats["duplicate_submissions"] == 0, "a duplicate submission"
    per_kernel = [len(k["versions"]) for ref, k in world.emulator.state["kernels"].items() if "quick-prop-" in ref]
    assert all(n <= 1 for n in per_kernel), "a kernel pushed twice"
    data = json.loads(ledger.path.read_text())  # parses: written whole
    leftovers = [p.name for p in ledger.path.parent.iterdir() if p.name not in (ledger.path.name, ledger.path.name + ".lock")]
    assert not leftovers, f"a temporary file left: {leftovers}"
    for name, entry in data["experiments"].items():
        numbers = [v["version"] for v in entry["versions"]]
        assert numbers == sorted(set(numbers)), name
        if entry.get("pending"):
            assert isinstance(error, (PushUncertain, CredentialsRejected)), f"{name}: a pending push left unsaid"
    assert took < STEP_BOUND_S, f"{op} took {took:.0f} s"
    new_events = world.events[events_before:]
    assert STATS.retries - retries_before == len(new_events), "a retry that was not announced"
    honoured = [parse_retry_after(retry_after(a)) for a in used if a.startswith("429:")]
    asked = max([h for h in honoured if h is not None and h <= MAX_HONOURED_S] or [0.0])
    rate_waits = [wait for _, _, reason, wait in new_events if reason == "http-429"]
    if asked and rate_waits:
        assert max(rate_waits) >= asked - 0.01, (asked, rate_waits)


def _property(world: World, steps: list[dict]) -> None:
    ledger = world.fresh_ledger()
    for step in steps:
        world.emulator.answers.clear()
        world.emulator.behaviours.realism = type(world.emulator.realism)(
            **{**world.emulator.realism.__dict__, "lag_s": step["lag_s"], "max_page_size": step["page"]})
        calls = OPERATIONS[step["op"]][0]
        for index, answer in step["answers"]:
            world.emulator.answers.push(calls[min(index, len(calls) - 1)], [answer])
        retries_before, events_before = STATS.retries, len(world.events)
        started = time.monotonic()
        error: BaseException | None = None
        try:
            world.run(step["op"], ledger)
        except Exception as exc:  # judged by the invariants
            error = exc
        _check_invariants(world, step, ledger, error, time.monotonic() - started, retries_before, events_before)


PROFILE = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture()
def prop_world(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    make, _ = world
    return World(make, tmp_path, monkeypatch)


@PROFILE
@given(steps=st.lists(STEP, min_size=2, max_size=3))
def test_every_rpc_meets_every_answer_class_and_the_invariants_hold(prop_world: World, steps: list[dict]) -> None:
    _property(prop_world, steps)


@pytest.mark.deep
@settings(PROFILE, max_examples=200, derandomize=False)
@given(steps=st.lists(STEP, min_size=1, max_size=5))
def test_deep_every_rpc_meets_every_answer_class(prop_world: World, steps: list[dict]) -> None:
    _property(prop_world, steps)


def test_each_answer_class_once_on_each_rpc(prop_world: World) -> None:
    """The exhaustive corner of the property: every answer class on every RPC of every operation, one step each."""
    for op, (calls, _) in sorted(OPERATIONS.items()):
        for index in range(len(calls)):
            for answer in ANSWER_CLASSES:
                # ListSubmissions is asked during a submit only when CreateSubmission's reply was lost
                first = [(1, "lost")] if (op, index) == ("submit", 2) else []
                _property(prop_world, [{"op": op, "answers": [*first, (index, answer)], "lag_s": 0.0, "page": 1}])
                assert prop_world.emulator.answers.used, (op, calls[index], answer)
