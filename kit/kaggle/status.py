"""Follow pushed kernels: refresh their status from Kaggle into the ledger, show a table, wait.

In:  a `KaggleClient`, the `Ledger`, optional experiment names, a `PollPolicy`.
Out: `refresh` updates each experiment's latest version in the ledger (status, failure message,
     and for ERROR the tail of the kernel log); `status_rows` + `status_table` make the table;
     `wait_until_done` polls with back-off and a progress display until every run is terminal.

A version Kaggle does not show yet (403 or 404 right after a push: its read-after-write lag) stays
QUEUED, with a line saying what kit waits for, for $KIT_VISIBLE_GRACE_S (default 600 s) after the
push; after that it is shown as NOT_FOUND. A status call that Kaggle does not answer within the
retry budget (stalls, 5xx, 429) leaves that row as the ledger had it, with a line saying so. `wait_until_done` has a deadline ($KIT_WAIT_TIMEOUT_S,
default 13 h: Kaggle's 12-hour session limit plus queueing) and names the runs still going.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kit.errors import KitError
from kit.kaggle.client import KaggleClient, KernelNotVisible
from kit.kaggle.ledger import TERMINAL_STATUSES, Ledger, latest_version, now_iso
from kit.kaggle.reconcile import PollPolicy, age_s, env_seconds, reconcile_pending
from kit.kaggle.retry import KaggleUnreachable

__all__ = ["PollPolicy", "is_done", "log_tail", "log_text", "next_steps", "refresh", "selected", "status_rows",
           "status_table", "wait_timeout_s", "wait_until_done"]

NOT_FOUND_GRACE_S = 600.0
DEFAULT_WAIT_TIMEOUT_S = 13 * 3600.0
PENDING_STALE_S = 300.0  # a pending push older than this was interrupted; `refresh` settles it
LOG_TAIL_LINES = 20
STATUS_STYLE = {"COMPLETE": "green", "ERROR": "red", "RUNNING": "yellow", "QUEUED": "cyan", "NOT_FOUND": "red",
                "NEW_SCRIPT": "cyan", "CANCEL_REQUESTED": "yellow", "CANCEL_ACKNOWLEDGED": "red"}


def wait_timeout_s(option: float | None) -> float:
    """--timeout, else $KIT_WAIT_TIMEOUT_S, else 13 h."""
    return option if option is not None else env_seconds("KIT_WAIT_TIMEOUT_S", DEFAULT_WAIT_TIMEOUT_S)


def log_text(raw: str) -> str:
    """Kaggle's log is a JSON list of {"stream_name", "time", "data"}; the emulator's is plain text."""
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw or ""
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        return "".join(str(e.get("data", "")) for e in entries)
    return raw


def log_tail(raw: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    return log_text(raw).rstrip("\n").splitlines()[-lines:]


def selected(data: Mapping[str, Any], names: Sequence[str] | None) -> list[str]:
    """Experiment names in the ledger, filtered by `names` (an unknown name is an error)."""
    known = sorted(data["experiments"])
    if not names:
        return known
    missing = [n for n in names if n not in data["experiments"]]
    if missing:
        raise KitError(f"ledger: no pushed experiment named {missing[0]!r} (have: {', '.join(known) or 'none'})")
    return list(names)


def refresh(client: KaggleClient, ledger: Ledger, names: Sequence[str] | None = None,
            on_note: Callable[[str], None] | None = None) -> None:
    """Ask Kaggle for the status of each selected experiment's latest non-terminal version;
    `on_note` hears about versions Kaggle does not show yet."""
    data = ledger.read()
    for name in selected(data, names):
        pending = data["experiments"][name].get("pending")
        if pending and age_s(pending.get("started_at")) > PENDING_STALE_S:  # not a push still in flight
            reconcile_pending(client, ledger, name, on_note=on_note)
    data = ledger.read()
    for name in selected(data, names):
        entry = data["experiments"][name]
        version = latest_version(entry)
        if version is None or version["status"] in TERMINAL_STATUSES:
            continue
        ref = f"{entry['kernel']}/{version['version']}"
        failure, tail = "", []
        try:
            state = client.kernel_status(ref)
            status, failure = state.status, state.failure_message
        except KaggleUnreachable as exc:  # kept as the ledger had it; the next refresh asks again
            if on_note:
                on_note(f"{name}: not refreshed, the ledger's {version['status']} is shown ({exc})")
            continue
        except KernelNotVisible as exc:
            age, grace = age_s(version.get("pushed_at")), env_seconds("KIT_VISIBLE_GRACE_S", NOT_FOUND_GRACE_S)
            status = "QUEUED" if age < grace else "NOT_FOUND"
            if status == "QUEUED" and on_note:
                on_note(f"{name}: Kaggle does not show {ref} yet (HTTP {exc.status}, pushed {age:.0f} s ago); "
                        f"waiting up to {grace:.0f} s for it")
        if status == "ERROR":
            owner, slug = entry["kernel"].split("/", 1)
            try:
                tail = log_tail(client.list_outputs(owner, slug, version["version"]).log)
            except (KernelNotVisible, KaggleUnreachable):
                tail = []
        with ledger.transaction() as fresh:
            target = next(v for v in fresh["experiments"][name]["versions"] if v["version"] == version["version"])
            target.update(status=status, failure=failure, checked_at=now_iso())
            if tail:
                target["log_tail"] = tail


def status_rows(data: Mapping[str, Any], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per experiment (its latest version) from the ledger."""
    rows = []
    for name in selected(data, names):
        entry = data["experiments"][name]
        version = latest_version(entry) or {}
        rows.append({
            "experiment": name,
            "kernel": entry.get("kernel") or "",
            "version": version.get("version"),
            "status": "PUSHING" if entry.get("pending") else version.get("status", "-"),
            "pushed_at": version.get("pushed_at", ""),
            "pulled": version.get("run_dir") or "",
            "failure": version.get("failure", ""),
            "log_tail": version.get("log_tail", []),
            "accelerator": version.get("accelerator", ""),
        })
    return rows


