"""Push rendered experiments to Kaggle without ever creating a duplicate version.

In:  `RenderedKernel`s (from `kit.render.render_experiment`), a `KaggleClient`, the `Ledger`.
Out: one `PushOutcome` per kernel (pushed, reconciled, skipped); the ledger records for each the
     kernel id, version, content hash, source fingerprint and accelerator. Refusals (Kaggle's
     `{"error": ...}` reply, which the CLI would print and exit 0 on), sources Kaggle says do not
     exist, and final failures raise one-line `KitError`s.

Before anything is sent: the kernel's owner must be the credentials' user, and the sources kit
can check are checked (datasets exist and are visible, the competition's rules are accepted).
Kaggle answers 403 as often as 404 for a kernel it does not show (one that does not exist yet),
so "what version is there now" treats both as "none yet"; a genuine permission problem surfaces
as the push's own refusal.

No duplicates: before sending, the ledger records a *pending* push (content hash, fingerprint of
the text sent, the version Kaggle had before). When the reply is lost (5xx, reset, timeout, or kit
killed mid-call), `kit.kaggle.reconcile` asks Kaggle, riding out its read-after-write lag, whether
a newer version holds our source: if so that is our push and it is recorded; only otherwise is the
push sent again. An experiment whose content hash matches its latest version is not pushed again
unless forced.

Queues: `push_queue` pushes many kernels (a sweep) keeping at most `concurrency` accelerator
sessions busy, polling the busy ones with back-off. Kaggle's own session cap also counts sessions
kit did not start: a push refused for it waits for a free slot ($KIT_SLOT_WAIT_S, default 6 h)
instead of stopping. Re-running a queue resumes from the ledger.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kernels.accelerators import NO_ACCELERATOR
from kit.errors import KitError
from kit.kaggle.client import KaggleClient, hint
from kit.kaggle.ledger import Ledger, experiment_entry, is_active, latest_version, now_iso
from kit.kaggle.reconcile import (
    PollPolicy,
    clear_pending,
    env_seconds,
    landed,
    push_body,
    reconcile_pending,
    record_version,
    server_version,
    sha256_text,
    source_fingerprint,
)
from kit.kaggle.retry import KaggleCallError, classify, describe
from kit.kaggle.status import refresh
from kit.render.kernel import RenderedKernel

__all__ = ["PushOutcome", "SessionCapReached", "busy_sessions", "check_sources", "push_body", "push_one",
           "push_queue", "reconcile_pending", "sha256_text", "unchanged"]

DEFAULT_CONCURRENCY = 2
DEFAULT_SLOT_WAIT_S = 6 * 3600.0
SESSION_CAP = re.compile(r"session count|session limit|maximum .*sessions?", re.IGNORECASE)
SLUG_PARTS = {"kernels": 2, "models": 5}
Note = Callable[[str], None]


class SessionCapReached(KitError):
    """Kaggle refused a push: the account's accelerator sessions are all busy (some maybe not kit's)."""


@dataclass(frozen=True)
class PushOutcome:
    experiment: str
    kernel: str
    version: int | None
    action: str  # pushed | reconciled | skipped
    note: str = ""


def unchanged(client: KaggleClient, ledger: Ledger, kernel: RenderedKernel,
              sleep: Callable[[float], None] = time.sleep, on_note: Note | None = None) -> PushOutcome | None:
    """A 'skipped' outcome when the ledger's latest version of this experiment has the same content hash
    (a pending push is reconciled first), else None."""
    name = kernel.experiment.name
    if (ledger.read()["experiments"].get(name) or {}).get("pending"):
        reconcile_pending(client, ledger, name, sleep, on_note)
    entry = ledger.read()["experiments"].get(name)
    latest = latest_version(entry)
    if latest and latest["content_hash"] == kernel.content_hash and entry.get("kernel") == kernel.kernel_id:
        return PushOutcome(name, kernel.kernel_id, latest["version"], "skipped",
                           f"unchanged since v{latest['version']} ({latest['status']}); --force pushes it again")
    return None


def _check_owner(client: KaggleClient, kernel: RenderedKernel) -> None:
    owner = kernel.kernel_id.split("/", 1)[0]
    user = client.username
    if owner != user:
        raise KitError(f"push {kernel.kernel_id}: the kernel belongs to {owner!r} but the Kaggle credentials are "
                       f"{user!r}'s; Kaggle only lets you push your own kernels (fix the id in "
                       f"{kernel.directory / 'kernel-metadata.json'})")


def _refused(kernel: RenderedKernel, error: str) -> KitError:
    competition = next(iter(kernel.metadata.get("competition_sources") or []), "")
    if SESSION_CAP.search(error):
        return SessionCapReached(f"push {kernel.kernel_id}: Kaggle refused it: {error}")
    return KitError(f"push {kernel.kernel_id}: Kaggle refused it: {hint(error, competition)}")


def _invalid_line(kernel_id: str, version: int, invalid: dict[str, list[str]]) -> str:
    named = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in sorted(invalid.items()))
    return (f"push {kernel_id}: Kaggle says these sources do not exist ({named}); it pushed v{version} anyway, "
            "which will fail without them: fix the sources and push again")


def push_one(
    client: KaggleClient,
    ledger: Ledger,
    kernel: RenderedKernel,
    accelerator: str,
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    on_note: Note | None = None,
) -> PushOutcome:
    """Push one rendered kernel (see module docstring for the no-duplicate protocol)."""
    name = kernel.experiment.name
    _check_owner(client, kernel)
    skip = unchanged(client, ledger, kernel, sleep, on_note)
    if skip is not None and not force:
        return skip
    latest = latest_version(ledger.read()["experiments"].get(name))
    fingerprint = source_fingerprint(push_body(kernel.code_file, kernel.metadata.get("kernel_type", "script")))
    since, _ = server_version(client, kernel.kernel_id)  # 403/404: none yet (Kaggle hides what it lacks)
    since = max(since, int(latest["version"]) if latest else 0)
    pending = {"content_hash": kernel.content_hash, "body_sha256": fingerprint, "since_version": since,
               "accelerator": accelerator, "started_at": now_iso()}
    with ledger.transaction() as data:
        experiment_entry(data, name, kernel.kernel_id)["pending"] = pending
    timeout = kernel.experiment.kaggle.timeout_s or None
    for attempt in range(1, client.policy.attempts + 1):
        try:
            reply = client.push(kernel.directory, None, timeout)
        except Exception as exc:
            if isinstance(exc, KitError) or classify(exc) is None:
                clear_pending(ledger, name)
                if isinstance(exc, KitError):
                    raise
                raise KaggleCallError(f"push {kernel.kernel_id}: {hint(describe(exc))}") from None
            version = landed(client, kernel.kernel_id, pending, sleep, on_note)
            if version is not None:
                record_version(ledger, name, kernel.kernel_id, version, pending, reconciled=True)
                return PushOutcome(name, kernel.kernel_id, version, "reconciled", f"reply lost ({describe(exc)})")
            if attempt == client.policy.attempts:
                clear_pending(ledger, name)
                raise KaggleCallError(
                    f"push {kernel.kernel_id}: still failing after {attempt} attempts ({describe(exc)})"
                ) from None
            client.stats.record(classify(exc) or "push")
            sleep(client.policy.delay(attempt))
            continue
        if reply.error:
            clear_pending(ledger, name)
            raise _refused(kernel, reply.error)
        if not reply.version:
            version = landed(client, kernel.kernel_id, pending, sleep, on_note)
            if version is None:
                clear_pending(ledger, name)
                raise KitError(f"push {kernel.kernel_id}: Kaggle's reply had no version number and none was found")
            record_version(ledger, name, kernel.kernel_id, version, pending, reconciled=True)
            return PushOutcome(name, kernel.kernel_id, version, "reconciled", "reply without a version number")
        record_version(ledger, name, kernel.kernel_id, int(reply.version), pending, reconciled=False)
        if reply.invalid:
            raise KitError(_invalid_line(kernel.kernel_id, int(reply.version), reply.invalid))
        return PushOutcome(name, kernel.kernel_id, int(reply.version), "pushed", reply.url)
    raise AssertionError("unreachable")  # pragma: no cover


def check_sources(client: KaggleClient, kernels: Sequence[RenderedKernel]) -> None:
    """What kit can check before anything is pushed: slugs well formed, datasets visible, competitions
    joined. The first problem is one KitError naming the kernel and the source."""
    seen: dict[str, str] = {}
    for kernel in kernels:
        meta = kernel.metadata
        checks = [("datasets", s) for s in meta.get("dataset_sources") or []] + \
            [("competitions", s) for s in meta.get("competition_sources") or []] + \
            [("kernels", s) for s in meta.get("kernel_sources") or []] + \
            [("models", s) for s in meta.get("model_sources") or []]
        for kind, source in checks:
            key = f"{kind}:{source}"
            if key not in seen:
                seen[key] = _source_problem(client, kind, str(source))
            if seen[key]:
                raise KitError(f"push {kernel.kernel_id}: {kind[:-1]} source {source!r}: {seen[key]}; nothing was pushed")


def _source_problem(client: KaggleClient, kind: str, source: str) -> str:
    if kind == "competitions":
        return client.competition_access(source)
    parts = source.split("/")
    if kind == "datasets":
        if len(parts) != 2 or not all(parts):
            return "expected owner/dataset-slug"
        return "" if client.dataset_visible(source) else "Kaggle has no such dataset (or you cannot see it)"
    if len(parts) != SLUG_PARTS[kind] or not all(parts):
        return "expected " + ("owner/kernel-slug" if kind == "kernels" else "owner/model/framework/variation/version")
    return ""


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
    check: bool = True,
) -> list[PushOutcome]:
    """Push kernels in order, never more than `concurrency` accelerator sessions busy at once.

    `on_event(kind, payload)` reports progress: ("pushed", PushOutcome), ("waiting", [busy names]),
    ("note", text) for what kit waits for. With `check`, `check_sources` runs first."""
    if concurrency < 1:
        raise KitError(f"--concurrency {concurrency}: expected an integer >= 1")
    poll = poll or PollPolicy.from_env()

    def note(text: str) -> None:
        if on_event:
            on_event("note", text)

    if check:
        check_sources(client, kernels)
    outcomes: list[PushOutcome] = []
    for kernel in kernels:
        skip = None if force else unchanged(client, ledger, kernel, sleep, note)
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
            refresh(client, ledger, busy, on_note=note)
        outcome = _push_when_free(client, ledger, kernel, accelerator, force, poll, sleep, note)
        outcomes.append(outcome)
        if on_event:
            on_event("pushed", outcome)
    return outcomes


def _push_when_free(client: KaggleClient, ledger: Ledger, kernel: RenderedKernel, accelerator: str, force: bool,
                    poll: PollPolicy, sleep: Callable[[float], None], note: Note) -> PushOutcome:
    """push_one, waiting (up to $KIT_SLOT_WAIT_S) while Kaggle refuses it for the session cap."""
    limit = env_seconds("KIT_SLOT_WAIT_S", DEFAULT_SLOT_WAIT_S)
    deadline = time.monotonic() + limit
    delays = poll.delays()
    noted = False
    while True:
        try:
            return push_one(client, ledger, kernel, accelerator, force=force, sleep=sleep, on_note=note)
        except SessionCapReached as exc:
            if time.monotonic() >= deadline:
                raise KitError(f"{exc} (waited {limit:.0f} s for a free slot; $KIT_SLOT_WAIT_S sets how long)") from None
            busy = busy_sessions(ledger)
            if not noted:
                note(f"{kernel.experiment.name}: Kaggle's accelerator session cap is reached (sessions kit did not "
                     f"start count too; kit's busy: {', '.join(busy) or 'none'}); waiting up to {limit:.0f} s "
                     "for a free slot")
                noted = True
            sleep(next(delays))
            if busy:
                refresh(client, ledger, busy, on_note=note)
