"""Push rendered experiments to Kaggle without ever creating a duplicate version.

In:  `RenderedKernel`s (from `kit.render.render_experiment`), a `KaggleClient`, the `Ledger`.
Out: one `PushOutcome` per kernel (pushed, reconciled, skipped); the ledger records for each the
     kernel id, version, content hash and accelerator. Refusals (Kaggle's `{"error": ...}` reply,
     which the CLI would print and exit 0 on) and final failures raise one-line `KitError`s.

No duplicates: before sending, the ledger records a *pending* push (content hash, sha256 of the
text sent, the version Kaggle had before). When the reply is lost (5xx, reset, timeout, or kit
killed mid-call), `reconcile_pending` asks Kaggle for the kernel's current version and source:
if a newer version holds exactly our text, that is our push and it is recorded; only otherwise is
the push sent again. An experiment whose content hash matches its latest version is not pushed
again unless forced.

Queues: `push_queue` pushes many kernels (a sweep) keeping at most `concurrency` accelerator
sessions busy, polling the busy ones with back-off; re-running it resumes from the ledger.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.kaggle.client import KaggleClient, KernelNotFound
from kit.kaggle.ledger import Ledger, experiment_entry, is_active, latest_version, now_iso
from kit.kaggle.retry import KaggleCallError, classify, describe
from kit.kaggle.status import PollPolicy, refresh
from kit.render import RenderedKernel

DEFAULT_CONCURRENCY = 2
NOT_FOUND_TRIES = 4  # GetKernel may 404 right after a push landed: ask this many times before believing it
NO_ACCELERATOR = "none"


@dataclass(frozen=True)
class PushOutcome:
    experiment: str
    kernel: str
    version: int | None
    action: str  # pushed | reconciled | skipped
    note: str = ""


def push_body(code_file: Path, kernel_type: str) -> str:
    """The text the kaggle client sends for a kernel file (notebooks lose outputs, sources are joined)."""
    text = code_file.read_text(encoding="utf-8")
    if kernel_type != "notebook":
        return text
    notebook = json.loads(text)
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code" and "outputs" in cell:
            cell["outputs"] = []
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return json.dumps(notebook)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _server_version(client: KaggleClient, kernel: str, sleep: Callable[[float], None],
                    tries: int = NOT_FOUND_TRIES) -> tuple[int, str]:
    """(current version, sha256 of its source) on Kaggle; (0, "") for a kernel Kaggle does not have
    (after `tries` answers of 404: Kaggle may not list a kernel in the first seconds after a push)."""
    owner, slug = kernel.split("/", 1)
    for attempt in range(1, tries + 1):
        try:
            info = client.kernel_info(owner, slug)
            return int(info.current_version or 0), sha256_text(info.source)
        except KernelNotFound:
            if attempt < tries:
                sleep(client.policy.delay(attempt))
    return 0, ""


def _record_version(ledger: Ledger, name: str, kernel: str, version: int, pending: dict[str, Any],
                    reconciled: bool) -> None:
    with ledger.transaction() as data:
        entry = experiment_entry(data, name, kernel)
        entry["versions"] = [v for v in entry["versions"] if v["version"] != version]
        entry["versions"].append({
            "version": version, "content_hash": pending["content_hash"], "body_sha256": pending["body_sha256"],
            "accelerator": pending["accelerator"], "pushed_at": now_iso(), "status": "QUEUED", "failure": "",
            "checked_at": None, "run_dir": None,
        })
        entry["versions"].sort(key=lambda v: v["version"])
        entry["pending"] = None
        counter = "reconciled_pushes" if reconciled else "pushes"
        data["counters"][counter] = int(data["counters"].get(counter, 0)) + 1


def _clear_pending(ledger: Ledger, name: str) -> None:
    with ledger.transaction() as data:
        data["experiments"][name]["pending"] = None


def _landed(client: KaggleClient, kernel: str, pending: dict[str, Any], sleep: Callable[[float], None]) -> int | None:
    """The version a pending push created on Kaggle (newer than before, holding exactly our text), or None."""
    current, source_sha = _server_version(client, kernel, sleep)
    if current > int(pending.get("since_version") or 0) and source_sha == pending["body_sha256"]:
        return current
    return None


def reconcile_pending(client: KaggleClient, ledger: Ledger, name: str,
                      sleep: Callable[[float], None] = time.sleep) -> int | None:
    """Settle a push recorded as pending (kit stopped mid-push): record and return its version if it
    landed, else clear it."""
    entry = ledger.read()["experiments"].get(name) or {}
    pending = entry.get("pending")
    if not pending:
        return None
    landed = _landed(client, entry["kernel"], pending, sleep)
    if landed is not None:
        _record_version(ledger, name, entry["kernel"], landed, pending, reconciled=True)
    else:
        _clear_pending(ledger, name)
    return landed


def unchanged(client: KaggleClient, ledger: Ledger, kernel: RenderedKernel,
              sleep: Callable[[float], None] = time.sleep) -> PushOutcome | None:
    """A 'skipped' outcome when the ledger's latest version of this experiment has the same content hash
    (a pending push is reconciled first), else None."""
    name = kernel.experiment.name
    if (ledger.read()["experiments"].get(name) or {}).get("pending"):
        reconcile_pending(client, ledger, name, sleep)
    entry = ledger.read()["experiments"].get(name)
    latest = latest_version(entry)
    if latest and latest["content_hash"] == kernel.content_hash and entry.get("kernel") == kernel.kernel_id:
        return PushOutcome(name, kernel.kernel_id, latest["version"], "skipped",
                           f"unchanged since v{latest['version']} ({latest['status']}); --force pushes it again")
    return None


def push_one(
    client: KaggleClient,
    ledger: Ledger,
    kernel: RenderedKernel,
    accelerator: str,
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> PushOutcome:
    """Push one rendered kernel (see module docstring for the no-duplicate protocol)."""
    name = kernel.experiment.name
    skip = unchanged(client, ledger, kernel, sleep)
    if skip is not None and not force:
        return skip
    latest = latest_version(ledger.read()["experiments"].get(name))
    body_sha = sha256_text(push_body(kernel.code_file, kernel.metadata.get("kernel_type", "script")))
    since, _ = _server_version(client, kernel.kernel_id, sleep, tries=1)
    since = max(since, int(latest["version"]) if latest else 0)
    pending = {"content_hash": kernel.content_hash, "body_sha256": body_sha, "since_version": since,
               "accelerator": accelerator, "started_at": now_iso()}
    with ledger.transaction() as data:
        experiment_entry(data, name, kernel.kernel_id)["pending"] = pending
    timeout = kernel.experiment.kaggle.timeout_s or None
    for attempt in range(1, client.policy.attempts + 1):
        try:
            reply = client.push(kernel.directory, None, timeout)
        except Exception as exc:
            if isinstance(exc, KitError) or classify(exc) is None:
                _clear_pending(ledger, name)
                if isinstance(exc, KitError):
                    raise
                raise KaggleCallError(f"push {kernel.kernel_id}: {describe(exc)}") from None
            landed = _landed(client, kernel.kernel_id, pending, sleep)
            if landed is not None:
                _record_version(ledger, name, kernel.kernel_id, landed, pending, reconciled=True)
                return PushOutcome(name, kernel.kernel_id, landed, "reconciled", f"reply lost ({describe(exc)})")
            if attempt == client.policy.attempts:
                raise KaggleCallError(
                    f"push {kernel.kernel_id}: still failing after {attempt} attempts ({describe(exc)})"
                ) from None
            client.stats.record(classify(exc) or "push")
            sleep(client.policy.delay(attempt))
            continue
        if reply.error:
            _clear_pending(ledger, name)
            raise KitError(f"push {kernel.kernel_id}: Kaggle refused it: {reply.error}")
        if not reply.version:
            landed = _landed(client, kernel.kernel_id, pending, sleep)
            if landed is None:
                _clear_pending(ledger, name)
                raise KitError(f"push {kernel.kernel_id}: Kaggle's reply had no version number and none was found")
            _record_version(ledger, name, kernel.kernel_id, landed, pending, reconciled=True)
            return PushOutcome(name, kernel.kernel_id, landed, "reconciled", "reply without a version number")
        _record_version(ledger, name, kernel.kernel_id, int(reply.version), pending, reconciled=False)
        return PushOutcome(name, kernel.kernel_id, int(reply.version), "pushed", reply.url)
    raise AssertionError("unreachable")  # pragma: no cover


def busy_sessions(ledger: Ledger) -> list[str]:
    """Experiments whose latest version may hold an accelerator session (QUEUED or RUNNING)."""
    data = ledger.read()
    busy = []
    for name, entry in data["experiments"].items():
        version = latest_version(entry)
        if (is_active(version) or entry.get("pending")) and (version or {}).get("accelerator") != NO_ACCELERATOR:
            busy.append(name)
    return sorted(busy)


def push_queue(
    client: KaggleClient,
    ledger: Ledger,
    kernels: Sequence[RenderedKernel],
    accelerator_of: Callable[[RenderedKernel], str],
    concurrency: int = DEFAULT_CONCURRENCY,
    force: bool = False,
    poll: PollPolicy | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PushOutcome]:
    """Push kernels in order, never more than `concurrency` accelerator sessions busy at once.

    `on_event(kind, payload)` reports progress: ("pushed", PushOutcome), ("waiting", [busy names])."""
    if concurrency < 1:
        raise KitError(f"--concurrency {concurrency}: expected an integer >= 1")
    poll = poll or PollPolicy.from_env()
    outcomes: list[PushOutcome] = []
    for kernel in kernels:
        skip = None if force else unchanged(client, ledger, kernel, sleep)
        if skip is not None:
            outcomes.append(skip)
            if on_event:
                on_event("pushed", skip)
            continue
        accelerator = accelerator_of(kernel)
        needs_slot = accelerator != NO_ACCELERATOR
        delays = poll.delays()
        while needs_slot:
            busy = busy_sessions(ledger)
            if len(busy) < concurrency or kernel.experiment.name in busy:
                break
            if on_event:
                on_event("waiting", busy)
            sleep(next(delays))
            refresh(client, ledger, busy)
        outcome = push_one(client, ledger, kernel, accelerator, force=force, sleep=sleep)
        outcomes.append(outcome)
        if on_event:
            on_event("pushed", outcome)
    return outcomes
