"""The emulator's competitions service: submissions and their scores, competition data, leaderboard.

In:  request bodies of competitions.CompetitionApiService calls and the caller's user name; the
     competition folder (sample_submission.csv, solution.csv with image_name,target,Usage).
Out: reply dicts (camelCase), `Redirect`s (data downloads) or `ApiError`s. A submission is scored
     `score_delay_s` after it is created: public and private AUC from solution.csv's Usage column.
kaggle.com's behaviours where `Realism` has them on: GetSubmission answers 404 for a while right
after CreateSubmission; a user who has not joined the competition gets 403 on submit and data.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels.contracts import atomic_write_bytes, read_test_pred
from kernels.metrics import auc
from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.realism import RULES_NOT_ACCEPTED
from kit.kaggle.emulator.state import DEFAULT_USER, SOLUTION_FILE, EmulatorState, iso, now, page

USAGE_COLUMN = "Usage"
PUBLIC_USAGE = "Public"
PUBLIC_FRACTION = 0.3  # used when solution.csv has no Usage column
SCORE_DECIMALS = 4
PAGE_SIZE = 20
DATA_PATH = "/data/"  # GET <url>/data/<competition>.zip: the competition's files (no solution)
DEADLINE = "2020-08-17T23:59:00.000Z"
REWARD = "$30,000"


@dataclass(frozen=True)
class Redirect:
    """A reply that sends the client elsewhere (HTTP 302 to `url`)."""

    url: str


class CompetitionsService(EmulatorState):
    """competitions.CompetitionApiService on top of the state (a mixin of the Emulator)."""

    url: str

    def _check_competition(self, name: str | None, needs_rules: str = "") -> None:
        if name != self.settings.competition:
            raise ApiError(404, f"Competition {name!r} not found")
        if needs_rules and not self.realism.joined:
            raise ApiError(403, RULES_NOT_ACCEPTED.format(what=needs_rules))

    def start_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_competition(body.get("competitionName"), "submit")
        token = f"t{self._new_id()}"
        with self._lock:
            self.state["uploads"][token] = {"file_name": body.get("fileName", "submission.csv"),
                                            "content_length": int(body.get("contentLength") or 0),
                                            "received": False}
            self._save()
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def receive_upload(self, token: str, data: bytes) -> None:
        with self._lock:
            upload = self.state["uploads"].get(token)
            if upload is None:
                raise ApiError(404, f"unknown upload {token}")
            if upload["content_length"] and len(data) != upload["content_length"]:
                raise ApiError(400, f"upload {token}: got {len(data)} bytes, announced {upload['content_length']}")
            folder = self.state_dir / "uploads"
            folder.mkdir(exist_ok=True)
            atomic_write_bytes(folder / token, data)
            upload["received"] = True
            self._save()

    def create_submission(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_competition(body.get("competitionName"), "submit")
        token = body.get("blobFileTokens") or ""
        with self._lock:
            upload = self.state["uploads"].get(token)
            if upload is None or not upload["received"]:
                raise ApiError(400, f"No uploaded file for token {token!r}")
            today = time.strftime("%Y-%m-%d", time.gmtime())
            used = sum(1 for s in self.state["submissions"] if s["day"] == today)
            if used >= self.settings.daily_submissions:
                raise ApiError(400, f"Your team has used its daily Submission allowance "
                                    f"({self.settings.daily_submissions}) today")
            description = body.get("submissionDescription") or ""
            if description and any(s["description"] == description for s in self.state["submissions"]):
                self.state["stats"]["duplicate_submissions"] += 1
            ref = self._new_id()
            self.state["submissions"].append({
                "ref": ref, "token": token, "file_name": upload["file_name"], "description": description,
                "created": now(), "day": today, "status": "PENDING", "public": "", "private": "", "error": "",
                "bytes": upload["content_length"],
            })
            self.state["stats"]["submissions"] += 1
            self._save()
        return {"message": f"Successfully submitted to {self.settings.competition}", "ref": ref}

    def _score(self, submission: dict[str, Any]) -> None:
        """Score a pending submission once its delay has passed (called under the lock)."""
        if submission["status"] != "PENDING" or now() - submission["created"] < self.settings.score_delay_s:
            return
        try:
            public, private = score_submission(self.state_dir / "uploads" / submission["token"],
                                               Path(self.settings.competition_dir) / SOLUTION_FILE)
            submission.update(status="COMPLETE", public=f"{public:.{SCORE_DECIMALS}f}",
                              private=f"{private:.{SCORE_DECIMALS}f}")
        except (ValueError, OSError) as exc:
            submission.update(status="ERROR", error=" ".join(str(exc).split())[:300])
        self._save()

    def _submission_json(self, s: Mapping[str, Any]) -> dict[str, Any]:
        reply = {"ref": s["ref"], "date": iso(s["created"]), "description": s["description"],
                 "fileName": s["file_name"], "status": s["status"], "totalBytes": s["bytes"],
                 "publicScore": s["public"], "privateScore": s["private"], "submittedBy": DEFAULT_USER}
        if s["error"]:
            reply["errorDescription"] = s["error"]
        return reply

    def list_submissions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_competition(body.get("competitionName"))
        with self._lock:
            for s in self.state["submissions"]:
                self._score(s)
            items = [self._submission_json(s) for s in reversed(self.state["submissions"])]
        return page(items, body, "submissions", PAGE_SIZE)

    def get_submission(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = int(body.get("ref") or 0)
        with self._lock:
            for s in self.state["submissions"]:
                if s["ref"] == ref:
                    if now() - s["created"] < self.realism.submission_lag_s:
                        break  # eventual consistency: not readable yet
                    self._score(s)
                    return self._submission_json(s)
        raise ApiError(404, f"Submission {ref} not found")

    def submission_limits(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_competition(body.get("competitionName"))
        with self._lock:
            today = time.strftime("%Y-%m-%d", time.gmtime())
            used = sum(1 for s in self.state["submissions"] if s["day"] == today)
            total = len(self.state["submissions"])
        return {"numToday": used, "numTotal": total,
                "numAllowedNow": max(0, self.settings.daily_submissions - used), "limitedByTotal": False}

    # -- the rest of the CLI's competition calls ------------------------------------------------
    def list_competitions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`kaggle competitions list`: the one competition the emulator holds (matching --search)."""
        name = self.settings.competition
        search = str(body.get("search") or "").lower()
        with self._lock:
            teams = 1 if self.state["submissions"] else 0
        rows = [] if search and search not in name else [{
            "id": 1, "ref": f"https://www.kaggle.com/competitions/{name}", "title": name, "url":
            f"https://www.kaggle.com/competitions/{name}", "category": "Featured", "reward": REWARD,
            "deadline": DEADLINE, "teamCount": teams, "userHasEntered": self.realism.joined,
            "maxDailySubmissions": self.settings.daily_submissions, "evaluationMetric": "AUC"}]
        return page(rows, body, "competitions", PAGE_SIZE)

    def _data_files(self) -> list[Path]:
        root = Path(self.settings.competition_dir)
        return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SOLUTION_FILE)

    def list_data_files(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`kaggle competitions files`: the competition's files (never the solution)."""
        self._check_competition(body.get("competitionName"), "see its data")
        root = Path(self.settings.competition_dir).resolve()
        files = [{"ref": p.resolve().relative_to(root).as_posix(), "name": p.resolve().relative_to(root).as_posix(),
                  "totalBytes": p.stat().st_size, "creationDate": iso(p.stat().st_mtime)} for p in self._data_files()]
        return page(files, body, "files", PAGE_SIZE)

    def download_data(self, body: Mapping[str, Any]) -> Redirect:
        """`kaggle competitions download`: a redirect to the zip of the competition's files."""
        self._check_competition(body.get("competitionName"), "download its data")
        return Redirect(f"{self.url}{DATA_PATH}{self.settings.competition}.zip")

    def data_zip(self, name: str) -> bytes:
        """The bytes of <competition>.zip (every data file, no solution), built the same way each time."""
        if name != f"{self.settings.competition}.zip":
            raise ApiError(404, f"no data file {name!r}")
        if not self.realism.joined:
            raise ApiError(403, RULES_NOT_ACCEPTED.format(what="download its data"))
        root = Path(self.settings.competition_dir)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in self._data_files():
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(2020, 5, 27, 0, 0, 0))
                archive.writestr(info, path.read_bytes())
        return buffer.getvalue()

    def leaderboard(self, body: Mapping[str, Any], user: str) -> dict[str, Any]:
        """`kaggle competitions leaderboard -s`: the best public score of the one team (the caller)."""
        self._check_competition(body.get("competitionName"))
        with self._lock:
            for s in self.state["submissions"]:
                self._score(s)
            scored = [s for s in self.state["submissions"] if s["status"] == "COMPLETE"]
        if not scored:
            return {"submissions": []}
        best = max(scored, key=lambda s: float(s["public"]))
        return {"submissions": [{"teamId": 1, "teamName": user, "submissionDate": iso(best["created"]),
                                 "score": best["public"]}]}


def score_submission(csv_path: Path, solution_path: Path) -> tuple[float, float]:
    """Public and private AUC of a submission file against the solution (Usage column splits them)."""
    import pandas as pd

    solution = pd.read_csv(solution_path, dtype={"image_name": str})
    sub = read_test_pred(csv_path, expected_names=solution["image_name"])
    merged = solution.merge(sub, on="image_name", suffixes=("_true", "_pred"))
    if USAGE_COLUMN in merged.columns:
        public = (merged[USAGE_COLUMN] == PUBLIC_USAGE).to_numpy()
    else:
        hashed = merged["image_name"].map(lambda n: int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) / 16**8)
        public = (hashed < PUBLIC_FRACTION).to_numpy()
    y, p = merged["target_true"].to_numpy(), merged["target_pred"].to_numpy(dtype=float)
    scores = (auc(y[public], p[public]), auc(y[~public], p[~public]))
    return tuple(0.5 if math.isnan(s) else s for s in scores)  # type: ignore[return-value]
