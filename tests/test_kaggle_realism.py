"""kit's real Kaggle code against the emulator's kaggle.com behaviours, one test per unkindness.

Each test starts the emulator in its default realistic mode (windows shrunk to fractions of a
second, `QUICK_REALISM`) and turns up the behaviour it is about; kit talks to it through the real
`kaggle` client. The kernels are the quick hand-written ones of helpers.kaggle_support.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.kaggle_support import (
    COMPETITION,
    quick_rendered,
)

from kernels.config import from_dict
from kit.errors import KitError
from kit.kaggle.client import KernelNotVisible, connect
from kit.kaggle.emulator import ApiError
from kit.kaggle.emulator.faults import FaultConfig
from kit.kaggle.emulator.realism import kaggle_notebook
from kit.kaggle.pull import pull_all
from kit.kaggle.push import push_one, push_queue
from kit.kaggle.reconcile import PollPolicy, push_body, source_fingerprint
from kit.kaggle.retry import STATS, KaggleCallError, RetryPolicy
from kit.kaggle.status import refresh, status_rows, wait_until_done
from kit.kaggle.submit import NOT_VISIBLE, send, wait_for_score
from kit.render.kernel import RenderedKernel, kernel_metadata

FAST_POLL = PollPolicy(first_s=0.1, max_s=0.3)
SHAPE = "TpuV5E8"


def _client(attempts: int = 8):
    return connect(policy=RetryPolicy(attempts=attempts, base_s=0.01, cap_s=0.05, rate_base_s=0.05,
                                      rate_cap_s=0.3, rate_max_s=30))


def _wait(client, ledger, **kwargs):
    return wait_until_done(client, ledger, poll=FAST_POLL, **{"timeout_s": 60, **kwargs})


def test_first_push_meets_403_for_a_kernel_kaggle_does_not_have(world, tmp_path: Path) -> None:
    """GetKernel answers 403 for a kernel that does not exist; kit's first push treats it as new.
    A kernel owned by someone else ends in one clear line, before anything is sent."""
    make, ledger = world
    emulator = make()
    client = _client()
    with pytest.raises(KernelNotVisible) as info:
        client.kernel_info("kit-user", "never-pushed")
    assert info.value.status == 403
    outcome = push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-first"), SHAPE)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    with pytest.raises(ApiError, match="Permission 'kernels.get' was denied"):  # private: others cannot see it
        emulator.get_kernel({"userName": "kit-user", "kernelSlug": "quick-first"}, user="someone-else")
    theirs = quick_rendered(tmp_path / "build", "quick-theirs", owner="someone-else")
    with pytest.raises(KitError, match=r"belongs to 'someone-else' but the Kaggle credentials are 'kit-user'"):
        push_one(client, ledger, theirs, SHAPE)
    assert emulator.stats()["versions"] == 1


def test_status_rides_out_the_read_after_write_lag(world, tmp_path: Path) -> None:
    """Right after a push Kaggle answers 403/404 for the new version; status says what it waits for."""
    make, ledger = world
    emulator = make(lag_s=2.5)
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-lag"), SHAPE)
    notes: list[str] = []
    refresh(client, ledger, on_note=notes.append)
    (row,) = status_rows(ledger.read())
    assert row["status"] == "QUEUED"
    assert notes and "Kaggle does not show kit-user/quick-lag/1 yet" in notes[0]
    rows = _wait(client, ledger)
    assert [r["status"] for r in rows] == ["COMPLETE"]
    assert emulator.stats()["faults"]["lag"] >= 1
    pulled = pull_all(client, ledger, None, tmp_path / "runs")
    assert [o.action for o in pulled] == ["pulled"]


def test_a_stalled_reply_times_out_and_the_push_is_reconciled(world, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The client sets no timeout; kit does. A push whose reply stalls (the work done) times out, is
    reconciled (not pushed twice), and the stalled status and downloads are retried."""
    make, ledger = world
    emulator = make(stall_rate=1.0, stall_s=2.5)
    monkeypatch.setenv("KIT_READ_TIMEOUT_S", "1")
    client = _client()
    outcome = push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-stall"), SHAPE)
    assert (outcome.action, outcome.version) == ("reconciled", 1)
    assert "Timeout" in outcome.note
    assert [r["status"] for r in _wait(client, ledger)] == ["COMPLETE"]
    stats = emulator.stats()
    assert stats["versions"] == 1 and stats["faults"]["stall"] >= 2


