"""The ledger: one small JSON state file (`.kit/ledger.json`) recording what was sent to Kaggle.

In:  the ledger path (default `.kit/ledger.json`, or $KIT_LEDGER).
Out: `Ledger.read()` -> the state dict; `with Ledger.transaction() as data:` -> the same dict,
     written back atomically (temp file + rename) under an exclusive file lock when the block ends.

Shape (plain JSON; every key below always exists after `read`):
  experiments: {name: {kernel: "owner/slug", versions: [Version...], pending: Pending | null}}
    Version: {version, content_hash, body_sha256, accelerator, pushed_at, status, failure,
              checked_at, run_dir}  (status is Kaggle's: NEW_SCRIPT/QUEUED/RUNNING/COMPLETE/ERROR/
              CANCEL_REQUESTED/CANCEL_ACKNOWLEDGED; body_sha256 is the source fingerprint of
              `kit.kaggle.reconcile`: a notebook's cells, not its bytes)
    Pending: a push that was sent but whose reply was not recorded yet: {content_hash,
             body_sha256, since_version, accelerator, started_at}; reconciled before any re-push.
  sweeps: {config path: {experiments: [names], concurrency, updated_at}}
  submissions: [{id, ref, competition, file, sha256, message, recipe, recipe_hash, status,
                 public_score, private_score, error, submitted_at}]
  counters: {name: int}  (retries, reconciled pushes, ...)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kernels.contracts import atomic_write_text
from kit.errors import KitError

LEDGER_ENV = "KIT_LEDGER"
DEFAULT_LEDGER = Path(".kit/ledger.json")
LEDGER_SCHEMA = "kit.ledger/1"
TERMINAL_STATUSES = frozenset({"COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"})
ACTIVE_STATUSES = frozenset({"NEW_SCRIPT", "QUEUED", "RUNNING", "CANCEL_REQUESTED", "PUSHED"})


def default_ledger_path() -> Path:
    """$KIT_LEDGER, else .kit/ledger.json under the current folder."""
    return Path(os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER)


def now_iso() -> str:
    """UTC time as ISO 8601 with a Z, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def empty_ledger() -> dict[str, Any]:
    return {"schema": LEDGER_SCHEMA, "experiments": {}, "sweeps": {}, "submissions": [], "counters": {}}


def _normalise(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != LEDGER_SCHEMA:
        raise KitError(f"{where}: not a kit ledger (expected a JSON object with schema {LEDGER_SCHEMA!r})")
    base = empty_ledger()
    base.update(data)
    for key in ("experiments", "sweeps", "counters"):
        if not isinstance(base[key], dict):
            raise KitError(f"{where}: {key}: expected a JSON object")
    if not isinstance(base["submissions"], list):
        raise KitError(f"{where}: submissions: expected a JSON list")
    return base


class Ledger:
    """The state file; reads are lock-free, updates are serialised by an flock on `<path>.lock`."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_ledger_path()

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return empty_ledger()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise KitError(f"{self.path}: not valid JSON ({exc}); fix or remove it") from None
        return _normalise(data, str(self.path))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock; written only if the block ends without error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def bump(self, counter: str, by: int = 1) -> None:
        """Add to a named counter."""
        if by:
            with self.transaction() as data:
                data["counters"][counter] = int(data["counters"].get(counter, 0)) + by


def experiment_entry(data: dict[str, Any], name: str, kernel: str | None = None) -> dict[str, Any]:
    """The entry for experiment `name`, created (with `kernel`) when missing."""
    entries = data["experiments"]
    if name not in entries:
        entries[name] = {"kernel": kernel, "versions": [], "pending": None}
    entry = entries[name]
    if kernel:
        entry["kernel"] = kernel
    return entry


def latest_version(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The highest-numbered version recorded for an experiment entry."""
    if not entry or not entry.get("versions"):
        return None
    return max(entry["versions"], key=lambda v: v["version"])


def find_version(entry: dict[str, Any], number: int) -> dict[str, Any] | None:
    for version in entry.get("versions", []):
        if version["version"] == number:
            return version
    return None


def is_active(version: dict[str, Any] | None) -> bool:
    """True while a pushed version may still be using an accelerator session."""
    return bool(version) and version.get("status") in ACTIVE_STATUSES