def status_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A `kit.console.Grid` of the runs: experiment, version and status always; the kernel, machine,
    push time and pulled folder as the width allows (rows coloured by status in a terminal)."""
    from kit.console import MUST, Col, Grid

    cols = (Col("experiment", keep=MUST, wrap=True), Col("kernel", "Kaggle kernel", keep=3, wrap=True),
            Col("v", "version", keep=MUST, right=True), Col("machine", keep=4), Col("status", keep=MUST),
            Col("pushed", "pushed (UTC)", keep=5), Col("pulled into", keep=2, wrap=True))
    cells = tuple((row["experiment"], row["kernel"], str(row["version"]) if row["version"] else "-",
                   row["accelerator"], row["status"], row["pushed_at"].replace("T", "\n").rstrip("Z") or "-",
                   row["pulled"] or "-") for row in rows)
    return Grid("Kaggle runs", cols, cells, styles=tuple(STATUS_STYLE.get(row["status"], "") for row in rows))


FAILED_STATUSES = frozenset({"ERROR", "NOT_FOUND", "CANCEL_ACKNOWLEDGED"})


def next_steps(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What to run next, one line per kind of run in the table (going, finished, pulled, failed)."""
    def named(keep: Callable[[Mapping[str, Any]], bool]) -> str:
        return ", ".join(r["experiment"] for r in rows if keep(r))

    lines = []
    going = named(lambda r: not is_done(r))
    finished = named(lambda r: r["status"] == "COMPLETE" and not r["pulled"])
    pulled = named(lambda r: r["status"] == "COMPLETE" and bool(r["pulled"]))
    failed = named(lambda r: r["status"] in FAILED_STATUSES)
    if going:
        lines.append(f"still going on Kaggle ({going}): `kit status --wait` follows them; Ctrl-C there stops "
                     "only the waiting, never the kernels")
    if finished:
        lines.append(f"finished ({finished}): `kit pull` downloads and verifies their outputs into runs/")
    if pulled:
        lines.append(f"pulled ({pulled}): `kit blend NAME` blends them by ensembles/NAME.toml; `kit report` "
                     "ranks every run")
    if failed:
        lines.append(f"failed ({failed}): the log tail is above; `kit preflight EXP` reproduces most failures "
                     "locally in seconds; after the fix `kit push EXP` (--force re-pushes it unchanged)")
    return lines


def is_done(row: Mapping[str, Any]) -> bool:
    return row["status"] in TERMINAL_STATUSES or row["status"] == "NOT_FOUND"


def wait_until_done(
    client: KaggleClient,
    ledger: Ledger,
    names: Sequence[str] | None = None,
    poll: PollPolicy | None = None,
    timeout_s: float | None = None,
    on_update: Callable[[list[dict[str, Any]]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Refresh until every selected run is terminal or the deadline (`wait_timeout_s(timeout_s)`)
    passes, then one KitError naming the runs still going; returns the final rows."""
    poll = poll or PollPolicy.from_env()
    limit = wait_timeout_s(timeout_s)
    deadline = time.monotonic() + limit
    delays = poll.delays()
    while True:
        refresh(client, ledger, names, on_note=on_note)
        rows = status_rows(ledger.read(), names)
        if on_update:
            on_update(rows)
        if all(is_done(r) for r in rows):
            return rows
        if time.monotonic() >= deadline:
            going = ", ".join(f"{r['experiment']} ({r['kernel']} v{r['version']}: {r['status']})"
                              for r in rows if not is_done(r))
            raise KitError(f"--wait: gave up after {limit:.0f} s (--timeout or $KIT_WAIT_TIMEOUT_S); still going "
                           f"on Kaggle: {going}; `kit status` shows them later")
        sleep(min(next(delays), max(0.0, deadline - time.monotonic())))
