"""Did a push land? The pieces `push` and `status` share: fingerprints, the ledger's pending
record, polling, and settling a push whose reply was lost.

In:  a `KaggleClient`, the `Ledger`, an experiment name, a pending push record.
Out: `reconcile_pending` / `landed`: the version a push created on Kaggle (or None);
     `record_version` / `clear_pending` write the ledger; `source_fingerprint` compares what was
     sent with what Kaggle hands back; `PollPolicy` is the delay schedule of every poll loop.

Kaggle hands a notebook back with its own metadata block and JSON layout, so a push is
recognised by a fingerprint of its cells (type and source), not the bytes; a script by its text
with line ends and trailing blanks normalised. Kaggle is eventually consistent: for a while after
a push, GetKernel answers 403/404 or shows the previous version. `landed` therefore asks again
until the push shows or `consistency_s()` has passed ($KIT_CONSISTENCY_S, default 60 s), and says
what it waits for. A push is deemed lost (and may be sent again) only when Kaggle *answered*: it
showed the kernel without our version (`Landing.seen`). When it showed nothing at all (403/404 all
the window long), nothing is known: the pending record stays, the caller stops, and a later
`reconcile_pending` deems it lost only once it is older than `settle_s()` ($KIT_PENDING_SETTLE_S,
default 15 min) with Kaggle still showing nothing.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.kaggle.client import KaggleClient, KernelNotVisible
from kit.kaggle.ledger import Ledger, experiment_entry, now_iso

DEFAULT_POLL_S = 10.0
DEFAULT_POLL_MAX_S = 120.0
POLL_FACTOR = 1.5
DEFAULT_CONSISTENCY_S = 60.0
CONSISTENCY_POLLS = 6  # ask about this many times within the window
DEFAULT_SETTLE_S = 900.0  # a pending push Kaggle still shows nothing of after this long is deemed lost
Note = Callable[[str], None]


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

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment (a bad value is one clear error)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise KitError(f"${name}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise KitError(f"${name}={raw!r}: expected seconds >= 0")
    return value


def consistency_s() -> float:
    """How long Kaggle may take to show a push ($KIT_CONSISTENCY_S)."""
    return env_seconds("KIT_CONSISTENCY_S", DEFAULT_CONSISTENCY_S)


def settle_s() -> float:
    """How old a pending push must be before Kaggle showing nothing of it means it was lost ($KIT_PENDING_SETTLE_S)."""
    return env_seconds("KIT_PENDING_SETTLE_S", DEFAULT_SETTLE_S)


def age_s(stamp: str | None) -> float:
    """Seconds since a ledger time stamp ("...Z"); infinity when absent or unreadable."""
    if not stamp:
        return float("inf")
    try:
        return time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return float("inf")


@dataclass(frozen=True)
class Landing:
    """What reconciling a push found: our version (None if not found) and whether Kaggle showed the kernel."""

    version: int | None
    seen: bool


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def _joined(source: Any) -> str:
    text = "".join(source) if isinstance(source, list) else str(source or "")
    return text.replace("\r\n", "\n").rstrip()


def source_fingerprint(text: str) -> str:
    """sha256 of what makes a kernel's source: a notebook's cells (type, source), else the script's
    lines (line ends and trailing blanks normalised). Kaggle's metadata and layout do not count."""
    try:
        notebook = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        notebook = None
    if isinstance(notebook, dict) and isinstance(notebook.get("cells"), list):
        cells = [[str(c.get("cell_type", "")), _joined(c.get("source"))] for c in notebook["cells"]
                 if isinstance(c, dict)]
        return sha256_text(json.dumps(cells))
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return sha256_text("\n".join(lines).strip("\n"))


def _look(client: KaggleClient, kernel: str) -> tuple[int, str, bool]:
    """(current version, source fingerprint, shown at all) as Kaggle answers now."""
    owner, slug = kernel.split("/", 1)
    try:
        info = client.kernel_info(owner, slug)
    except KernelNotVisible:
        return 0, "", False
    return int(info.current_version or 0), source_fingerprint(info.source), True


def server_version(client: KaggleClient, kernel: str) -> tuple[int, str]:
    """(current version, source fingerprint) Kaggle shows now; (0, "") when it shows none (403/404)."""
    current, fingerprint, _ = _look(client, kernel)
    return current, fingerprint


def landed(client: KaggleClient, kernel: str, pending: Mapping[str, Any], sleep: Callable[[float], None],
           on_note: Note | None = None, window_s: float | None = None) -> Landing:
    """Whether a pending push created a version on Kaggle (newer than before, holding our source).
    Asks until the push shows, Kaggle shows a newer version that is not ours, or `window_s` passes;
    `seen` says whether Kaggle showed the kernel at all at the last look (else nothing is known)."""
    window = consistency_s() if window_s is None else window_s
    since, want = int(pending.get("since_version") or 0), pending["body_sha256"]
    deadline = time.monotonic() + window
    step = max(window / CONSISTENCY_POLLS, 0.01)
    noted = False
    while True:
        current, fingerprint, seen = _look(client, kernel)
        if current > since:
            return Landing(current if fingerprint == want else None, True)
        if time.monotonic() >= deadline:
            return Landing(None, seen)
        if on_note and not noted:
            on_note(f"{kernel}: waiting up to {window:.0f} s for Kaggle to show whether the push landed "
                    f"(it lags behind writes; nothing is pushed again before)")
            noted = True
        sleep(min(step, max(0.0, deadline - time.monotonic())))


def record_version(ledger: Ledger, name: str, kernel: str, version: int, pending: Mapping[str, Any],
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


def clear_pending(ledger: Ledger, name: str) -> None:
    with ledger.transaction() as data:
        data["experiments"][name]["pending"] = None


def reconcile_pending(client: KaggleClient, ledger: Ledger, name: str,
                      sleep: Callable[[float], None] = time.sleep, on_note: Note | None = None) -> int | None:
    """Settle a push recorded as pending (its reply lost, or kit stopped mid-push): record and return its
    version if it landed; clear it when Kaggle shows the kernel without it, or shows nothing although
    the push is older than `settle_s()`; else keep it (still unknown) and return None."""
    entry = ledger.read()["experiments"].get(name) or {}
    pending = entry.get("pending")
    if not pending:
        return None
    landing = landed(client, entry["kernel"], pending, sleep, on_note)
    if landing.version is not None:
        record_version(ledger, name, entry["kernel"], landing.version, pending, reconciled=True)
        return landing.version
    age = age_s(pending.get("started_at"))
    if landing.seen or age >= settle_s():
        if not landing.seen and on_note:
            on_note(f"{name}: Kaggle still shows nothing of the push of {age:.0f} s ago: deemed lost")
        clear_pending(ledger, name)
    return None


def uncertain_line(name: str, kernel: str, why: str, window_s: float) -> str:
    """The one line kit stops with when it cannot tell whether a push landed (nothing is pushed again)."""
    return (f"push {kernel}: {why}, and Kaggle showed nothing of {kernel} for {window_s:.0f} s, so kit cannot tell "
            f"whether the push made a new version; nothing was pushed again. Check with `kit status {name}` "
            f"(or `kaggle kernels status {kernel}`) in a few minutes; `kit push` again settles it (a push Kaggle "
            f"shows nothing of after {settle_s():.0f} s is deemed lost), `kit push --force` pushes now anyway")
