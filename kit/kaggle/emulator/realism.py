"""What kaggle.com answers that a kind server would not: the emulator's default behaviours.

In:  a `Realism` (each behaviour on its own switch or number; `Realism.kind()` turns them all off,
     the emulator's old mode), then questions from the services and the HTTP layer.
Out: `Behaviours`: deterministic decisions (a hash of seed and key, like the fault plan) and the
     state of a rate-limit spell; `kaggle_notebook` (a notebook as GetKernel hands it back).

The behaviours (sources in ../../../shared notes and the kaggle-cli issues):
- a kernel that does not exist, or that the caller cannot see, answers 403 "Permission
  'kernels.get' was denied" (not 404);
- read-after-write lag: a version younger than `lag_s` is not visible yet (403 or 404; GetKernel
  shows the previous version);
- stalled replies: with `stall_rate`, a reply is held for `stall_s` (longer than a client's read
  timeout), after the work is done;
- a notebook read back carries Kaggle's `metadata.kaggle` block and its own JSON layout;
- GetSubmission answers 404 for `submission_lag_s` after CreateSubmission;
- push replies name sources that do not exist (invalid*Sources) and the kernel is pushed anyway;
- the accelerator session cap counts `external_sessions` started elsewhere (for
  `external_session_s` from the first push that meets the cap's count);
- rate-limit spells: with `throttle_rate` per call, every call answers 429 with Retry-After 0 for
  `throttle_s`;
- a new version is NEW_SCRIPT for `new_script_s` before QUEUED; with `cancel_rate` a run is
  cancelled (CANCEL_REQUESTED, then CANCEL_ACKNOWLEDGED); with `long_run_rate` it runs `long_run_s`;
- `joined=False`: the user has not accepted the competition's rules (403 on submit and download,
  a refused push with the competition as a source); `phone_verified=False`: pushes asking for an
  accelerator or the internet are refused;
- `key_revoked`: every call answers 401 "Unauthenticated"; `token_expired`: the token check
  (IntrospectToken) answers 401;
- a new kernel is filed under the slug kaggle.com makes of its title (`title_slug`: "kaggle", the
  client's rule, see kit.kaggle.slugs; "dashes", a server that turns every other character into a
  dash; "off", the id as sent), and the reply's URL names it;
- rate-limit refusals carry `Retry-After: retry_after_s` (kaggle.com sends 0 or nothing useful);
- one batch TPU session at a time (`tpu_sessions`; "Maximum batch TPU session count of 1 reached");
- a retired accelerator (P100, TPU v3-8) is replaced silently (`retired_substitute`);
- listings come in pages of at most `max_page_size` items whatever page size was asked (0: as asked).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from kernels.accelerators import ACCELERATORS

DEFAULT_LAG_S = 8.0
DEFAULT_STALL_RATE = 0.02
DEFAULT_STALL_S = 90.0  # longer than any sensible read timeout
DEFAULT_SUBMISSION_LAG_S = 5.0
DEFAULT_EXTERNAL_SESSIONS = 1
DEFAULT_EXTERNAL_SESSION_S = 120.0
DEFAULT_THROTTLE_RATE = 0.01
DEFAULT_THROTTLE_S = 120.0
DEFAULT_NEW_SCRIPT_S = 2.0
DEFAULT_CANCEL_S = 2.0
DEFAULT_LONG_RUN_S = 4 * 3600.0
DEFAULT_TPU_SESSIONS = ACCELERATORS["TpuV5E8"].sessions_at_once  # kaggle.com: one batch TPU session at a time
SLUG_RULES = ("kaggle", "dashes", "off")
MAX_STALL_STREAK = 1  # a stalled call is answered the next time (flaky, not hostile)
PERMISSION_DENIED = "Permission 'kernels.get' was denied"
RULES_NOT_ACCEPTED = "You must accept this competition's rules before you'll be able to {what}"
PHONE_NOT_VERIFIED = ("Your account must be phone verified to use accelerators or internet in a notebook: "
                      "verify your phone number at https://www.kaggle.com/settings")
KAGGLE_KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KAGGLE_LANGUAGE_INFO = {"name": "python", "version": "3.11.13", "mimetype": "text/x-python",
                        "file_extension": ".py", "nbconvert_exporter": "python", "pygments_lexer": "ipython3"}


@dataclass(frozen=True)
class Realism:
    """Switches for kaggle.com's unkind behaviours (see module docstring); the defaults are kaggle.com's."""

    seed: int = 0
    hidden_is_403: bool = True
    lag_s: float = DEFAULT_LAG_S
    stall_rate: float = DEFAULT_STALL_RATE
    stall_s: float = DEFAULT_STALL_S
    notebook_metadata: bool = True
    submission_lag_s: float = DEFAULT_SUBMISSION_LAG_S
    invalid_sources: bool = True
    external_sessions: int = DEFAULT_EXTERNAL_SESSIONS
    external_session_s: float = DEFAULT_EXTERNAL_SESSION_S
    throttle_rate: float = DEFAULT_THROTTLE_RATE
    throttle_s: float = DEFAULT_THROTTLE_S
    new_script_s: float = DEFAULT_NEW_SCRIPT_S
    cancel_rate: float = 0.0
    cancel_s: float = DEFAULT_CANCEL_S
    long_run_rate: float = 0.0
    long_run_s: float = DEFAULT_LONG_RUN_S
    joined: bool = True
    phone_verified: bool = True
    key_revoked: bool = False
    token_expired: bool = False
    title_slug: str = "kaggle"
    retry_after_s: float = 0.0
    tpu_sessions: int = DEFAULT_TPU_SESSIONS
    retired_substitute: bool = True
    max_page_size: int = 0

    @classmethod
    def kind(cls, seed: int = 0) -> Realism:
        """The emulator's old, kind mode: none of the behaviours."""
        return cls(seed=seed, hidden_is_403=False, lag_s=0.0, stall_rate=0.0, notebook_metadata=False,
                   submission_lag_s=0.0, invalid_sources=False, external_sessions=0, throttle_rate=0.0,
                   new_script_s=0.0, title_slug="off", tpu_sessions=0, retired_substitute=False)


