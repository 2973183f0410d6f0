"""Push rendered experiments to Kaggle without ever creating a duplicate version.

In:  `RenderedKernel`s (from `kit.render.render_experiment`), a `KaggleClient`, the `Ledger`.
Out: one `PushOutcome` per kernel (pushed, reconciled, skipped); the ledger records for each the
     kernel id, version, content hash, source fingerprint and accelerator. Refusals (Kaggle's
     `{"error": ...}` reply, which the CLI would print and exit 0 on), sources Kaggle says do not
     exist, and final failures raise one-line `KitError`s.

Before anything is sent: the kernel's owner must be the credentials' user, the title's slug (as
Kaggle makes it, `kit.kaggle.slugs`) must equal the id's, and the sources kit can check are checked
(datasets exist and are visible, the competition's rules are accepted). Kaggle's reply URL is the
truth about where the kernel was filed: kit tracks that kernel. What the client prints (its
warnings) is passed on as notes, never swallowed.
Kaggle answers 403 as often as 404 for a kernel it does not show (one that does not exist yet),
so "what version is there now" treats both as "none yet"; a genuine permission problem surfaces
as the push's own refusal.

No duplicates: before sending, the ledger records a *pending* push (content hash, fingerprint of
the text sent, the version Kaggle had before). A 429 means Kaggle did no work: kit waits as long
as Retry-After asks (bounded, announced) and pushes again. When the reply is lost (5xx, reset,
timeout, a reply that is not JSON, or kit killed mid-call), `kit.kaggle.reconcile` asks Kaggle,
riding out its read-after-write lag, whether a newer version holds our source: if so that is our
push and it is recorded; if Kaggle shows the kernel without it, the push is sent again (bounded);
if Kaggle shows nothing at all, kit stops with one line (`PushUncertain`: what it knows, how to
check, how to force) and keeps the pending record, so a later `kit push` settles it first. An
experiment whose content hash matches its latest version is not pushed again unless forced.

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

from kernels.accelerators import ACCELERATORS, NO_ACCELERATOR
from kit.errors import KitError
from kit.kaggle.client import KaggleClient, PushReply, hint
from kit.kaggle.ledger import Ledger, experiment_entry, is_active, latest_version, now_iso
from kit.kaggle.reconcile import (
    Landing,
    PollPolicy,
    age_s,
    clear_pending,
    consistency_s,
    env_seconds,
    landed,
    push_body,
    reconcile_pending,
    record_version,
    server_version,
    settle_s,
    sha256_text,
    source_fingerprint,
    uncertain_line,
)
from kit.kaggle.retry import (
    CREDENTIALS_FIX,
    RATE_LIMITED,
    CredentialsRejected,
    KaggleCallError,
    KaggleUnreachable,
    RateLimitWait,
    advice,
    classify,
    describe,
    http_status,
)
from kit.kaggle.slugs import kernel_from_url, slug_problem
from kit.kaggle.status import refresh
from kit.render.kernel import RenderedKernel

__all__ = ["PushOutcome", "PushUncertain", "SessionCapReached", "busy_sessions", "check_sources", "push_body", "push_one",
           "push_queue", "reconcile_pending", "sha256_text", "unchanged"]

DEFAULT_CONCURRENCY = 2
DEFAULT_SLOT_WAIT_S = 6 * 3600.0
SESSION_CAP = re.compile(r"session count|session limit|maximum .*sessions?", re.IGNORECASE)
SLUG_PARTS = {"kernels": 2, "models": 5}
Note = Callable[[str], None]


class SessionCapReached(KitError):
    """Kaggle refused a push: the account's accelerator sessions are all busy (some maybe not kit's)."""


class PushUncertain(KitError):
    """A push's reply was lost and Kaggle showed nothing: it may hold the push; kit pushed nothing again."""


@dataclass(frozen=True)
class PushOutcome:
    experiment: str
    kernel: str
    version: int | None
    action: str  # pushed | reconciled | skipped
    note: str = ""


