"""Submit a predictions CSV to the competition, once, and record its score in the ledger.

In:  the CSV, sample_submission.csv (its header and image names are the contract), an optional
     blend recipe file (named, with its hash, in the submission message), a `KaggleClient`.
Out: a ledger record {id, ref, file, sha256, message, recipe, recipe_hash, status, public_score,
     private_score, error, submitted_at}, filled in as Kaggle scores it.

Checks before anything is sent: the header equals the sample's, the image names are exactly the
sample's (no missing, extra or duplicate names), every target is a finite number. The same file
(sha256) is not submitted twice unless forced (daily submissions are scarce).
No duplicates on flaky networks: every message carries a short unique id; when the upload or
create call fails, the user's submissions are listed and a submission with that message is
adopted before anything is sent again.
Right after a submit Kaggle may answer 404 for it (eventual consistency, as the official client
knows): `wait_for_score` counts that as pending for $KIT_SUBMISSION_GRACE_S (default 120 s).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kernels.contracts import SUBMISSION_COLUMNS, file_digest, read_test_pred
from kit.errors import KitError
from kit.kaggle.client import KaggleClient, Submission, SubmissionNotFound
from kit.kaggle.ledger import Ledger, now_iso
from kit.kaggle.reconcile import PollPolicy, env_seconds
from kit.kaggle.retry import (
    RATE_LIMITED,
    KaggleCallError,
    KaggleUnreachable,
    RateLimitWait,
    advice,
    classify,
    describe,
)

SHORT_HASH = 12
SCORED = frozenset({"COMPLETE", "ERROR"})
SAMPLE_NAME = "sample_submission.csv"
SAMPLE_SEARCH_ROOT = Path("data")
BLEND_JSON = "blend.json"
RUN_JSON = "run.json"
SUBMISSION_GRACE_S = 120.0
NOT_VISIBLE = "not visible on Kaggle yet"


def find_sample(explicit: str | None, root: Path = SAMPLE_SEARCH_ROOT) -> Path:
    """--sample, else the one data/*/sample_submission.csv (several or none is an error)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise KitError(f"--sample {path}: file not found")
        return path
    found = sorted(root.glob(f"*/{SAMPLE_NAME}")) if root.is_dir() else []
    if len(found) != 1:
        where = ", ".join(map(str, found)) if found else f"none under {root}/"
        raise KitError(f"{SAMPLE_NAME}: pass --sample PATH (found {where})")
    return found[0]


