"""Guards on what `kit status` shows and how often it asks: the table holds every run's own kernel,
version, machine, status (and its colour), push time and folder; a failed run's log tail is
Kaggle's text; the poll schedule comes from the environment; a notebook is recognised by its cells
whatever Kaggle does to its layout (so a lost push reply is matched to the right version)."""

from __future__ import annotations

import io
import json
import time

import pytest
from helpers.kaggle_support import quick_rendered

from kit.console import KitConsole, layout, print_grid
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.ledger import empty_ledger, now_iso
from kit.kaggle.push import push_one
from kit.kaggle.reconcile import DEFAULT_POLL_MAX_S, DEFAULT_POLL_S, PollPolicy, source_fingerprint
from kit.kaggle.retry import RetryPolicy
from kit.kaggle.status import (
    DEFAULT_WAIT_TIMEOUT_S,
    LOG_TAIL_LINES,
    STATUS_STYLE,
    is_done,
    log_tail,
    log_text,
    next_steps,
    refresh,
    selected,
    status_rows,
    status_table,
    wait_timeout_s,
    wait_until_done,
)


def _ledger() -> dict:
    data = empty_ledger()
    data["experiments"] = {
        "effnet-b0": {"kernel": "kit-user/effnet-b0", "pending": None, "versions": [
            {"version": 1, "status": "ERROR", "pushed_at": "2024-03-01T10:00:00Z", "accelerator": "NvidiaTeslaT4"},
            {"version": 2, "status": "COMPLETE", "pushed_at": "2024-03-02T11:22:33Z", "accelerator": "TpuV5E8",
             "run_dir": "runs/effnet-b0/v2"}]},
        "pushing": {"kernel": "kit-user/pushing", "versions": [], "pending": {"content_hash": "x"}},
        "never": {"kernel": None, "versions": [], "pending": None},
    }
    return data


def test_the_table_shows_each_runs_own_facts() -> None:
    rows = status_rows(_ledger())
    assert [r["experiment"] for r in rows] == ["effnet-b0", "never", "pushing"]
    assert rows[0] == {"experiment": "effnet-b0", "kernel": "kit-user/effnet-b0", "version": 2, "status": "COMPLETE",
                       "pushed_at": "2024-03-02T11:22:33Z", "pulled": "runs/effnet-b0/v2", "failure": "",
                       "log_tail": [], "accelerator": "TpuV5E8"}
    assert (rows[1]["kernel"], rows[1]["version"], rows[1]["status"]) == ("", None, "-")
    assert rows[2]["status"] == "PUSHING"
    grid = status_table(rows)
    assert grid.title == "Kaggle runs"
    assert [c.header for c in grid.cols] == ["experiment", "kernel", "v", "machine", "status", "pushed", "pulled into"]
    assert grid.rows[0] == ("effnet-b0", "kit-user/effnet-b0", "2", "TpuV5E8", "COMPLETE", "2024-03-02\n11:22:33",
                            "runs/effnet-b0/v2")
    assert grid.rows[1] == ("never", "", "-", "", "-", "-", "-")  # nothing yet: dashes, not 'None'
    assert grid.styles == (STATUS_STYLE["COMPLETE"], "", "")  # coloured by status; unknown ones plain


def test_log_text_and_tail() -> None:
    kaggle_log = json.dumps([{"stream_name": "stdout", "time": 1.0, "data": "epoch 1\n"},
                             {"stream_name": "stderr", "time": 2.0, "data": "Traceback\nValueError: bad\n"},
                             {"stream_name": "stdout", "time": 3.0}])
    assert log_text(kaggle_log) == "epoch 1\nTraceback\nValueError: bad\n"
    assert log_text("plain text\n") == "plain text\n" and log_text("") == "" and log_text(None) == ""  # type: ignore[arg-type]
    assert log_text('{"a": 1}') == '{"a": 1}' and log_text("[1, 2]") == "[1, 2]"
    assert log_tail(kaggle_log) == ["epoch 1", "Traceback", "ValueError: bad"]
    many = "\n".join(f"line {i}" for i in range(50)) + "\n\n"
    assert log_tail(many) == [f"line {i}" for i in range(50 - LOG_TAIL_LINES, 50)]
    assert log_tail(many, lines=2) == ["line 48", "line 49"]