def test_lost_notebook_push_is_recognised_under_kagglesmetadata(world, tmp_path: Path) -> None:
    """GetKernel hands a notebook back with Kaggle's metadata block and layout: kit compares cells."""
    make, ledger = world
    emulator = make(FaultConfig(rate_lost_reply=1.0, max_streak=1))
    client = _client()
    script = quick_rendered(tmp_path / "build", "quick-nb")
    code = script.code_file.read_text()
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# quick"},
                          {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                           "source": code}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    nb_path = script.directory / "kernel.ipynb"
    nb_path.write_text(json.dumps(notebook))
    meta = {**script.metadata, "code_file": "kernel.ipynb", "kernel_type": "notebook"}
    (script.directory / "kernel-metadata.json").write_text(json.dumps(meta))
    script.code_file.unlink()
    kernel = RenderedKernel(directory=script.directory, code_file=nb_path, metadata=meta, kernel_id=script.kernel_id,
                            slug=script.slug, content_hash="nb", experiment=script.experiment)
    outcome = push_one(client, ledger, kernel, SHAPE)
    assert (outcome.action, outcome.version) == ("reconciled", 1)
    back = client.kernel_info("kit-user", "quick-nb").source
    assert '"kaggle"' in back and back != push_body(nb_path, "notebook")  # not the bytes we sent
    assert source_fingerprint(back) == source_fingerprint(push_body(nb_path, "notebook"))
    assert emulator.stats()["versions"] == 1


def test_fingerprint_ignores_kaggles_notebook_metadata_but_not_code() -> None:
    body = json.dumps({"cells": [{"cell_type": "code", "source": "print(1)\n"}], "metadata": {}})
    back = kaggle_notebook(body, {"accelerator": "tpuV5e8"})
    assert source_fingerprint(back) == source_fingerprint(body)
    other = json.dumps({"cells": [{"cell_type": "code", "source": "print(2)\n"}], "metadata": {}})
    assert source_fingerprint(other) != source_fingerprint(body)
    assert source_fingerprint("a = 1  \r\nb = 2\n") == source_fingerprint("a = 1\nb = 2")


