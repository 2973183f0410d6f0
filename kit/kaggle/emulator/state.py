"""The emulator's settings and state: kernels and their versions, uploads, submissions, counters.

In:  `EmulatorSettings` (folders, competition, limits), a `FaultConfig` and a `Realism`.
Out: `EmulatorState`, the base the API services stand on: the state dict (saved as JSON in the
     state folder after every change, so a restarted emulator carries on), the fault plan and
     the realistic behaviours, counters (`stats()`), the emulator log, version folders; and the
     small helpers every service uses (`iso` dates, `page` of a listing).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.config import COMPETITION
from kernels.contracts import atomic_write_text
from kit.errors import KitError
from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.faults import FaultConfig, FaultPlan
from kit.kaggle.emulator.realism import Behaviours, Realism

STATE_FILE = "state.json"
SOLUTION_FILE = "solution.csv"  # the competition folder's answers: never shown to kernels or the CLI
LOG_NAME = "emulator.log"
DEFAULT_WORKERS = 2
DEFAULT_SESSION_TIMEOUT_S = 3600
DEFAULT_SCORE_DELAY_S = 1.0
DEFAULT_DAILY_SUBMISSIONS = 5
DEFAULT_USER = "kit-user"


def now() -> float:
    return time.time()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_version(label: str | None) -> int | None:
    if not label:
        return None
    text = label[1:] if label[:1] in "vV" else label
    if not text.isdigit():
        raise ApiError(400, f"invalid version label {label!r}")
    return int(text)


def page(rows: list[dict[str, Any]], body: Mapping[str, Any], key: str, default_size: int) -> dict[str, Any]:
    """One page of `rows` by pageToken (an offset) or page number, with nextPageToken when more follow."""
    size = int(body.get("pageSize") or default_size)
    token = str(body.get("pageToken") or "")
    start = int(token) if token.isdigit() else (max(1, int(body.get("page") or 1)) - 1) * size
    reply: dict[str, Any] = {key: rows[start:start + size]}
    if start + size < len(rows):
        reply["nextPageToken"] = str(start + size)
    return reply


@dataclass
class EmulatorSettings:
    """Everything that shapes an emulator besides its faults and realistic behaviours."""

    state_dir: Path
    competition_dir: Path
    datasets_root: Path
    competition: str = COMPETITION
    workers: int = DEFAULT_WORKERS
    session_timeout_s: int = DEFAULT_SESSION_TIMEOUT_S
    score_delay_s: float = DEFAULT_SCORE_DELAY_S
    daily_submissions: int = DEFAULT_DAILY_SUBMISSIONS
    max_sessions: int = 0  # accelerator sessions at once per user (0 = unlimited)
    token_user: str = DEFAULT_USER  # the user an API token (Bearer) authenticates as
    kernel_env: dict[str, str] = field(default_factory=dict)


def empty_state() -> dict[str, Any]:
    return {
        "kernels": {},
        "submissions": [],
        "uploads": {},
        "next_id": 1,
        "stats": {"calls": 0, "faults": {}, "versions": 0, "identical_versions": 0, "kernel_runs": 0,
                  "downloads": 0, "submissions": 0, "duplicate_submissions": 0},
    }


class EmulatorState:
    """State, counters, log and look-ups shared by the API services."""

    def __init__(self, settings: EmulatorSettings, faults: FaultConfig | None = None,
                 realism: Realism | None = None) -> None:
        self.settings = settings
        self.faults = FaultPlan(faults or FaultConfig())
        self.behaviours = Behaviours(realism if realism is not None else Realism())
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.state = self._load()

    @property
    def realism(self) -> Realism:
        return self.behaviours.realism

    def _load(self) -> dict[str, Any]:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return empty_state()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise KitError(f"{path}: emulator state is not valid JSON ({exc})") from None
        state = empty_state()
        state.update(data)
        state["stats"] = {**empty_state()["stats"], **data.get("stats", {})}
        return state

    def _save(self) -> None:
        atomic_write_text(self.state_dir / STATE_FILE, json.dumps(self.state, indent=1, sort_keys=True))

    def stats(self) -> dict[str, Any]:
        """A copy of the counters: calls, faults by kind, versions, identical versions, downloads, ..."""
        with self._lock:
            return json.loads(json.dumps(self.state["stats"]))

    def _count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.state["stats"][key] = self.state["stats"].get(key, 0) + by

    def count_fault(self, kind: str) -> None:
        with self._lock:
            faults = self.state["stats"]["faults"]
            faults[kind] = faults.get(kind, 0) + 1
            self._save()

    def _new_id(self) -> int:
        with self._lock:
            value = int(self.state["next_id"])
            self.state["next_id"] = value + 1
            return value

    def log(self, line: str) -> None:
        with self._lock, open(self.state_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(f"{iso(now())} {line}\n")

    def version_dir(self, ref: str, number: int) -> Path:
        owner, slug = ref.split("/", 1)
        return self.state_dir / "kernels" / owner / slug / f"v{number}"