def test_poll_schedule_from_the_environment() -> None:
    assert PollPolicy.from_env({}) == PollPolicy(first_s=DEFAULT_POLL_S, max_s=DEFAULT_POLL_MAX_S)
    assert PollPolicy.from_env({"KIT_POLL_S": "2", "KIT_POLL_MAX_S": "5"}) == PollPolicy(first_s=2.0, max_s=5.0)
    assert PollPolicy.from_env({"KIT_POLL_S": "500"}) == PollPolicy(first_s=500.0, max_s=500.0)  # max >= first
    assert PollPolicy.from_env({"KIT_POLL_MAX_S": "30"}).max_s == 30.0
    delays = PollPolicy(first_s=1.0, max_s=3.0, factor=1.5).delays()
    assert [next(delays) for _ in range(5)] == [1.0, 1.5, 2.25, 3.0, 3.0]
    with pytest.raises(KitError, match=r"^KIT_POLL_S / KIT_POLL_MAX_S: expected numbers \(.*'often'"):
        PollPolicy.from_env({"KIT_POLL_S": "often"})


def test_a_notebook_is_recognised_by_its_cells_not_its_layout() -> None:
    sent = {"cells": [{"cell_type": "markdown", "source": ["# Title\n", "text"]},
                      {"cell_type": "code", "source": "x = 1\r\nprint(x)\n\n", "outputs": []}],
            "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4}
    back = {"nbformat": 4, "metadata": {"kaggle": {"accelerator": "tpu"}},  # Kaggle's own metadata and layout
            "cells": [{"cell_type": "markdown", "source": "# Title\ntext", "metadata": {}},
                      {"cell_type": "code", "source": ["x = 1\n", "print(x)"], "outputs": [{"text": "1"}]}]}
    assert source_fingerprint(json.dumps(sent)) == source_fingerprint(json.dumps(back, indent=2))
    edited = json.loads(json.dumps(back))
    edited["cells"][1]["source"] = ["x = 2\n", "print(x)"]
    assert source_fingerprint(json.dumps(edited)) != source_fingerprint(json.dumps(sent))
    retyped = json.loads(json.dumps(back))
    retyped["cells"][0]["cell_type"] = "raw"
    assert source_fingerprint(json.dumps(retyped)) != source_fingerprint(json.dumps(sent))
    empty = {"cells": [{"cell_type": "code", "source": None}]}
    assert source_fingerprint(json.dumps(empty)) == source_fingerprint(json.dumps({"cells": [{"cell_type": "code"}]}))
    assert source_fingerprint("x = 1\r\nprint(x)   \n\n") == source_fingerprint("x = 1\nprint(x)")  # scripts too
    assert source_fingerprint("x = 1\n") != source_fingerprint("x = 2\n")


def _row(name: str, status: str, pulled: str = "") -> dict:
    return {"experiment": name, "kernel": f"kit-user/{name}", "version": 1, "status": status, "pushed_at": "",
            "pulled": pulled, "failure": "", "log_tail": [], "accelerator": "TpuV5E8"}


def test_the_next_command_is_named_for_each_kind_of_run() -> None:
    """After the table, one line per kind of run says what to run next: runs still going (`kit status --wait`),
    finished ones not pulled (`kit pull`), pulled ones (`kit blend`, `kit report`), failed ones (`kit
    preflight`, `kit push`), each naming its runs in the table's order; no line for a kind with no run."""
    rows = [_row("queued", "QUEUED"), _row("done", "COMPLETE"), _row("pushing", "PUSHING"),
            _row("pulled", "COMPLETE", "runs/pulled/v1"), _row("broke", "ERROR"), _row("gone", "NOT_FOUND"),
            _row("cancelled", "CANCEL_ACKNOWLEDGED"), _row("running", "RUNNING"), _row("done-too", "COMPLETE")]
    assert next_steps(rows) == [
        "still going on Kaggle (queued, pushing, running): `kit status --wait` follows them; Ctrl-C there stops "
        "only the waiting, never the kernels",
        "finished (done, done-too): `kit pull` downloads and verifies their outputs into runs/",
        "pulled (pulled): `kit blend NAME` blends them by ensembles/NAME.toml; `kit report` ranks every run",
        "failed (broke, gone, cancelled): the log tail is above; `kit preflight EXP` reproduces most failures "
        "locally in seconds; after the fix `kit push EXP` (--force re-pushes it unchanged)",
    ]
    assert next_steps([_row("pulled", "COMPLETE", "runs/pulled/v1")]) == [
        "pulled (pulled): `kit blend NAME` blends them by ensembles/NAME.toml; `kit report` ranks every run"]
    assert next_steps([_row("q", "QUEUED")]) == [
        "still going on Kaggle (q): `kit status --wait` follows them; Ctrl-C there stops only the waiting, never "
        "the kernels"]
    assert next_steps([]) == []
    assert [is_done(_row("x", s)) for s in ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED", "NOT_FOUND", "QUEUED",
                                            "RUNNING", "CANCEL_REQUESTED", "PUSHING", "-")] == [True] * 4 + [False] * 5