def test_submit_waits_through_the_404_after_create(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(submission_lag_s=2.0)
    client = _client()
    comp = tmp_path / "competition"
    record = send(client, ledger, comp / "sample_submission.csv", COMPETITION, comp / "sample_submission.csv")
    seen: list[str] = []
    scored = wait_for_score(client, ledger, record, poll=FAST_POLL, timeout_s=30, on_poll=seen.append)
    assert scored["status"] == "COMPLETE" and scored["public_score"]
    assert seen[0] == NOT_VISIBLE and "COMPLETE" in seen
    assert emulator.stats()["submissions"] == 1


def test_sources_kaggle_lacks_stop_the_push(world, tmp_path: Path) -> None:
    """kit checks the datasets before pushing; what slips through (Kaggle names it in the reply and
    pushes anyway) stops the command with one line naming it, the version recorded."""
    make, ledger = world
    emulator = make()
    (tmp_path / "datasets" / "real-data").mkdir()
    client = _client()
    typo = quick_rendered(tmp_path / "build", "quick-typo", datasets=["kit/reel-data"])
    with pytest.raises(KitError, match=r"dataset source 'kit/reel-data': Kaggle has no such dataset.*nothing was pushed"):
        push_queue(client, ledger, [typo], lambda k: SHAPE, poll=FAST_POLL)
    assert emulator.stats()["versions"] == 0
    good = quick_rendered(tmp_path / "build", "quick-good", datasets=["kit/real-data"])
    assert [o.action for o in push_queue(client, ledger, [good], lambda k: SHAPE, poll=FAST_POLL)] == ["pushed"]
    with pytest.raises(KitError, match=r"sources do not exist \(datasets: kit/reel-data\); it pushed v1 anyway"):
        push_one(client, ledger, typo, SHAPE)  # without kit's check: Kaggle's reply names it
    assert ledger.read()["experiments"]["quick-typo"]["versions"][0]["version"] == 1


def test_sweep_at_the_session_cap_waits_for_a_slot_and_rides_out_rate_limits(world, tmp_path: Path) -> None:
    """One of two sessions is held by a session kit did not start; Kaggle rate-limits in spells with
    Retry-After 0. The sweep waits for a free slot instead of stopping; every run completes."""
    make, ledger = world
    emulator = make(max_sessions=1, external_sessions=1, external_session_s=1.5,
                    throttle_rate=0.1, throttle_s=0.4, seed=3)
    client = _client()
    kernels = [quick_rendered(tmp_path / "build", f"quick-cap-{i}", seed=i) for i in range(3)]
    events: list[tuple[str, object]] = []
    before = dict(STATS.by_reason)
    outcomes = push_queue(client, ledger, kernels, lambda k: SHAPE, concurrency=2, poll=FAST_POLL,
                          on_event=lambda kind, payload: events.append((kind, payload)))
    assert [o.action for o in outcomes] == ["pushed"] * 3
    notes = [str(p) for kind, p in events if kind == "note"]
    assert any("session cap is reached (sessions kit did not start count too" in n for n in notes)
    assert [r["status"] for r in _wait(client, ledger)] == ["COMPLETE"] * 3
    stats = emulator.stats()
    assert stats["versions"] == 3 and stats["identical_versions"] == 0
    assert stats["faults"]["throttled"] >= 1
    assert STATS.by_reason.get("http-429", 0) > before.get("http-429", 0)


def test_cancelled_and_endless_runs_end_the_wait(world, tmp_path: Path) -> None:
    """CANCEL_ACKNOWLEDGED is an end; a run that goes on for hours meets --wait's deadline, which names it."""
    make, ledger = world
    make(cancel_rate=1.0, new_script_s=1.0)
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-cancel"), SHAPE)
    assert [r["status"] for r in _wait(client, ledger)] == ["CANCEL_ACKNOWLEDGED"]
    (pulled,) = pull_all(client, ledger, None, tmp_path / "runs")
    assert (pulled.action, pulled.note) == ("not-ready", "CANCEL_ACKNOWLEDGED")


def test_wait_deadline_names_the_runs_still_going(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make, ledger = world
    emulator = make(long_run_rate=1.0, long_run_s=60.0)
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-long"), SHAPE)
    monkeypatch.setenv("KIT_WAIT_TIMEOUT_S", "1.5")
    with pytest.raises(KitError, match=r"gave up after 2 s .*still going on Kaggle: quick-long "
                                       r"\(kit-user/quick-long v1: (QUEUED|NEW_SCRIPT|RUNNING)\)"):
        wait_until_done(client, ledger, poll=FAST_POLL)
    assert emulator.kernel_status({"userName": "kit-user", "kernelSlug": "quick-long"})["status"] == "RUNNING"


def test_not_joined_and_not_phone_verified_are_one_clear_line(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(joined=False, phone_verified=False)
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-rules")
    with pytest.raises(KitError, match=r"competition source .*accept this competition's rules.*join the competition "
                                       r"first: open https://www.kaggle.com/competitions/"):
        push_queue(client, ledger, [kernel], lambda k: SHAPE, poll=FAST_POLL)
    with pytest.raises(KitError, match=r"phone verified.*verify your phone number"):
        push_one(client, ledger, kernel, SHAPE)
    comp = tmp_path / "competition"
    with pytest.raises(KaggleCallError, match=r"HTTP 403.*accept this competition's rules.*join the competition first"):
        send(client, ledger, comp / "sample_submission.csv", COMPETITION, comp / "sample_submission.csv")
    assert ledger.read()["submissions"][0]["status"] == "FAILED"
    assert emulator.stats()["versions"] == 0 and emulator.stats()["submissions"] == 0


def test_internal_accelerator_pool_is_not_offered() -> None:
    exp = from_dict({"name": "x"})
    with pytest.raises(KitError, match=r"accelerator: got 'NvidiaTeslaT4Highmem': an internal, admin-only Kaggle pool that users cannot get; use NvidiaTeslaT4"):
        kernel_metadata(exp, "kit-user", "script", "NvidiaTeslaT4Highmem")
