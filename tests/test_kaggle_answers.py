"""Issue 22's table, one test per row: what kaggle.com does, and what kit must do about it, against the emulator.

Each test turns on one behaviour (a `Realism` switch or a scripted answer, `kit.kaggle.emulator.answers`)
and drives kit's real code through the real `kaggle` client; then Kaggle's limits: the slug rule, the
TPU cap of 1 (a sweep of 3 runs one at a time), the silent P100 substitution.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from helpers.kaggle_support import FAKE_KEY, quick_rendered

from kit.cli import main
from kit.kaggle.client import connect
from kit.kaggle.pull import pull_all
from kit.kaggle.push import PushUncertain, default_concurrency, push_one, push_queue
from kit.kaggle.reconcile import PollPolicy
from kit.kaggle.retry import DEFAULT_CALL_BUDGET_S, RetryPolicy, parse_retry_after
from kit.kaggle.slugs import kaggle_slug, kernel_from_url, slug_problem
from kit.kaggle.status import refresh, status_rows, wait_until_done
from kit.kaggle.timeouts import DEFAULT_CONNECT_S, DEFAULT_READ_S

SAVE = "kernels.KernelsApiService/SaveKernel"
STATUS = "kernels.KernelsApiService/GetKernelSessionStatus"
SHAPE = "TpuV5E8"
FAST_POLL = PollPolicy(first_s=0.1, max_s=0.3)
OLD_STATUS_WORST_S = 6 * 60.0  # the table's figure: 60 s read timeout x 6 attempts


def _client(**kwargs):
    retries: list[tuple[str, int, str, float]] = []
    policy = RetryPolicy(**{"attempts": 4, "base_s": 0.01, "cap_s": 0.05, "rate_base_s": 0.05, "rate_cap_s": 0.3,
                            "rate_max_s": 30, **kwargs})
    client = connect(policy=policy, on_retry=lambda *event: retries.append(event))
    return client, retries


def _set_realism(emulator, **changes) -> None:
    """Change the running emulator's kaggle.com behaviours (the HTTP layer and the decisions read them live)."""
    emulator.behaviours.realism = dataclasses.replace(emulator.realism, **changes)


def _retitle(kernel, title: str, slug: str | None = None):
    """The quick kernel with another title (and id slug): its metadata file rewritten."""
    meta = {**kernel.metadata, "title": title}
    if slug:
        meta["id"] = f"{meta['id'].split('/')[0]}/{slug}"
    (kernel.directory / "kernel-metadata.json").write_text(json.dumps(meta))
    return dataclasses.replace(kernel, metadata=meta, kernel_id=meta["id"])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- row 1: 403 outlasting the window after a lost push reply ------------------------------------