def test_the_wait_is_bounded_by_the_option_else_the_environment_else_13_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kit status --wait` gives up after --timeout, else $KIT_WAIT_TIMEOUT_S, else 13 h (Kaggle's 12-hour session
    limit plus queueing); an option of 0 is a real bound, not 'unset'."""
    monkeypatch.delenv("KIT_WAIT_TIMEOUT_S", raising=False)
    assert wait_timeout_s(None) == DEFAULT_WAIT_TIMEOUT_S == 13 * 3600.0
    assert wait_timeout_s(0.0) == 0.0 and wait_timeout_s(90.0) == 90.0
    monkeypatch.setenv("KIT_WAIT_TIMEOUT_S", "45")
    assert wait_timeout_s(None) == 45.0 and wait_timeout_s(7.0) == 7.0


def test_runs_are_chosen_by_name_and_an_unknown_name_is_one_line() -> None:
    """No names: every experiment of the ledger, sorted; names: those, in the order given; a name the ledger does
    not hold is one line naming it and what the ledger has."""
    data = _ledger()
    assert selected(data, None) == selected(data, []) == ["effnet-b0", "never", "pushing"]
    assert selected(data, ["pushing", "effnet-b0"]) == ["pushing", "effnet-b0"]
    with pytest.raises(KitError) as info:
        selected(data, ["effnet-b0", "effnet-b9", "other"])
    assert str(info.value) == "ledger: no pushed experiment named 'effnet-b9' (have: effnet-b0, never, pushing)"
    with pytest.raises(KitError) as info:
        selected(empty_ledger(), ["x"])
    assert str(info.value) == "ledger: no pushed experiment named 'x' (have: none)"


STATUS_CALL = "kernels.KernelsApiService/GetKernelSessionStatus"
OUTPUTS_CALL = "kernels.KernelsApiService/ListKernelSessionOutput"


def test_refresh_writes_kaggles_answer_for_each_run_still_going(world, tmp_path, monkeypatch) -> None:
    """`refresh` asks Kaggle about each run not finished yet and writes its status: a failed run's message and log
    tail; a version Kaggle does not show stays QUEUED (said so) within $KIT_VISIBLE_GRACE_S of its push, NOT_FOUND
    after; a status call Kaggle does not answer leaves the ledger's status (said so); finished runs are not asked
    about again; a pending push is settled only once it is old enough not to be a push still in flight."""
    make, ledger = world
    emulator = make(lag_s=0.0, new_script_s=0.0)
    client = connect(policy=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    for name, fail in (("guard-ok", ""), ("guard-boom", "out of memory (boom)")):
        push_one(client, ledger, quick_rendered(tmp_path / "build", name, fail=fail), "TpuV5E8")
    with ledger.transaction() as data:
        for name, pushed in (("guard-young", now_iso()), ("guard-old", "2024-01-01T00:00:00Z")):
            data["experiments"][name] = {"kernel": f"kit-user/{name}", "pending": None, "versions": [
                {"version": 1, "status": "QUEUED", "pushed_at": pushed, "accelerator": "TpuV5E8"}]}
        data["experiments"]["guard-in-flight"] = {"kernel": "kit-user/guard-in-flight", "versions": [], "pending": {
            "content_hash": "h", "body_sha256": "0" * 64, "since_version": 0, "accelerator": "TpuV5E8",
            "started_at": now_iso()}}
        data["experiments"]["guard-stale"] = {"kernel": "kit-user/guard-stale", "versions": [], "pending": {
            "content_hash": "h", "body_sha256": "0" * 64, "since_version": 0, "accelerator": "TpuV5E8",
            "started_at": "2024-01-01T00:00:00Z"}}
    monkeypatch.setenv("KIT_VISIBLE_GRACE_S", "50")
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    notes: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        notes.clear()
        refresh(client, ledger, on_note=notes.append)
        rows = {r["experiment"]: r for r in status_rows(ledger.read())}
        if rows["guard-ok"]["status"] == "COMPLETE" and rows["guard-boom"]["status"] == "ERROR":
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert rows["guard-ok"]["failure"] == "" and rows["guard-ok"]["log_tail"] == []
    assert rows["guard-boom"]["failure"] and any("boom" in line for line in rows["guard-boom"]["log_tail"])
    assert ledger.read()["experiments"]["guard-ok"]["versions"][0]["checked_at"]
    assert (rows["guard-young"]["status"], rows["guard-old"]["status"]) == ("QUEUED", "NOT_FOUND")
    (young,) = [n for n in notes if n.startswith("guard-young")]
    assert young.startswith("guard-young: Kaggle does not show kit-user/guard-young/1 yet (HTTP 40")
    assert young.endswith(" s ago); waiting up to 50 s for it")
    assert not any(n.startswith("guard-old") for n in notes)
    assert ledger.read()["experiments"]["guard-in-flight"]["pending"]  # young: maybe still being sent
    assert ledger.read()["experiments"]["guard-stale"]["pending"] is None  # old and never shown: settled

    calls = emulator.stats()["calls"]
    refresh(client, ledger, ["guard-ok", "guard-boom"])  # finished: Kaggle is not asked again
    assert emulator.stats()["calls"] == calls

    with ledger.transaction() as data:  # a failed run whose log Kaggle does not hand out: still ERROR, no tail
        boom = data["experiments"]["guard-boom"]["versions"][0]
        boom["status"] = "RUNNING"
        del boom["log_tail"]
    emulator.answers.push(OUTPUTS_CALL, ["500"] * 4)
    refresh(client, ledger, ["guard-boom"])
    row = status_rows(ledger.read(), ["guard-boom"])[0]
    assert (row["status"], row["log_tail"]) == ("ERROR", []) and row["failure"]

    with ledger.transaction() as data:
        data["experiments"]["guard-young"]["versions"][0]["pushed_at"] = now_iso()
    emulator.answers.push(STATUS_CALL, ["500"] * 4)
    notes.clear()
    refresh(client, ledger, ["guard-young"], on_note=notes.append)
    assert status_rows(ledger.read(), ["guard-young"])[0]["status"] == "QUEUED"
    assert len(notes) == 1 and notes[0].startswith("guard-young: not refreshed, the ledger's QUEUED is shown (")


def test_the_wait_reports_every_round_never_sleeps_past_its_deadline_and_names_what_is_still_going(
        world, monkeypatch) -> None:
    """`wait_until_done` refreshes, hands each round's rows to the caller, and returns them once every run has
    ended; a run still going at the deadline ends the wait with one line naming it (finished runs are not
    named), and no sleep runs past the deadline however long the poll schedule's next delay."""
    make, ledger = world
    make(lag_s=0.0)
    client = connect()
    with ledger.transaction() as data:
        data["experiments"]["guard-done"] = {"kernel": "kit-user/guard-done", "pending": None, "versions": [
            {"version": 2, "status": "COMPLETE", "pushed_at": "2024-01-01T00:00:00Z", "accelerator": "TpuV5E8"}]}
    rounds: list[list[str]] = []
    rows = wait_until_done(client, ledger, poll=None, timeout_s=5.0,  # the environment's poll schedule
                           on_update=lambda rs: rounds.append([r["status"] for r in rs]), sleep=pytest.fail)
    assert [r["experiment"] for r in rows] == ["guard-done"] and rounds == [["COMPLETE"]]

    with ledger.transaction() as data:  # a version Kaggle does not show yet: QUEUED within the grace
        data["experiments"]["guard-going"] = {"kernel": "kit-user/guard-going", "pending": None, "versions": [
            {"version": 1, "status": "QUEUED", "pushed_at": now_iso(), "accelerator": "TpuV5E8"}]}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    rounds.clear()
    with pytest.raises(KitError) as info:
        wait_until_done(client, ledger, poll=PollPolicy(first_s=60.0, max_s=60.0), timeout_s=0.4,
                        on_update=lambda rs: rounds.append([r["status"] for r in rs]), sleep=sleep)
    assert str(info.value) == ("--wait: gave up after 0 s (--timeout or $KIT_WAIT_TIMEOUT_S); still going on Kaggle: "
                               "guard-going (kit-user/guard-going v1: QUEUED); `kit status` shows them later")
    assert slept and all(0 <= s <= 0.4 for s in slept), slept
    assert len(rounds) == len(slept) + 1 and rounds[0] == ["COMPLETE", "QUEUED"]


def test_a_narrow_terminal_drops_the_tables_least_needed_columns_first() -> None:
    """As the terminal narrows, the table leaves out the pulled folder first, then the Kaggle kernel, the
    machine and the push time, and says which; experiment, version and status always show (below that, one
    record per run). Abbreviated headers are spelt out under the table; the version column is right-aligned."""
    data = _ledger()
    data["experiments"]["effnet-b0"]["versions"][1]["version"] = 12
    grid = status_table(status_rows(data))
    shown_at = {}
    for width in range(140, 20, -1):
        fit = layout(grid, width)
        shown_at[width] = None if fit is None else tuple(grid.cols[i].header for i in fit[0])
    every = ("experiment", "kernel", "v", "machine", "status", "pushed", "pulled into")
    seen = [shown for shown in dict.fromkeys(shown_at.values())]
    assert seen == [every, every[:-1], ("experiment", "v", "machine", "status", "pushed"),
                    ("experiment", "v", "status", "pushed"), ("experiment", "v", "status"), None]

    def printed(width: int) -> str:
        out = KitConsole(file=io.StringIO(), width=width, highlight=False, soft_wrap=True)
        print_grid(grid, out)
        return out.file.getvalue()

    lines = printed(120).splitlines()
    assert lines[0] == "Kaggle runs" and lines[-1] == "kernel: Kaggle kernel; v: version; pushed: pushed (UTC)"
    twelve, never = lines[3], next(line for line in lines if line.startswith("never"))
    end = twelve.index(" 12 ") + 3
    assert never[end - 2:end] == " -" and lines[1][end - 2:end] == " v"  # numbers and header right-aligned
    out = printed(60)
    assert "Not shown at 60 columns: Kaggle kernel; pulled into." in " ".join(out.split())


def test_long_experiment_names_and_run_folders_wrap_at_spaces_instead_of_crowding_columns_out() -> None:
    """An experiment named in words and a run folder whose path holds spaces (a Drive folder) wrap at their spaces:
    a narrow terminal keeps the same columns as for short names, instead of leaving some out for their length."""
    data = _ledger()
    entry = data["experiments"].pop("effnet-b0")
    entry["versions"][1]["run_dir"] = "/content/drive/My Drive/kaggle runs/effnet b0 long/v2"
    data["experiments"]["effnet b0 with a long descriptive name"] = entry
    grid = status_table(status_rows(data))

    def shown(width: int) -> list[str] | None:
        fit = layout(grid, width)
        return None if fit is None else [grid.cols[i].header for i in fit[0]]

    assert shown(92) == ["experiment", "kernel", "v", "machine", "status", "pushed", "pulled into"]
    assert shown(40) == ["experiment", "v", "status", "pushed"]
    assert shown(28) == ["experiment", "v", "status"]


def test_a_log_tail_keeps_its_last_lines_as_written() -> None:
    """Only the line ends after the log's last line are dropped: the last lines keep their text whole, whatever
    it ends with (letters, blanks)."""
    assert log_tail("epoch 1\nloss: nan, see FIX\n\n") == ["epoch 1", "loss: nan, see FIX"]
    assert log_tail("epoch 1\nstep 3   \n") == ["epoch 1", "step 3   "]
    assert log_tail("a\nXX\n") == ["a", "XX"]
