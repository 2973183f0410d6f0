"""Guards on settling a push whose reply was lost (kit.kaggle.reconcile): a pending push is adopted only when
Kaggle shows it, dropped only when Kaggle showed the kernel without it or the push is older than the settle
time, and the windows are the ones the environment sets (the real `kaggle` client against the emulator)."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

import pytest
from helpers.kaggle_support import quick_rendered

from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.ledger import Ledger, now_iso
from kit.kaggle.reconcile import (
    CONSISTENCY_POLLS,
    DEFAULT_CONSISTENCY_S,
    DEFAULT_POLL_MAX_S,
    DEFAULT_POLL_S,
    DEFAULT_SETTLE_S,
    PollPolicy,
    age_s,
    consistency_s,
    env_seconds,
    landed,
    push_body,
    reconcile_pending,
    record_version,
    settle_s,
    source_fingerprint,
)
from kit.kaggle.retry import RetryPolicy

SHAPE = "TpuV5E8"
OLD = "2024-01-01T00:00:00Z"


def _client():
    return connect(policy=RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                      rate_max_s=30))


def _pending(ledger, name: str, kernel: str, body_sha256: str, started_at: str | None, since: int = 0) -> None:
    pending = {"content_hash": f"hash-of-{name}", "body_sha256": body_sha256, "since_version": since,
               "accelerator": SHAPE}
    if started_at is not None:
        pending["started_at"] = started_at
    with ledger.transaction() as data:
        data["experiments"][name] = {"kernel": kernel, "versions": [], "pending": pending}


def test_the_windows_are_the_environments_or_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """$KIT_CONSISTENCY_S, $KIT_PENDING_SETTLE_S, $KIT_POLL_S and $KIT_POLL_MAX_S set the windows and the poll
    schedule (the process environment when none is passed); unset, they are 60 s, 900 s, 10 s and 120 s."""
    for name in ("KIT_CONSISTENCY_S", "KIT_PENDING_SETTLE_S", "KIT_POLL_S", "KIT_POLL_MAX_S"):
        monkeypatch.delenv(name, raising=False)
    assert (consistency_s(), settle_s()) == (DEFAULT_CONSISTENCY_S, DEFAULT_SETTLE_S) == (60.0, 900.0)
    assert PollPolicy.from_env() == PollPolicy(DEFAULT_POLL_S, DEFAULT_POLL_MAX_S) == PollPolicy(10.0, 120.0)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "7.5")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "11")
    monkeypatch.setenv("KIT_POLL_S", "3")
    monkeypatch.setenv("KIT_POLL_MAX_S", "4")
    assert (consistency_s(), settle_s()) == (7.5, 11.0)
    assert PollPolicy.from_env() == PollPolicy(3.0, 4.0)
    assert PollPolicy.from_env({"KIT_POLL_S": "2"}) == PollPolicy(2.0, DEFAULT_POLL_MAX_S)  # a mapping passed wins


def test_an_empty_cell_has_one_fingerprint_however_its_source_is_written() -> None:
    """Kaggle may hand an empty cell back with `source` missing, null, "" or []: the same notebook, the same
    fingerprint, and not the fingerprint of a cell holding text."""
    def notebook(cell: dict) -> str:
        return json.dumps({"cells": [{"cell_type": "markdown", "source": "# title"}, {"cell_type": "code", **cell}],
                           "metadata": {}})

    forms = [{}, {"source": None}, {"source": ""}, {"source": []}, {"source": [""]}]
    prints = {source_fingerprint(notebook(cell)) for cell in forms}
    assert len(prints) == 1
    assert source_fingerprint(notebook({"source": "x"})) not in prints


def test_a_young_pending_push_kaggle_shows_nothing_of_is_kept(world, tmp_path: Path, monkeypatch) -> None:
    """Kaggle shows nothing of the kernel (403/404 all the window long) and the push is younger than the settle
    time: nothing is known, so the pending record is kept (never pushed again yet), whatever its age field
    says only once it is old."""
    make, ledger = world
    make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")
    client = _client()
    _pending(ledger, "guard-young", "kit-user/guard-young", "0" * 64, now_iso())
    notes: list[str] = []
    assert reconcile_pending(client, ledger, "guard-young", sleep=lambda s: None, on_note=notes.append) is None
    entry = ledger.read()["experiments"]["guard-young"]
    assert entry["pending"] and entry["pending"]["started_at"] and entry["versions"] == []
    assert not any("deemed lost" in n for n in notes)


def test_an_old_pending_push_kaggle_shows_nothing_of_is_deemed_lost_and_says_so(world, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """Older than $KIT_PENDING_SETTLE_S (or with no readable start time) and still nothing shown: the pending
    record is cleared, with a line saying the push is deemed lost."""
    make, ledger = world
    make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")
    client = _client()
    for name, started in (("guard-old", OLD), ("guard-unstamped", None), ("guard-garbled", "yesterday")):
        _pending(ledger, name, f"kit-user/{name}", "0" * 64, started)
        notes: list[str] = []
        assert reconcile_pending(client, ledger, name, sleep=lambda s: None, on_note=notes.append) is None
        assert ledger.read()["experiments"][name]["pending"] is None, name
        assert any(n.startswith(f"{name}: Kaggle still shows nothing of the push of ") and n.endswith(
            " s ago: deemed lost") for n in notes), (name, notes)
    # A young push with a short settle time set in the environment is deemed lost too.
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "0")
    _pending(ledger, "guard-short", "kit-user/guard-short", "0" * 64, now_iso())
    assert reconcile_pending(client, ledger, "guard-short", sleep=lambda s: None) is None
    assert ledger.read()["experiments"]["guard-short"]["pending"] is None


def test_a_kernel_shown_without_our_version_clears_the_pending_push_without_calling_it_unseen(
        world, tmp_path: Path, monkeypatch) -> None:
    """Kaggle answered (it shows the kernel, at a version holding other source): the push did not land and is
    cleared at once, however young; the 'still shows nothing' line is only for a kernel Kaggle does not show."""
    make, ledger = world
    make(lag_s=0.0)  # Kaggle shows the kernel at once
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-shown")
    assert client.push(kernel.directory).version == 1  # someone else's push: other source than ours
    _pending(ledger, "guard-shown", kernel.kernel_id, "0" * 64, now_iso())
    notes: list[str] = []
    assert reconcile_pending(client, ledger, "guard-shown", sleep=lambda s: None, on_note=notes.append) is None
    entry = ledger.read()["experiments"]["guard-shown"]
    assert entry["pending"] is None and entry["versions"] == []
    assert not any("deemed lost" in n or "shows nothing" in n for n in notes), notes


def test_a_landed_push_is_recorded_as_reconciled_and_the_wait_is_announced(world, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """A push Kaggle shows (our source, a newer version) is recorded with the pending record's hashes and
    machine, counted as a reconciled push (not a plain one); while kit waits for Kaggle to show it, the caller
    hears what it waits for."""
    make, ledger = world
    emulator = make(lag_s=0.6)  # the new kernel answers 404 for a moment after the push
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-landed")
    assert client.push(kernel.directory).version == 1  # what the lost reply had sent
    _pending(ledger, "guard-landed", kernel.kernel_id, source_fingerprint(kernel.code_file.read_text()), OLD)
    notes: list[str] = []
    assert reconcile_pending(client, ledger, "guard-landed", sleep=lambda s: time.sleep(0.1),
                             on_note=notes.append) == 1
    data = ledger.read()
    entry = data["experiments"]["guard-landed"]
    assert entry["pending"] is None and entry["kernel"] == kernel.kernel_id
    (version,) = entry["versions"]
    assert (version["version"], version["content_hash"], version["accelerator"], version["status"]) == (
        1, "hash-of-guard-landed", SHAPE, "QUEUED")
    assert data["counters"].get("reconciled_pushes") == 1 and not data["counters"].get("pushes")
    assert any(n.startswith(f"{kernel.kernel_id}: waiting up to 30 s for Kaggle to show whether the push landed")
               for n in notes), notes
    assert emulator.stats()["versions"] == 1


def test_a_repush_of_unchanged_source_is_not_mistaken_for_the_version_already_there(world, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """`kit push --force` of unchanged source whose reply was lost, and that never landed: Kaggle shows the
    version that was there before the push (v1, the very same source). Only a version newer than the one
    before the push can be ours, so nothing is adopted and the pending record is cleared."""
    make, ledger = world
    make(lag_s=0.0)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-forced")
    assert client.push(kernel.directory).version == 1
    _pending(ledger, "guard-forced", kernel.kernel_id, source_fingerprint(kernel.code_file.read_text()), now_iso(),
             since=1)
    assert reconcile_pending(client, ledger, "guard-forced", sleep=lambda s: None) is None
    entry = ledger.read()["experiments"]["guard-forced"]
    assert entry["pending"] is None and entry["versions"] == []


def test_the_callers_window_bounds_the_wait_for_a_push_to_show(world, tmp_path: Path, monkeypatch) -> None:
    """`landed(window_s=...)` waits that long, not $KIT_CONSISTENCY_S, and says so, asking Kaggle again every
    sixth of the window (a push that shows early is seen early, not at the end); Kaggle showing nothing for
    the whole window leaves the answer unknown (not seen)."""
    make, ledger = world
    make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = _client()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert sum(slept) <= 1.0 + 1e-6, f"waited {sum(slept)} s, past the 1 s window"
        time.sleep(seconds)

    notes: list[str] = []
    pending = {"body_sha256": "0" * 64, "since_version": 0}
    landing = landed(client, "kit-user/guard-never-pushed", pending, sleep, notes.append, window_s=1.0)
    assert (landing.version, landing.seen) == (None, False)
    assert len(slept) >= 2 and max(slept) <= 1.0 / CONSISTENCY_POLLS + 1e-9, slept
    assert notes == ["kit-user/guard-never-pushed: waiting up to 1 s for Kaggle to show whether the push landed "
                     "(it lags behind writes; nothing is pushed again before)"]


def test_the_body_kit_fingerprints_is_byte_for_byte_what_the_kaggle_client_sends(world, tmp_path: Path) -> None:
    """kit fingerprints a push by the text the client sends: a script as it is, a notebook with the outputs of
    its code cells emptied (other cells keep theirs) and list sources joined, re-serialised. Checked against
    what the real client sent to the emulator."""
    make, _ = world
    emulator = make()
    client = _client()
    script = quick_rendered(tmp_path / "build", "guard-body")
    assert client.push(script.directory).version == 1
    assert (emulator.version_dir(script.kernel_id, 1) / "source.py").read_text() == push_body(script.code_file,
                                                                                            "script")
    notebook = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Guard\n", "body"], "outputs": ["kept"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "source": ["x = 1\n", "print(x)"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]},
        {"cell_type": "code", "metadata": {}, "source": "print(2)"},
        {"cell_type": "raw", "metadata": {}, "source": []}],
        "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path = script.directory / "kernel.ipynb"
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    meta = {**script.metadata, "code_file": "kernel.ipynb", "kernel_type": "notebook"}
    (script.directory / "kernel-metadata.json").write_text(json.dumps(meta))
    script.code_file.unlink()
    assert client.push(script.directory).version == 2
    sent = (emulator.version_dir(script.kernel_id, 2) / "source.ipynb").read_text()
    body = push_body(path, "notebook")
    assert body == sent
    cells = json.loads(body)["cells"]
    assert [c.get("outputs") for c in cells] == [["kept"], [], None, None]
    assert [c["source"] for c in cells] == ["# Guard\nbody", "x = 1\nprint(x)", "print(2)", ""]
    assert push_body(path, "script") == path.read_text()  # only a notebook is rewritten


def test_a_recorded_version_replaces_one_of_the_same_number_keeps_the_order_and_is_counted(tmp_path: Path) -> None:
    """Recording a version writes what was pushed (the pending record's hashes and machine), QUEUED and not yet
    checked or pulled, under the kernel Kaggle filed it as; a version of the same number is replaced, not
    doubled; versions stay in number order; the pending record is cleared; the push is counted as a plain or a
    reconciled one."""
    ledger = Ledger(tmp_path / "ledger.json")
    with ledger.transaction() as data:
        data["experiments"]["guard-rec"] = {"kernel": "kit-user/guard-rec", "pending": {"content_hash": "old"},
                                            "versions": [{"version": 3, "status": "COMPLETE", "content_hash": "c3"},
                                                         {"version": 5, "status": "RUNNING", "content_hash": "c5"}]}
    pending = {"content_hash": "c4", "body_sha256": "b4", "since_version": 3, "accelerator": SHAPE,
               "started_at": OLD}
    before = time.time()
    record_version(ledger, "guard-rec", "kit-user/guard-rec-2", 4, pending, reconciled=False)
    record_version(ledger, "guard-rec", "kit-user/guard-rec-2", 5, {**pending, "content_hash": "c5b"}, reconciled=True)
    record_version(ledger, "guard-rec", "kit-user/guard-rec-2", 5, {**pending, "content_hash": "c5c"}, reconciled=True)
    data = ledger.read()
    entry = data["experiments"]["guard-rec"]
    assert entry["kernel"] == "kit-user/guard-rec-2" and entry["pending"] is None
    assert [(v["version"], v["content_hash"]) for v in entry["versions"]] == [(3, "c3"), (4, "c4"), (5, "c5c")]
    four = entry["versions"][1]
    stamp = four.pop("pushed_at")
    assert four == {"version": 4, "content_hash": "c4", "body_sha256": "b4", "accelerator": SHAPE,
                    "status": "QUEUED", "failure": "", "checked_at": None, "run_dir": None}
    assert before - 1 <= calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) <= time.time() + 1
    assert (data["counters"]["pushes"], data["counters"]["reconciled_pushes"]) == (1, 2)
    record_version(ledger, "guard-new", "kit-user/guard-new", 1, pending, reconciled=False)
    assert ledger.read()["counters"]["pushes"] == 2
    assert ledger.read()["experiments"]["guard-new"]["kernel"] == "kit-user/guard-new"


def test_a_duration_from_the_environment_is_seconds_or_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset or empty: the default; a number (fractions, 0) is taken as is; anything else, or a negative number,
    is one line naming the variable and its value."""
    monkeypatch.delenv("KIT_GUARD_S", raising=False)
    assert env_seconds("KIT_GUARD_S", 12.5) == 12.5
    for raw, seconds in (("", 12.5), ("0", 0.0), ("2.5", 2.5), ("1e3", 1000.0)):
        monkeypatch.setenv("KIT_GUARD_S", raw)
        assert env_seconds("KIT_GUARD_S", 12.5) == seconds, raw
    for raw, why in (("soon", "expected a number of seconds"), ("-1", "expected seconds >= 0")):
        monkeypatch.setenv("KIT_GUARD_S", raw)
        with pytest.raises(KitError) as info:
            env_seconds("KIT_GUARD_S", 12.5)
        assert str(info.value) == f"$KIT_GUARD_S={raw!r}: {why}"


def test_the_age_of_a_ledger_stamp_is_seconds_since_it_and_unknown_ages_are_infinite() -> None:
    """A push's age is read from its UTC stamp (an hour ago is 3600 s, whatever the local time zone); a missing or
    unreadable stamp is infinitely old, so a pending push without one can be settled."""
    hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    assert 3599 <= age_s(hour_ago) <= 3602
    assert 0 <= age_s(now_iso()) <= 2
    assert age_s(None) == age_s("") == age_s("yesterday") == age_s("2024-01-01 00:00:00") == float("inf")
