"""Follow pushed kernels: refresh their status from Kaggle into the ledger, show a table, wait.

In:  a `KaggleClient`, the `Ledger`, optional experiment names, a `PollPolicy`.
Out: `refresh` updates each experiment's latest version in the ledger (status, failure message,
     and for ERROR the tail of the kernel log); `status_rows` + `status_table` make the table;
     `wait_until_done` polls with back-off and a progress display until every run is terminal.

A version Kaggle does not know yet (404 right after a push, which Kaggle is known to answer) stays
QUEUED for `NOT_FOUND_GRACE_S`; after that it is shown as NOT_FOUND.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from kit.errors import KitError
from kit.kaggle.client import KaggleClient, KernelNotFound
from kit.kaggle.ledger import TERMINAL_STATUSES, Ledger, latest_version, now_iso

NOT_FOUND_GRACE_S = 600.0
PENDING_STALE_S = 300.0  # a pending push older than this was interrupted; `refresh` settles it
LOG_TAIL_LINES = 20
DEFAULT_POLL_S = 10.0
DEFAULT_POLL_MAX_S = 120.0
POLL_FACTOR = 1.5
STATUS_STYLE = {"COMPLETE": "green", "ERROR": "red", "RUNNING": "yellow", "QUEUED": "cyan", "NOT_FOUND": "red"}


@dataclass(frozen=True)
class PollPolicy:
    """Delay between polls: first_s, growing by `factor` up to max_s ($KIT_POLL_S, $KIT_POLL_MAX_S)."""

    first_s: float = DEFAULT_POLL_S
    max_s: float = DEFAULT_POLL_MAX_S
    factor: float = POLL_FACTOR

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PollPolicy:
        env = os.environ if environ is None else environ
        try:
            first = float(env.get("KIT_POLL_S", DEFAULT_POLL_S))
            return cls(first_s=first, max_s=max(first, float(env.get("KIT_POLL_MAX_S", DEFAULT_POLL_MAX_S))))
        except ValueError as exc:
            raise KitError(f"KIT_POLL_S / KIT_POLL_MAX_S: expected numbers ({exc})") from None

    def delays(self) -> Any:
        delay = self.first_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


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


def _age_s(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    try:
        return time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return float("inf")


def selected(data: Mapping[str, Any], names: Sequence[str] | None) -> list[str]:
    """Experiment names in the ledger, filtered by `names` (an unknown name is an error)."""
    known = sorted(data["experiments"])
    if not names:
        return known
    missing = [n for n in names if n not in data["experiments"]]
    if missing:
        raise KitError(f"ledger: no pushed experiment named {missing[0]!r} (have: {', '.join(known) or 'none'})")
    return list(names)


def refresh(client: KaggleClient, ledger: Ledger, names: Sequence[str] | None = None) -> None:
    """Ask Kaggle for the status of each selected experiment's latest non-terminal version."""
    from kit.kaggle.push import reconcile_pending  # push builds on this module; import here

    data = ledger.read()
    for name in selected(data, names):
        pending = data["experiments"][name].get("pending")
        if pending and _age_s(pending.get("started_at")) > PENDING_STALE_S:  # not a push still in flight
            reconcile_pending(client, ledger, name)
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
        except KernelNotFound:
            status = "QUEUED" if _age_s(version.get("pushed_at")) < NOT_FOUND_GRACE_S else "NOT_FOUND"
        if status == "ERROR":
            owner, slug = entry["kernel"].split("/", 1)
            tail = log_tail(client.list_outputs(owner, slug, version["version"]).log)
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


def status_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="Kaggle runs", show_lines=False)
    for column in ("experiment", "kernel", "version", "accelerator", "status", "pushed (UTC)", "pulled into"):
        table.add_column(column)
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        table.add_row(
            row["experiment"], row["kernel"], f"v{row['version']}" if row["version"] else "-",
            row["accelerator"], f"[{style}]{row['status']}[/]" if style else row["status"],
            row["pushed_at"].replace("T", " ").rstrip("Z"), row["pulled"],
        )
    return table


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
) -> list[dict[str, Any]]:
    """Refresh until every selected run is terminal (or the timeout passes); returns the final rows."""
    poll = poll or PollPolicy.from_env()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    delays = poll.delays()
    while True:
        refresh(client, ledger, names)
        rows = status_rows(ledger.read(), names)
        if on_update:
            on_update(rows)
        if all(is_done(r) for r in rows):
            return rows
        if deadline is not None and time.monotonic() >= deadline:
            waiting = ", ".join(r["experiment"] for r in rows if not is_done(r))
            raise KitError(f"status --wait: timed out after {timeout_s:.0f} s; still running: {waiting}")
        sleep(next(delays))