def _utf8_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is one KitError naming it (the CLI's message)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KitError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None


def validate_submission(csv_path: Path, sample_path: Path) -> pd.DataFrame:
    """The submission frame, checked against the sample (header, exact names, no dupes, finite targets)."""
    if not csv_path.is_file():
        raise KitError(f"{csv_path}: file not found")
    sample_header = _utf8_text(sample_path).splitlines()[0].strip()
    header = _utf8_text(csv_path).splitlines()[0].strip() if csv_path.stat().st_size else ""
    if header != sample_header:
        raise KitError(f"{csv_path}: header is {header!r}, expected {sample_header!r} (as in {sample_path})")
    if tuple(sample_header.split(",")) != SUBMISSION_COLUMNS:
        raise KitError(f"{sample_path}: header is {sample_header!r}, expected {','.join(SUBMISSION_COLUMNS)}")
    sample = pd.read_csv(sample_path, dtype={"image_name": str})
    return read_test_pred(csv_path, expected_names=sample["image_name"])


def recipe_label(recipe: str | None, csv_path: Path) -> tuple[str, str | None]:
    """(name, hash) of the blend recipe that made the CSV.

    Order: the `blend.json` `kit blend` wrote beside the CSV (its name and recipe_hash; a --recipe
    naming another recipe is an error); else --recipe, a recipe name or file (`kit.blend.recipe`);
    else no recipe: a run's test_pred.csv is named by its run ("run <experiment>/v<N>"), any other
    CSV by its file name."""
    blend = csv_path.parent / BLEND_JSON
    if blend.is_file():
        try:
            data = json.loads(blend.read_text(encoding="utf-8"))
            name, digest = str(data["name"]), str(data["recipe_hash"])
        except (ValueError, KeyError, TypeError):
            raise KitError(f"{blend}: expected kit blend's JSON with name and recipe_hash") from None
        if recipe and recipe not in (name, str(data.get("recipe", ""))) and Path(recipe).stem != name:
            raise KitError(f"{csv_path}: made by recipe {name!r} (see {blend}), not {recipe!r}")
        return name, digest
    if recipe:
        from kit.blend.recipe import load_recipe

        loaded = load_recipe(recipe)
        return loaded.name, loaded.digest
    if (csv_path.parent / RUN_JSON).is_file():
        return f"run {csv_path.parent.parent.name}/{csv_path.parent.name}", None
    return csv_path.name, None


def submission_message(label: str, recipe_hash: str | None, file_sha: str, note: str, token: str) -> str:
    """'kit: <recipe> recipe <hash> file <hash> [<id>] <note>' (no recipe part for a bare CSV)."""
    recipe = f" recipe {recipe_hash[:SHORT_HASH]}" if recipe_hash else ""
    return f"kit: {label}{recipe} file {file_sha[:SHORT_HASH]} [{token}] {note}".strip()


def _find_by_message(client: KaggleClient, competition: str, message: str) -> Submission | None:
    for submission in client.submissions(competition):
        if submission.description == message:
            return submission
    return None


def _update(ledger: Ledger, record_id: str, **changes: Any) -> dict[str, Any]:
    with ledger.transaction() as data:
        for record in data["submissions"]:
            if record["id"] == record_id:
                record.update(changes)
                return dict(record)
    raise KitError(f"ledger: submission {record_id} vanished")


def send(client: KaggleClient, ledger: Ledger, csv_path: Path, competition: str, sample_path: Path,
         recipe: str | None = None, note: str = "", force: bool = False,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Validate and submit once (reconciling lost replies); returns the ledger record with its ref."""
    validate_submission(csv_path, sample_path)
    file_sha = file_digest(csv_path)["sha256"]
    previous = [r for r in ledger.read()["submissions"]
                if r["sha256"] == file_sha and r["competition"] == competition and r["status"] != "FAILED"]
    if previous and not force:
        p = previous[-1]
        raise KitError(f"{csv_path}: already submitted as ref {p['ref']} ({p['status']}, public "
                       f"{p['public_score'] or '-'}); --force submits it again")
    label, recipe_hash = recipe_label(recipe, csv_path)
    record_id = uuid.uuid4().hex[:8]
    message = submission_message(label, recipe_hash, file_sha, note, record_id)
    with ledger.transaction() as data:
        data["submissions"].append({
            "id": record_id, "ref": None, "competition": competition, "file": str(csv_path), "sha256": file_sha,
            "message": message, "recipe": label, "recipe_hash": recipe_hash,
            "status": "SENDING", "public_score": "", "private_score": "", "error": "", "submitted_at": now_iso(),
        })
    attempt = 0
    limited = RateLimitWait(client.policy)
    what = f"submit {csv_path}"
    while True:
        try:
            ref = client.submit(csv_path, message, competition)
            return _update(ledger, record_id, ref=ref, status="PENDING")
        except Exception as exc:
            if not isinstance(exc, KitError) and classify(exc) == RATE_LIMITED:  # refused before any work
                try:
                    wait = limited.next_wait(exc, what, "nothing was submitted")
                except KaggleUnreachable:
                    _update(ledger, record_id, status="FAILED", error=describe(exc))
                    raise
                client.announce_retry(what, limited.spell, RATE_LIMITED, wait)
                sleep(wait)
                continue
            attempt += 1
            if isinstance(exc, KitError) or classify(exc) is None:
                _update(ledger, record_id, status="FAILED", error=str(exc) if isinstance(exc, KitError) else describe(exc))
                if isinstance(exc, KitError):
                    raise
                raise KaggleCallError(f"{what}: {describe(exc)}; nothing was submitted{advice(exc)}") from None
            found = _find_by_message(client, competition, message)
            if found is not None:
                with ledger.transaction() as data:
                    data["counters"]["reconciled_submissions"] = int(data["counters"].get("reconciled_submissions", 0)) + 1
                return _update(ledger, record_id, ref=found.ref, status="PENDING")
            if attempt >= client.policy.attempts:
                _update(ledger, record_id, status="FAILED", error=describe(exc))
                raise KaggleUnreachable(f"{what}: still failing after {attempt} attempts ({describe(exc)}); "
                                        "nothing was submitted; try again later") from None
            wait = client.policy.delay(attempt)
            client.announce_retry(what, attempt, classify(exc) or "submit", wait)
            sleep(wait)


def record_score(ledger: Ledger, record_id: str, submission: Submission) -> dict[str, Any]:
    return _update(ledger, record_id, status=submission.status, public_score=submission.public_score,
                   private_score=submission.private_score, error=submission.error)


def wait_for_score(client: KaggleClient, ledger: Ledger, record: Mapping[str, Any], poll: PollPolicy | None = None,
                   timeout_s: float | None = None, on_poll: Callable[[str], None] | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll Kaggle until the submission is scored (or errors); the ledger gets the scores."""
    poll = poll or PollPolicy.from_env()
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s else None
    grace = env_seconds("KIT_SUBMISSION_GRACE_S", SUBMISSION_GRACE_S)
    delays = poll.delays()
    while True:
        try:
            submission = client.submission(int(record["ref"]))
        except SubmissionNotFound:
            if time.monotonic() - started > grace:
                raise KitError(f"submission {record['ref']}: Kaggle still answers 404 for it after {grace:.0f} s "
                               "($KIT_SUBMISSION_GRACE_S); `kit submissions` shows whether it exists") from None
            if on_poll:
                on_poll(NOT_VISIBLE)
            sleep(next(delays))
            continue
        if on_poll:
            on_poll(submission.status)
        if submission.status in SCORED:
            return record_score(ledger, record["id"], submission)
        if deadline is not None and time.monotonic() >= deadline:
            raise KitError(f"submission {record['ref']}: not scored after {timeout_s:.0f} s; "
                           "`kit submissions` shows it later")
        sleep(next(delays))


def refresh_submissions(client: KaggleClient, ledger: Ledger, competition: str) -> list[Submission]:
    """The user's submissions from Kaggle; ledger records are matched (by ref or message) and updated."""
    server = client.submissions(competition)
    by_ref = {s.ref: s for s in server}
    by_message = {s.description: s for s in server}
    with ledger.transaction() as data:
        for record in data["submissions"]:
            if record["competition"] != competition:
                continue
            found = by_ref.get(record["ref"]) if record["ref"] else by_message.get(record["message"])
            if found is None:
                if record["status"] == "SENDING":  # kit stopped mid-send and Kaggle never got it
                    record.update(status="FAILED", error="not found on Kaggle")
                continue
            record.update(ref=found.ref, status=found.status, public_score=found.public_score,
                          private_score=found.private_score, error=found.error)
    return server