def test_lost_push_reply_while_kaggle_shows_nothing_stops_without_a_second_push(world, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    make, ledger = world
    emulator = make(lag_s=60.0)  # the new kernel answers 403/404 far longer than kit's window
    monkeypatch.setenv("KIT_CONSISTENCY_S", "1")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")  # the default: far longer than the window
    emulator.answers.push(SAVE, ["lost"])
    client, _ = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-hidden")
    with pytest.raises(PushUncertain) as info:
        push_one(client, ledger, kernel, SHAPE)
    line = str(info.value)
    assert "\n" not in line and "nothing was pushed again" in line
    assert "kit status quick-hidden" in line and "--force" in line and "kaggle kernels status" in line
    assert emulator.stats()["versions"] == 1
    assert ledger.read()["experiments"]["quick-hidden"]["pending"], "the pending record is kept"
    with pytest.raises(PushUncertain):  # a rerun while Kaggle still shows nothing: still no second push
        push_one(client, ledger, kernel, SHAPE)
    assert emulator.stats()["versions"] == 1
    _set_realism(emulator, lag_s=0.0)  # Kaggle shows it at last: the rerun records it, pushes nothing
    outcome = push_one(client, ledger, kernel, SHAPE)
    assert (outcome.action, outcome.version) == ("skipped", 1)
    assert emulator.stats()["versions"] == 1 and ledger.read()["counters"]["reconciled_pushes"] == 1


def test_a_pending_push_older_than_the_settle_time_is_deemed_lost(world, tmp_path: Path, monkeypatch) -> None:
    """The other side: Kaggle never got the push (a 500 before any work), so it never shows; once the push is
    older than $KIT_PENDING_SETTLE_S a rerun pushes it, once."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0.5")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")
    emulator.answers.push(SAVE, ["500"])
    client, _ = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-never")
    with pytest.raises(PushUncertain):
        push_one(client, ledger, kernel, SHAPE)
    assert emulator.stats()["versions"] == 0
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "0")
    notes: list[str] = []
    outcome = push_one(client, ledger, kernel, SHAPE, on_note=notes.append)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    assert any("deemed lost" in n for n in notes) and emulator.stats()["versions"] == 1


# -- rows 2 and 3: a revoked key, an expired token ------------------------------------------------
def test_revoked_key_is_named_with_its_fix_by_every_command(world, tmp_path: Path, monkeypatch, capsys) -> None:
    make, ledger = world
    emulator = make()
    client, _ = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-revoked"), SHAPE)
    _set_realism(emulator, key_revoked=True)
    monkeypatch.setenv("KIT_LEDGER", str(ledger.path))
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "revoked.toml"
    experiment.write_text('name = "revoked-push"\n[data]\ndataset = "kit-user/melanoma-32"\n')
    for argv in (["status"], ["pull", "--runs", str(tmp_path / "runs")], ["submissions"], ["push", str(experiment)]):
        assert main(argv) != 0, argv
        line = _one_error_line(capsys.readouterr().err)
        assert "rejected the credentials (HTTP 401" in line and "kaggle.com/settings/api" in line, line
        assert "source" not in line, line  # not blamed on the competition or a dataset
    assert emulator.stats()["versions"] == 1


def test_expired_token_is_one_line_not_a_traceback(world, monkeypatch, capsys) -> None:
    make, _ = world
    make(token_expired=True)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "expired-token-0123456789")
    for argv in (["status"], ["submissions"]):
        assert main(argv) != 0
        captured = capsys.readouterr()
        line = _one_error_line(captured.err)
        assert "check credentials (KAGGLE_API_TOKEN)" in line and "rejected the credentials" in line
        assert "expired-token-0123456789" not in captured.out + captured.err and FAKE_KEY not in captured.err


# -- row 4: the slug Kaggle makes of the title ------------------------------------------------------
@pytest.mark.parametrize(("title", "slug"), [
    ("kit Mélanome ïmages", "kit-melanome-images"),  # letters folded to ASCII
    ("kit ÆØÅ Straße", "kit-aeoa-strasse"),
    ("kit 日本", "kit-ri-ben"),
    ("kit 1,000 images", "kit-1000-images"),  # a comma between digits is dropped
    ("kit a, b; c!", "kit-a-b-c"),  # other punctuation is a dash
    ("kit exp_1.5 -- v2", "kit-exp-1-5-v2"),
    ("  --kit  b5__256--  ", "kit-b5-256"),
    ("kit " + "long-" * 40 + "end", "kit-" + "long-" * 40 + "end"),  # no length limit
])
def test_kit_makes_slugs_as_kaggle_does(title: str, slug: str) -> None:
    assert kaggle_slug(title) == slug
    assert slug_problem(f"kit-user/{slug}", title) == ""
    assert slug_problem("kit-user/other-slug", title).startswith(f"Kaggle makes the slug {slug!r}")


def test_kit_and_the_kaggle_client_agree_on_slugs(tmp_path: Path) -> None:
    """The client's own check (its warning) is the rule's source: kit's slug never draws it."""
    from slugify import slugify

    from kernels.config import from_dict
    from kit.render.kernel import kernel_slug, kernel_title

    for name in ("b5-256_meta", "sweep-lr-0.0003", "x" * 80, "mixup,cutmix"):
        exp = from_dict({"name": name})
        assert kernel_slug(exp) == slugify(kernel_title(exp))
    assert kernel_from_url("https://www.kaggle.com/code/kit-user/quick-1-000-runs") == "kit-user/quick-1-000-runs"
    assert kernel_from_url("/code/kit-user/a-b/edit") == "kit-user/a-b" and kernel_from_url("") is None


def test_title_whose_slug_differs_is_refused_before_anything_is_sent(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    client, _ = _client()
    calls = emulator.stats()["calls"]
    kernel = _retitle(quick_rendered(tmp_path / "build", "quick-x"), "quick Ünïcode, 1,000 runs",
                      slug="quick-n-code-1-000-runs")  # kit's old rule
    with pytest.raises(Exception, match=r"Kaggle makes the slug 'quick-unicode-1000-runs'.*nothing was sent"):
        push_one(client, ledger, kernel, SHAPE)
    with pytest.raises(Exception, match="nothing was sent"):
        push_queue(client, ledger, [kernel], lambda k: SHAPE, poll=FAST_POLL)
    assert emulator.stats()["calls"] == calls and emulator.stats()["versions"] == 0


def test_the_reply_url_is_the_truth_when_kaggle_files_the_kernel_elsewhere(world, tmp_path: Path) -> None:
    """A server whose rule differs from the client's ("1,000" -> "1-000"): kit follows the reply's URL, and the
    run is tracked to its end instead of showing QUEUED for ever."""
    make, ledger = world
    emulator = make(title_slug="dashes")
    client, _ = _client()
    kernel = _retitle(quick_rendered(tmp_path / "build", "quick-1000-runs"), "quick 1,000 runs")
    notes: list[str] = []
    outcome = push_one(client, ledger, kernel, SHAPE, on_note=notes.append)
    assert outcome.kernel == "kit-user/quick-1-000-runs" and "Kaggle filed it as kit-user/quick-1-000-runs" in outcome.note
    assert any("Kaggle filed it as" in n for n in notes)
    assert ledger.read()["experiments"]["quick-1000-runs"]["kernel"] == "kit-user/quick-1-000-runs"
    rows = wait_until_done(client, ledger, poll=FAST_POLL, timeout_s=60)
    assert [r["status"] for r in rows] == ["COMPLETE"]
    assert "kit-user/quick-1-000-runs" in emulator.state["kernels"]


# -- row 5: 429 with Retry-After on a push ---------------------------------------------------------
def test_push_rate_limited_waits_as_retry_after_asks_and_pushes_once(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    emulator.answers.push(SAVE, ["429:120"])
    client, retries = _client(rate_max_s=1800)
    waits: list[float] = []
    notes: list[str] = []
    outcome = push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-429"), SHAPE,
                       sleep=waits.append, on_note=notes.append)
    assert (outcome.action, outcome.version) == ("pushed", 1)  # not "reconciled": a 429 did no work
    assert waits == [120.0], waits  # Retry-After honoured, not 60 s and a second push
    assert retries == [("push kit-user/quick-429", 1, "http-429", 120.0)]  # announced
    assert not any("whether the push landed" in n for n in notes)
    assert emulator.stats()["versions"] == 1


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), ("0", 0.0), ("-5", 0.0), ("1e9", 600.0), ("soon", None), (None, None), ("nan", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: no wait
])
def test_retry_after_is_read_in_both_forms_and_bounded(value, seconds) -> None:
    assert parse_retry_after(value) == seconds
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    policy = RetryPolicy(rate_base_s=1, rate_cap_s=2)
    assert policy.rate_delay(1, 1e6) == 600  # RETRY_AFTER_CAP_S: no wait is unbounded