def unchanged(client: KaggleClient, ledger: Ledger, kernel: RenderedKernel,
              sleep: Callable[[float], None] = time.sleep, on_note: Note | None = None,
              force: bool = False) -> PushOutcome | None:
    """A 'skipped' outcome when the ledger's latest version of this experiment has the same content hash
    (a pending push is reconciled first: one still unknown raises PushUncertain, or with `force` is
    dropped), else None."""
    name = kernel.experiment.name
    if (ledger.read()["experiments"].get(name) or {}).get("pending"):
        try:
            reconcile_pending(client, ledger, name, sleep, on_note)
        except CredentialsRejected:
            raise
        except KitError as exc:
            raise PushUncertain(f"push {kernel.kernel_id}: an earlier push's reply was lost and asking Kaggle whether "
                                f"it landed failed ({exc}); nothing was pushed: run `kit push` again later") from None
        entry = ledger.read()["experiments"].get(name) or {}
        if entry.get("pending"):
            if not force:
                raise PushUncertain(uncertain_line(name, entry["kernel"], "an earlier push's reply was lost",
                                                   consistency_s()))
            if on_note:
                on_note(f"{name}: --force: the earlier push Kaggle shows nothing of is dropped; pushing again")
            clear_pending(ledger, name)
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


def _check_slug(kernel: RenderedKernel) -> None:
    problem = slug_problem(kernel.kernel_id, kernel.metadata.get("title"))
    if problem:
        raise KitError(f"push {kernel.kernel_id}: {problem}: make the title's slug equal the id in "
                       f"{kernel.directory / 'kernel-metadata.json'}; nothing was sent")


def _reconcile(client: KaggleClient, kernel: RenderedKernel, pending: dict[str, Any], why: str,
               sleep: Callable[[float], None], on_note: Note | None) -> Landing:
    """`landed`, where a failure to ask (other than rejected credentials) is PushUncertain: the pending
    record stays, nothing is pushed again."""
    try:
        return landed(client, kernel.kernel_id, pending, sleep, on_note)
    except CredentialsRejected:
        raise
    except KitError as exc:
        raise PushUncertain(f"push {kernel.kernel_id}: {why}, and asking Kaggle whether it landed failed ({exc}); "
                            f"nothing was pushed again: run `kit push` again later to settle it") from None