def filed_slug(rule: str, title: str, slug: str) -> str:
    """The slug a new kernel titled `title`, sent with id slug `slug`, is filed under by `rule`."""
    if rule == "off" or not title:
        return slug
    if rule == "dashes":
        return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or slug
    from kit.kaggle.slugs import kaggle_slug

    return kaggle_slug(title) or slug


def describe_realism(realism: Realism) -> str:
    """One line naming the settings that differ from kind mode."""
    kind = asdict(Realism.kind())
    changed = {f.name: getattr(realism, f.name) for f in fields(realism)
               if f.name != "seed" and getattr(realism, f.name) != kind[f.name]
               and not (f.name.endswith("_s") and not _switch_on(realism, f.name))}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "kind (none)"


def _switch_on(realism: Realism, name: str) -> bool:
    """Whether the behaviour a duration belongs to is on (durations of switched-off ones are noise)."""
    owner = {"stall_s": "stall_rate", "external_session_s": "external_sessions", "throttle_s": "throttle_rate",
             "cancel_s": "cancel_rate", "long_run_s": "long_run_rate"}.get(name)
    return owner is None or bool(getattr(realism, owner))


class Behaviours:
    """Deterministic decisions for a `Realism`: a hash of (seed, key, how often the key was seen)."""

    def __init__(self, realism: Realism, clock: Any = time.time) -> None:
        self.realism = realism
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._streak: dict[str, int] = {}
        self._throttle_until = 0.0
        self._external_from: float | None = None
        self.started = clock()

    def _uniform(self, key: str, count: bool = True) -> float:
        with self._lock:
            n = self._seen.get(key, 0)
            if count:
                self._seen[key] = n + 1
        digest = hashlib.sha256(f"{self.realism.seed}|real|{key}|{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def chance(self, key: str, rate: float, max_streak: int | None = None) -> bool:
        """True with probability `rate`, reproducibly for the seed and the sequence of calls of `key`;
        never more than `max_streak` times in a row for one key when given."""
        if rate <= 0:
            return False
        hit = self._uniform(key) < rate
        if max_streak is not None:
            with self._lock:
                streak = self._streak.get(key, 0)
                hit = hit and streak < max_streak
                self._streak[key] = streak + 1 if hit else 0
        return hit

    def stalls(self, key: str) -> bool:
        """Whether this call's reply stalls (at most MAX_STALL_STREAK times in a row per key)."""
        return self.chance(f"stall:{key}", self.realism.stall_rate, MAX_STALL_STREAK)

    def pick_hidden_status(self, key: str) -> int:
        """403 or 404 for a version not visible yet (the same answer for the same key)."""
        if not self.realism.hidden_is_403:
            return 404
        digest = hashlib.sha256(f"{self.realism.seed}|hidden|{key}".encode()).digest()
        return 403 if digest[0] % 2 else 404

    def visible(self, created: float) -> bool:
        """Whether a version created at `created` is visible yet (read-after-write lag)."""
        return self._clock() - created >= self.realism.lag_s

    def throttled(self, key: str) -> bool:
        """True while a rate-limit spell lasts; a call may start one (with `throttle_rate`)."""
        now = self._clock()
        with self._lock:
            if now < self._throttle_until:
                return True
        if self.chance(f"throttle:{key}", self.realism.throttle_rate):
            with self._lock:
                self._throttle_until = now + self.realism.throttle_s
            return True
        return False

    def external_sessions(self) -> int:
        """Accelerator sessions the user started elsewhere (in the browser), still running now: they
        run for `external_session_s` from the first time the cap is counted."""
        now = self._clock()
        with self._lock:
            if self._external_from is None:
                self._external_from = now
            start = self._external_from
        return self.realism.external_sessions if now - start < self.realism.external_session_s else 0


def kaggle_notebook(text: str, kaggle_meta: dict[str, Any]) -> str:
    """A pushed notebook as kaggle.com hands it back: its metadata block, lists of lines, its layout."""
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError:
        return text
    if not isinstance(notebook, dict):
        return text
    for cell in notebook.get("cells", []):
        source = cell.get("source", "")
        if isinstance(source, str):
            cell["source"] = source.splitlines(keepends=True)
        cell.setdefault("metadata", {})
        if cell.get("cell_type") == "code":
            cell.setdefault("execution_count", None)
            cell.setdefault("outputs", [])
    metadata = notebook.setdefault("metadata", {})
    metadata["kaggle"] = kaggle_meta
    metadata["kernelspec"] = KAGGLE_KERNELSPEC
    metadata["language_info"] = KAGGLE_LANGUAGE_INFO
    notebook.setdefault("nbformat", 4)
    notebook["nbformat_minor"] = 4
    return json.dumps(notebook, indent=1, sort_keys=True)
