"""The Kaggle layer's pieces on their own: retries, ledger, credentials, output names, faults, the CLI's
no-credentials line (a real `kit` process with an empty home)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers.kaggle_support import FAKE_KEY, env_without_kaggle, write_competition, write_credentials

from kit.errors import KitError
from kit.kaggle.client import NO_CREDENTIALS, find_credentials, kaggle_config_dir
from kit.kaggle.emulator import ApiError, Emulator, EmulatorSettings, Realism, score_submission
from kit.kaggle.emulator.faults import FaultConfig, FaultPlan
from kit.kaggle.emulator.realism import Behaviours
from kit.kaggle.ledger import Ledger, experiment_entry, latest_version
from kit.kaggle.pull import safe_output_name
from kit.kaggle.retry import (
    KaggleCallError,
    RetryPolicy,
    RetryStats,
    TruncatedDownload,
    call_with_retry,
    classify,
)

REPO = Path(__file__).resolve().parents[1]
KIT = [sys.executable, "-m", "kit.cli"]


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.headers["Retry-After"] = "0"
    return requests.HTTPError(f"{status} Server Error", response=response)


def test_retry_backs_off_with_bounded_jittered_delays() -> None:
    policy = RetryPolicy(attempts=6, base_s=1.0, cap_s=5.0, jitter=0.5, rate_base_s=2.0)
    rng = random.Random(0)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert 0.5 <= delays[0] <= 1.5 and 1.0 <= delays[1] <= 3.0  # base * 2**(n-1), +-50 %
    assert len({round(d, 6) for d in delays[:3]}) == 3  # jitter: no two alike below the cap

    calls, slept, stats = [], [], RetryStats()
    failures = [_http_error(500), _http_error(429), requests.ConnectionError("reset"), TruncatedDownload("cut")]

    def flaky() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    assert call_with_retry(flaky, "thing", policy, stats=stats, sleep=slept.append, rng=rng) == "ok"
    assert len(calls) == 5 and len(slept) == 4 and stats.retries == 4
    assert stats.by_reason == {"http-500": 1, "http-429": 1, "connection": 1, "truncated": 1}
    assert 2.0 <= slept[1] <= 3.0  # the 429 said Retry-After: 0; kit waits its own rate-limit delay


def test_rate_limits_get_minutes_not_attempts() -> None:
    """Kaggle's throttling outlasts the attempt budget: 429s cost time, not attempts; waits double
    to the cap, a long Retry-After lengthens one, and kit gives up only after rate_max_s of waiting."""
    policy = RetryPolicy(attempts=2, base_s=0.0, rate_base_s=10.0, rate_cap_s=300.0, rate_max_s=1800.0, jitter=0.0)
    slept: list[float] = []
    told: list[tuple[str, int, str, float]] = []
    failures = [_http_error(429) for _ in range(6)]
    long_wait = _http_error(429)
    long_wait.response.headers["Retry-After"] = "400"
    failures.insert(2, long_wait)

    def throttled() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert call_with_retry(throttled, "status a/b", policy, sleep=slept.append,
                           on_retry=lambda *a: told.append(a)) == "ok"
    assert slept == [10.0, 20.0, 400.0, 80.0, 160.0, 300.0, 300.0]  # doubling, capped; Retry-After 400 honoured
    assert [t[2] for t in told] == ["http-429"] * 7
    forever = RetryPolicy(attempts=2, rate_base_s=10.0, rate_cap_s=300.0, rate_max_s=1800.0, jitter=0.0)
    slept.clear()
    with pytest.raises(KaggleCallError, match=r"^status a/b: Kaggle kept rate-limiting \(HTTP 429\) for 1\d{3} s"):
        call_with_retry(lambda: (_ for _ in ()).throw(_http_error(429)), "status a/b", forever, sleep=slept.append)
    assert 1500 <= sum(slept) <= 1800


def test_retry_gives_up_with_one_line_and_skips_permanent_errors() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.0)
    slept: list[float] = []
    with pytest.raises(KaggleCallError) as info:
        call_with_retry(lambda: (_ for _ in ()).throw(_http_error(503)), "push alice/x", policy, sleep=slept.append)
    assert str(info.value).startswith("push alice/x: still failing after 3 attempt(s) (HTTP 503")
    assert "\n" not in str(info.value) and len(slept) == 2
    with pytest.raises(KaggleCallError, match=r"^status alice/x: HTTP 403"):
        call_with_retry(lambda: (_ for _ in ()).throw(_http_error(403)), "status alice/x", policy, sleep=slept.append)
    assert len(slept) == 2  # no retry for a 4xx
    assert classify(ValueError("bad")) is None and classify(_http_error(404)) is None


def test_ledger_is_atomic_and_rejects_garbage(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "ledger.json")
    assert ledger.read()["experiments"] == {}
    with ledger.transaction() as data:
        experiment_entry(data, "a", "u/a-kernel")["versions"].append({"version": 3, "status": "QUEUED"})
        experiment_entry(data, "a")["versions"].append({"version": 5, "status": "COMPLETE"})
    assert latest_version(ledger.read()["experiments"]["a"])["version"] == 5
    with pytest.raises(RuntimeError), ledger.transaction() as data:
        data["experiments"].clear()
        raise RuntimeError("interrupted")
    assert "a" in ledger.read()["experiments"]  # the half-done change never reached the file
    ledger.bump("retries", 2)
    ledger.bump("retries")
    assert ledger.read()["counters"]["retries"] == 3
    assert not [p for p in ledger.path.parent.iterdir() if ".tmp-" in p.name]
    ledger.path.write_text("{not json")
    with pytest.raises(KitError, match=r"ledger\.json: not valid JSON"):
        ledger.read()
    ledger.path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(KitError, match="not a kit ledger"):
        ledger.read()


@pytest.mark.parametrize("name", ["../x.csv", "../../etc/passwd", "/etc/passwd", "a/../../b", "", "a\\..\\b",
                                  "run.json", "~/x", "oof.csv.part", "a\x00b"])
def test_output_names_that_escape_or_clash_are_refused(name: str) -> None:
    with pytest.raises(KitError, match="refusing to pull"):
        safe_output_name(name, "u/k/1")


def test_plain_output_names_are_kept() -> None:
    assert str(safe_output_name("plots/roc.png", "u/k/1")) == "plots/roc.png"
    assert str(safe_output_name("fold0.weights.h5", "u/k/1")) == "fold0.weights.h5"


def test_credentials_are_found_where_the_client_looks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert find_credentials({"HOME": str(home)}) is None
    assert find_credentials({"HOME": str(home), "KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}).source == \
        "KAGGLE_USERNAME/KAGGLE_KEY"
    assert find_credentials({"HOME": str(home), "KAGGLE_USERNAME": "u"}) is None
    assert find_credentials({"HOME": str(home), "KAGGLE_API_TOKEN": "t"}).source == "KAGGLE_API_TOKEN"
    cfg = write_credentials(tmp_path / "cfg")
    info = find_credentials({"HOME": str(home), "KAGGLE_CONFIG_DIR": str(cfg)})
    assert info.source == str(cfg / "kaggle.json") and info.warnings == []
    (cfg / "kaggle.json").chmod(0o644)
    info = find_credentials({"HOME": str(home), "KAGGLE_CONFIG_DIR": str(cfg)})
    assert "chmod 600" in info.warnings[0]
    assert FAKE_KEY not in repr(info)
    (home / ".kaggle").mkdir()
    assert kaggle_config_dir({"HOME": str(home)}) == home / ".kaggle"


def test_missing_credentials_is_one_clear_line(tmp_path: Path) -> None:
    """A real `kit` process with no credentials anywhere: one line on stderr, no client banner, exit 2."""
    home = tmp_path / "home"
    home.mkdir()
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "nocreds"\n[model]\nbackbone = "scratch"\nweights = "none"\n')
    env = {**env_without_kaggle(), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    for args in (["status"], ["push", str(exp)]):
        proc = subprocess.run(KIT + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: {NO_CREDENTIALS}"
        assert "Authentication required" not in proc.stdout + proc.stderr  # the client's banner
        assert "kaggle auth login" not in proc.stdout


def test_fault_plan_is_deterministic_and_bounded() -> None:
    config = FaultConfig.uniform(0.3, seed=11)
    kinds = ("429", "500", "lost_reply", "slow")

    def sequence(plan: FaultPlan, key: str, n: int) -> list[str | None]:
        return [plan.decide(key, kinds) for _ in range(n)]

    a, b = FaultPlan(config), FaultPlan(config)
    seq_a = sequence(a, "push:x", 200)
    assert seq_a == sequence(b, "push:x", 200)
    assert seq_a != sequence(FaultPlan(FaultConfig.uniform(0.3, seed=12)), "push:x", 200)
    share = sum(k is not None for k in seq_a) / len(seq_a)
    assert 0.15 < share < 0.4
    streak = longest = 0
    for kind in seq_a:
        streak = streak + 1 if kind else 0
        longest = max(longest, streak)
    assert longest <= config.max_streak
    always = FaultPlan(FaultConfig(rate_500=1.0, max_streak=2))
    assert sequence(always, "k", 6) == ["500", "500", None, "500", "500", None]
    with pytest.raises(KitError, match="fault rate 1.5"):
        FaultConfig.uniform(1.5)


def test_realistic_behaviours_are_deterministic_and_switchable(tmp_path: Path) -> None:
    """Same seed, same decisions; `Realism.kind()` is the old kind mode (404 for an unknown kernel)."""
    realism = Realism(seed=5, stall_rate=0.3)

    def stalls(seed: int) -> list[bool]:
        behaviours = Behaviours(Realism(seed=seed, stall_rate=0.3))
        return [behaviours.stalls("GetKernel:a/b") for _ in range(100)]

    assert stalls(5) == stalls(5) and stalls(5) != stalls(6)
    seq = stalls(5)
    assert any(seq) and not any(seq[i] and seq[i + 1] for i in range(len(seq) - 1))  # never two in a row per call
    kind = Realism.kind()
    assert (kind.lag_s, kind.stall_rate, kind.throttle_rate, kind.hidden_is_403, kind.invalid_sources) == (
        0.0, 0.0, 0.0, False, False) and realism.hidden_is_403 and realism.lag_s > 0
    comp = write_competition(tmp_path / "comp")
    answers = {}
    for name, mode in (("real", realism), ("kind", kind)):
        settings = EmulatorSettings(state_dir=tmp_path / name, competition_dir=comp, datasets_root=tmp_path)
        emulator = Emulator(settings, realism=mode)
        try:
            with pytest.raises(ApiError) as info:
                emulator.get_kernel({"userName": "kit-user", "kernelSlug": "nothing-here"})
            answers[name] = info.value.status
        finally:
            emulator.stop()
    assert answers == {"real": 403, "kind": 404}


def test_scoring_splits_public_and_private(tmp_path: Path) -> None:
    comp = write_competition(tmp_path / "comp", names=[f"ISIC_{i}" for i in range(20)])
    solution = (comp / "solution.csv").read_text().splitlines()[1:]
    perfect = tmp_path / "perfect.csv"
    perfect.write_text("image_name,target\n" + "".join(f"{r.split(',')[0]},{r.split(',')[1]}\n" for r in solution))
    assert score_submission(perfect, comp / "solution.csv") == (1.0, 1.0)
    inverted = tmp_path / "inverted.csv"
    inverted.write_text("image_name,target\n" + "".join(
        f"{r.split(',')[0]},{1 - int(r.split(',')[1])}\n" for r in solution))
    assert score_submission(inverted, comp / "solution.csv") == (0.0, 0.0)


def test_kit_commands_are_registered() -> None:
    proc = subprocess.run(KIT + ["--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    for name in ("push", "status", "pull", "submit", "submissions", "emulator"):
        assert f" {name} " in proc.stdout or f"    {name}\n" in proc.stdout, name