def _never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached Kaggle (refused connection, connect timeout)."""
    import requests

    text = str(exc)
    return isinstance(exc, requests.exceptions.ConnectTimeout) or "NewConnectionError" in text \
        or "Connection refused" in text


def _recorded(ledger: Ledger, kernel: RenderedKernel, reply: PushReply, pending: dict[str, Any],
              on_note: Note | None) -> PushOutcome:
    """Record a push Kaggle answered, under the kernel its URL names (Kaggle's word over kit's id)."""
    name = kernel.experiment.name
    for line in reply.warnings:
        if on_note:
            on_note(f"{name}: the kaggle client says: {line}")
    filed = kernel_from_url(reply.url) or kernel.kernel_id
    note = reply.url
    if filed != kernel.kernel_id:
        note = f"Kaggle filed it as {filed}, not {kernel.kernel_id} (its reply's URL says so); kit follows {filed}"
        if on_note:
            on_note(f"{name}: {note}")
    record_version(ledger, name, filed, int(reply.version or 0), pending, reconciled=False)
    if reply.invalid:
        raise KitError(_invalid_line(filed, int(reply.version or 0), reply.invalid))
    return PushOutcome(name, filed, int(reply.version or 0), "pushed", note)


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
    _check_slug(kernel)
    skip = unchanged(client, ledger, kernel, sleep, on_note, force=force)
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
    what = f"push {kernel.kernel_id}"
    attempt = 0
    limited = RateLimitWait(client.policy)
    while True:
        try:
            reply = client.push(kernel.directory, None, timeout)
        except Exception as exc:
            reason = None if isinstance(exc, KitError) else classify(exc)
            if reason is None:
                clear_pending(ledger, name)
                if isinstance(exc, KitError):
                    raise
                if http_status(exc) == 401:
                    raise CredentialsRejected(f"{what}: {CREDENTIALS_FIX}") from None
                raise KaggleCallError(f"{what}: {hint(describe(exc))}; nothing was pushed{advice(exc)}") from None
            if reason == RATE_LIMITED:  # refused before any work: wait as asked (bounded), then push again
                try:
                    wait = limited.next_wait(exc, what, "nothing was pushed")
                except KaggleUnreachable:
                    clear_pending(ledger, name)
                    raise
                client.announce_retry(what, limited.spell, reason, wait)
                sleep(wait)
                continue
            attempt += 1
            if not _never_sent(exc):
                landing = _reconcile(client, kernel, pending, f"the reply was lost ({describe(exc)})", sleep, on_note)
                if landing.version is not None:
                    record_version(ledger, name, kernel.kernel_id, landing.version, pending, reconciled=True)
                    return PushOutcome(name, kernel.kernel_id, landing.version, "reconciled",
                                       f"reply lost ({describe(exc)})")
                if not landing.seen and age_s(pending["started_at"]) < settle_s():  # Kaggle may hold it: stop
                    raise PushUncertain(uncertain_line(name, kernel.kernel_id, f"the reply was lost ({describe(exc)})",
                                                       consistency_s())) from None
            if attempt >= client.policy.attempts:
                clear_pending(ledger, name)
                raise KaggleUnreachable(f"{what}: still failing after {attempt} attempts ({describe(exc)}); "
                                        "nothing was pushed; try again later") from None
            wait = client.policy.delay(attempt)
            client.announce_retry(what, attempt, reason, wait)
            sleep(wait)
            continue
        if reply.error:
            clear_pending(ledger, name)
            raise _refused(kernel, reply.error)
        if not reply.version:
            landing = _reconcile(client, kernel, pending, "Kaggle's reply had no version number", sleep, on_note)
            if landing.version is None:
                raise PushUncertain(uncertain_line(name, kernel.kernel_id, "Kaggle's reply had no version number",
                                                   consistency_s()))
            record_version(ledger, name, kernel.kernel_id, landing.version, pending, reconciled=True)
            return PushOutcome(name, kernel.kernel_id, landing.version, "reconciled", "reply without a version number")
        return _recorded(ledger, kernel, reply, pending, on_note)


def check_sources(client: KaggleClient, kernels: Sequence[RenderedKernel]) -> None:
    """What kit can check before anything is pushed: slugs well formed, datasets visible, competitions
    joined, titles whose slug is the id's. The first problem is one KitError naming the kernel and the source."""
    for kernel in kernels:
        _check_slug(kernel)
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


def default_concurrency(accelerators: Sequence[str]) -> int:
    """Sessions a sweep keeps busy by default: Kaggle's own cap for its accelerators (the smallest: a
    TPU sweep runs one at a time), DEFAULT_CONCURRENCY when none has a known cap."""
    caps = [ACCELERATORS[a].sessions_at_once for a in accelerators if a in ACCELERATORS and a != NO_ACCELERATOR]
    return min(caps) if caps else DEFAULT_CONCURRENCY


def busy_sessions(ledger: Ledger) -> list[str]:
    """Experiments that may hold an accelerator session: a push in flight (pending) on an accelerator, else a
    latest version still QUEUED or RUNNING on one. The pending push's machine counts, not the previous
    version's (a TPU push of an experiment whose last run was on CPU holds a TPU session)."""
    data = ledger.read()
    busy = []
    for name, entry in data["experiments"].items():
        version = latest_version(entry)
        holder = entry.get("pending") or (version if is_active(version) else None)
        if holder and holder.get("accelerator") != NO_ACCELERATOR:
            busy.append(name)
    return sorted(busy)


def push_queue(
    client: KaggleClient,
    ledger: Ledger,
    kernels: Sequence[RenderedKernel],
    accelerator_of: Callable[[RenderedKernel], str],
    concurrency: int | None = None,
    force: bool = False,
    poll: PollPolicy | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    check: bool = True,
) -> list[PushOutcome]:
    """Push kernels in order, never more than `concurrency` accelerator sessions busy at once.

    `on_event(kind, payload)` reports progress: ("pushed", PushOutcome), ("waiting", [busy names]),
    ("note", text) for what kit waits for. With `check`, `check_sources` runs first. `concurrency`
    None: `default_concurrency` of the kernels' accelerators."""
    if concurrency is None:
        concurrency = default_concurrency([accelerator_of(k) for k in kernels])
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