# -- row 6: a run that ends in ERROR ---------------------------------------------------------------
def test_pull_of_a_run_that_ended_in_error_says_so(world, tmp_path: Path, monkeypatch, capsys) -> None:
    make, ledger = world
    make()
    client, _ = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-boom", fail="out of memory (boom)"), SHAPE)
    assert [r["status"] for r in wait_until_done(client, ledger, poll=FAST_POLL, timeout_s=60)] == ["ERROR"]
    (outcome,) = pull_all(client, ledger, None, tmp_path / "runs")
    assert outcome.action == "failed" and "ended in ERROR on Kaggle" in outcome.note and "boom" in outcome.note
    monkeypatch.setenv("KIT_LEDGER", str(ledger.path))
    assert main(["pull", "--runs", str(tmp_path / "runs")]) != 0
    captured = capsys.readouterr()
    assert "not ready" not in captured.out
    assert "ended in ERROR on Kaggle" in _one_error_line(captured.err)


# -- row 7: a status call that stalls --------------------------------------------------------------
def test_a_stalled_status_call_is_bounded_and_kit_status_still_answers(world, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    make, ledger = world
    emulator = make(lag_s=0.0, new_script_s=0.0)
    client, _ = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-stalled", sleep_s=30), SHAPE)
    emulator.answers.push(STATUS, ["stall"] * 20)
    monkeypatch.setenv("KIT_READ_TIMEOUT_S", "0.5")
    monkeypatch.setenv("KIT_CALL_BUDGET_S", "1.5")
    monkeypatch.setenv("KIT_LEDGER", str(ledger.path))
    started = time.monotonic()
    assert main(["status"]) == 0
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert took < 10, took
    assert "not refreshed" in out and "no good answer within" in out and "quick-stalled" in out
    (row,) = status_rows(ledger.read())
    assert row["status"] == "QUEUED" and row["version"] == 1  # as the ledger had it
    # With the defaults, one stalled call now gives up after the budget plus one last read timeout.
    assert DEFAULT_CALL_BUDGET_S + DEFAULT_READ_S + DEFAULT_CONNECT_S < OLD_STATUS_WORST_S / 2
    emulator.answers.clear()
    refresh(client, ledger)


# -- Kaggle's limits --------------------------------------------------------------------------------
def test_a_tpu_sweep_of_three_runs_one_at_a_time_under_the_tpu_cap(world, tmp_path: Path) -> None:
    """TPU sweeps default to one session at a time; with more asked, the emulator's cap of 1 refuses the
    second push ("Maximum batch TPU session count of 1 reached") and kit waits for the slot."""
    make, ledger = world
    emulator = make(tpu_sessions=1)
    client, _ = _client()
    assert default_concurrency([SHAPE] * 3) == 1 and default_concurrency(["NvidiaTeslaT4"]) == 2
    kernels = [quick_rendered(tmp_path / "build", f"quick-tpu-{i}", seed=i, sleep_s=0.5) for i in range(3)]
    events: list[tuple[str, object]] = []
    push_queue(client, ledger, kernels, lambda k: SHAPE, poll=FAST_POLL, on_event=lambda *e: events.append(e))
    wait_until_done(client, ledger, poll=FAST_POLL, timeout_s=120)
    more = [quick_rendered(tmp_path / "build", f"quick-tpu-more-{i}", seed=10 + i, sleep_s=0.5) for i in range(2)]
    notes: list[str] = []
    push_queue(client, ledger, more, lambda k: SHAPE, concurrency=2, poll=FAST_POLL,
               on_event=lambda kind, payload: notes.append(str(payload)) if kind == "note" else None)
    wait_until_done(client, ledger, poll=FAST_POLL, timeout_s=120)
    assert any("session cap is reached" in n for n in notes), notes
    runs = sorted((v["started"], v["finished"]) for k in emulator.state["kernels"].values() for v in k["versions"])
    assert len(runs) == 5 and all(v is not None for run in runs for v in run)
    assert all(later[0] >= earlier[1] for earlier, later in zip(runs, runs[1:], strict=False)), runs
    assert sum(kind == "waiting" for kind, _ in events) >= 1  # the queue itself waited for the slot


def test_a_retired_accelerator_is_replaced_silently_and_the_client_warning_is_passed_on(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    client, _ = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-p100", shape="NvidiaTeslaP100")
    notes: list[str] = []
    push_one(client, ledger, kernel, "NvidiaTeslaP100", on_note=notes.append)
    assert any("the kaggle client says" in n and "retired" in n for n in notes), notes
    (version,) = emulator.state["kernels"]["kit-user/quick-p100"]["versions"]
    assert version["machine_shape"] == "NvidiaTeslaT4" and emulator.stats()["faults"]["substituted"] == 1


def test_plan_reads_this_weeks_quota_live_and_says_which_figures_are_constants(world, tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    make, ledger = world
    make()
    client, _ = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-quota", sleep_s=1.0), SHAPE)
    wait_until_done(client, ledger, poll=FAST_POLL, timeout_s=60)
    quota = client.quota()
    assert quota.allowed_h == {"gpu": 30.0, "tpu": 20.0} and 0 < quota.used_h["tpu"] < 0.1
    monkeypatch.chdir(tmp_path)
    target = str(Path(__file__).resolve().parents[1] / "experiments" / "kaggle-b5-384-meta.toml")
    assert main(["plan", target, "--runs", str(tmp_path / "runs")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "h left of 20 h this week (live, from `kaggle quota`" in out
    assert main(["plan", target, "--runs", str(tmp_path / "runs"), "--offline"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "weekly quota" in out and "constant from kernels/accelerators.py: --offline" in out and "live" not in out
