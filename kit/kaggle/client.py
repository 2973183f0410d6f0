"""The one place kit talks to Kaggle: the `kaggle` package's Python API, imported lazily.

In:  the environment (credentials in the usual places, KAGGLE_API_ENVIRONMENT / HTTP_PROXY when
     pointed at the emulator) and a `RetryPolicy`.
Out: `connect()` -> a `KaggleClient` whose methods return small plain dataclasses, retry transient
     failures (429, 5xx, resets, truncated downloads) with back-off, and raise one-line `KitError`s.

Credentials, first match wins (the client's own order): KAGGLE_API_TOKEN or ~/.kaggle/access_token;
kaggle.json ({"username", "key"}) in $KAGGLE_CONFIG_DIR, else ~/.kaggle/, else ~/.config/kaggle/,
with KAGGLE_USERNAME / KAGGLE_KEY overriding; OAuth credentials from `kaggle auth login`. With none,
`connect` raises one line saying how to provide them (the client's help banner is never shown).
The key is never logged: the client's stdout chatter is captured, its verbose mode (which prints
request headers) is switched off, and nothing here formats a credential.

Non-idempotent calls (`push`, `submit`) are single attempts: their callers reconcile (did it land?)
before trying again, so a lost reply never creates a duplicate.
Every request has a connect and read timeout (`kit.kaggle.timeouts`; the client sets none), so a
stalled reply becomes a retried timeout. Kaggle answers 403 as well as 404 for a kernel it does
not show the caller (one that does not exist, or one pushed seconds ago): reads of kernels raise
`KernelNotVisible` for both (`KernelNotFound` for 404), and the callers decide what it means.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.kaggle import timeouts
from kit.kaggle.retry import (
    CREDENTIALS_FIX,
    STATS,
    UNAUTHENTICATED,
    CredentialsRejected,
    KaggleCallError,
    RetryPolicy,
    TruncatedDownload,
    advice,
    call_with_retry,
    http_status,
)

NO_CREDENTIALS = (
    "no Kaggle credentials found: save your API key as kaggle.json (chmod 600) in ~/.kaggle/ "
    "(or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN"
)
NOT_INSTALLED = "the kaggle client is not installed: pip install kaggle==2.2.5 six==1.17.0"
LOCAL_ENV_VALUE = "LOCALHOST"
OUTPUT_PAGE_SIZE = 100
SUBMISSION_PAGE_SIZE = 100
MAX_PAGES = 1000
DOWNLOAD_TIMEOUT_S = (10.0, 120.0)  # connect, read
CHUNK_BYTES = 1 << 20
UPLOAD_FAILED = "Could not submit to competition"
HOUR_S = 3600.0


RULES_HINT = ("join the competition first: open https://www.kaggle.com/competitions/{competition}/rules "
              "and accept them")
PHONE_HINT = "verify your phone number at https://www.kaggle.com/settings (accelerators and internet need it)"
INVALID_FIELDS = {"invalid_dataset_sources": "datasets", "invalid_competition_sources": "competitions",
                  "invalid_kernel_sources": "kernels", "invalid_model_sources": "models"}


class KernelNotVisible(KitError):
    """Kaggle does not show the caller this kernel (version): 403 or 404 (`status` says which)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KernelNotFound(KernelNotVisible):
    """Kaggle answered 404 for a kernel (or one of its versions)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message, status)


class SubmissionNotFound(KitError):
    """GetSubmission answered 404 (right after CreateSubmission Kaggle may not show it yet)."""


def hint(message: str, competition: str = "") -> str:
    """Kaggle's refusal with what to do about it, for the refusals a new user meets first."""
    text = message.lower()
    if "accept this competition's rules" in text or "accept the rules" in text:
        return f"{message} ({RULES_HINT.format(competition=competition or 'COMPETITION')})"
    if "phone" in text and "verif" in text:
        return f"{message} ({PHONE_HINT})"
    return message


def _not_visible(exc: BaseException, what: str) -> KernelNotVisible | None:
    """KernelNotFound for 404, KernelNotVisible for 403, None for anything else."""
    status = http_status(exc)
    if status == 404:
        return KernelNotFound(f"{what}: not found (HTTP 404)")
    if status == 403:
        return KernelNotVisible(f"{what}: Kaggle does not show it (HTTP 403: permission denied)", 403)
    return None


@dataclass(frozen=True)
class PushReply:
    version: int | None
    url: str
    error: str
    invalid: dict[str, list[str]] = field(default_factory=dict)  # kind (datasets, ...) -> sources Kaggle lacks
    warnings: tuple[str, ...] = ()  # what the client printed (its slug and retired-accelerator warnings)


@dataclass(frozen=True)
class KernelStatus:
    status: str  # QUEUED | RUNNING | COMPLETE | ERROR | CANCEL_REQUESTED | CANCEL_ACKNOWLEDGED
    failure_message: str


@dataclass(frozen=True)
class KernelInfo:
    current_version: int | None
    source: str


@dataclass(frozen=True)
class OutputFile:
    name: str
    url: str


@dataclass(frozen=True)
class KernelOutputs:
    files: list[OutputFile]
    log: str


@dataclass(frozen=True)
class Submission:
    ref: int
    status: str  # PENDING | COMPLETE | ERROR
    description: str
    file_name: str
    public_score: str
    private_score: str
    error: str
    date: str


@dataclass(frozen=True)
class Quota:
    """`kaggle quota`: accelerator hours used this week and allowed, per kind (gpu, tpu), and when it refreshes."""

    used_h: dict[str, float]
    allowed_h: dict[str, float]
    refresh: str


@dataclass
class CredentialInfo:
    """Where credentials were found (never the secret itself) and any warnings about them."""

    source: str
    warnings: list[str] = field(default_factory=list)


def kaggle_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder the client reads kaggle.json from (same rule as the client)."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    home = Path(env.get("HOME") or Path.home())
    legacy = home / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def _read_key_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def find_credentials(environ: Mapping[str, str] | None = None) -> CredentialInfo | None:
    """Where Kaggle credentials would come from, or None when there are none."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    if env.get("KAGGLE_API_TOKEN"):
        return CredentialInfo("KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        token = home / ".kaggle" / name
        if token.is_file() and token.read_text(encoding="utf-8", errors="replace").strip():
            return CredentialInfo(str(token))
    key_file = kaggle_config_dir(env) / "kaggle.json"
    data = _read_key_file(key_file) if key_file.is_file() else {}
    has_user = bool(env.get("KAGGLE_USERNAME") or data.get("username"))
    has_key = bool(env.get("KAGGLE_KEY") or data.get("key"))
    if has_user and has_key:
        info = CredentialInfo(str(key_file) if data else "KAGGLE_USERNAME/KAGGLE_KEY")
        if data and os.name != "nt" and key_file.stat().st_mode & 0o044:
            info.warnings.append(f"{key_file} is readable by other users; run: chmod 600 {key_file}")
        return info
    if (home / ".kaggle" / "credentials.json").is_file():
        return CredentialInfo(str(home / ".kaggle" / "credentials.json"))
    return None


@contextlib.contextmanager
def quiet_stdout() -> Iterator[io.StringIO]:
    """Capture what the client prints (banners, warnings) so it never reaches the user's terminal raw."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def printed_lines(*buffers: io.StringIO) -> tuple[str, ...]:
    """The non-blank lines the client printed, colour codes removed (to pass on, never to swallow)."""
    return tuple(line.strip() for b in buffers for line in ANSI.sub("", b.getvalue()).splitlines() if line.strip())


def _enum_name(value: Any) -> str:
    return getattr(value, "name", None) or str(value or "")


class KaggleClient:
    """Kaggle calls kit needs, on top of an authenticated `kaggle.api.KaggleApi`."""

    def __init__(self, api: Any, policy: RetryPolicy | None = None,
                 on_retry: Callable[[str, int, str, float], None] | None = None) -> None:
        self.api = api
        self.policy = policy or RetryPolicy.from_env()
        self.on_retry = on_retry
        self.stats = STATS

    @property
    def username(self) -> str:
        name = self.api.config_values.get("username") or ""
        if not name:
            raise KitError("Kaggle credentials carry no user name: set KAGGLE_USERNAME or add username to kaggle.json")
        return str(name)

    def announce_retry(self, what: str, count: int, reason: str, wait: float) -> None:
        """Count a retry and say how long kit waits before it (every wait is announced)."""
        self.stats.record(reason)
        if self.on_retry:
            self.on_retry(what, count, reason, wait)

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_retry(fn, what, self.policy, on_retry=self.on_retry, stats=self.stats)

    def _sdk(self) -> Any:
        return self.api.build_kaggle_client()

    # -- kernels -------------------------------------------------------------------------------
    def push(self, folder: Path, accelerator: str | None = None, timeout_s: int | None = None) -> PushReply:
        """One SaveKernel call (no retry: the caller reconciles). Raises the client's exception on failure.
        What the client prints (its warnings) comes back in `warnings`."""
        err = io.StringIO()
        with quiet_stdout() as out, contextlib.redirect_stderr(err):
            reply = self.api.kernels_push(str(folder), str(timeout_s) if timeout_s else None, accelerator)
        if reply is None:
            raise KaggleCallError(f"push {folder}: the client returned no reply")
        invalid = {kind: [str(s) for s in getattr(reply, name, None) or []] for name, kind in INVALID_FIELDS.items()}
        return PushReply(version=reply.version_number, url=reply.url or "", error=reply.error or "",
                         invalid={k: v for k, v in invalid.items() if v}, warnings=printed_lines(out, err))

    def kernel_status(self, ref: str) -> KernelStatus:
        """Status of `owner/slug[/N]`; raises KernelNotVisible (KernelNotFound) on 403 (404)."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        owner, slug, *rest = ref.split("/")

        def call() -> KernelStatus:
            request = ApiGetKernelSessionStatusRequest()
            request.user_name, request.kernel_slug = owner, slug
            if rest:
                request.version_label = f"v{rest[0]}"
            try:
                with self._sdk() as kaggle:
                    reply = kaggle.kernels.kernels_api_client.get_kernel_session_status(request)
            except Exception as exc:
                hidden = _not_visible(exc, f"status {ref}")
                if hidden is not None:
                    raise hidden from None
                raise
            return KernelStatus(status=_enum_name(reply.status).upper(), failure_message=reply.failure_message or "")

        return self._retry(call, f"status {ref}")

    def kernel_info(self, owner: str, slug: str) -> KernelInfo:
        """Latest version number and source text of a kernel; raises KernelNotVisible on 403/404."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

        def call() -> KernelInfo:
            request = ApiGetKernelRequest()
            request.user_name, request.kernel_slug = owner, slug
            try:
                with self._sdk() as kaggle:
                    reply = kaggle.kernels.kernels_api_client.get_kernel(request)
            except Exception as exc:
                hidden = _not_visible(exc, f"get kernel {owner}/{slug}")
                if hidden is not None:
                    raise hidden from None
                raise
            meta, blob = reply.metadata, reply.blob
            return KernelInfo(
                current_version=getattr(meta, "current_version_number", None) if meta else None,
                source=(getattr(blob, "source", None) or "") if blob else "",
            )

        return self._retry(call, f"get kernel {owner}/{slug}")

    def list_outputs(self, owner: str, slug: str, version: int | None = None) -> KernelOutputs:
        """Every output file (name, download URL) of a kernel version, all pages, plus its log."""
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        files: list[OutputFile] = []
        log = ""
        token = ""
        for _ in range(MAX_PAGES):
            def call(page_token: str = token) -> Any:
                request = ApiListKernelSessionOutputRequest()
                request.user_name, request.kernel_slug = owner, slug
                request.page_size, request.page_token = OUTPUT_PAGE_SIZE, page_token
                if version is not None:
                    request.version_label = f"v{version}"
                try:
                    with self._sdk() as kaggle:
                        return kaggle.kernels.kernels_api_client.list_kernel_session_output(request)
                except Exception as exc:
                    hidden = _not_visible(exc, f"outputs of {owner}/{slug}" + (f"/{version}" if version else ""))
                    if hidden is not None:
                        raise hidden from None
                    raise

            reply = self._retry(call, f"list outputs of {owner}/{slug}" + (f"/{version}" if version else ""))
            files.extend(OutputFile(f.file_name or "", f.url or "") for f in reply.files or [])
            log = log or (reply.log or "")
            token = reply.next_page_token or ""
            if not token:
                break
        return KernelOutputs(files=files, log=log)

    # -- downloads -----------------------------------------------------------------------------
    def download(self, url: str, dest: Path, what: str) -> int:
        """Fetch `url` into `dest`, resuming a partial file with a Range request; returns the size.

        The server's Content-Length (or Content-Range total) must match what arrived, or the
        attempt counts as truncated and is retried from where it stopped."""
        import requests

        def attempt() -> int:
            have = dest.stat().st_size if dest.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with requests.get(url, headers=headers, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as reply:
                if reply.status_code == 416:  # what we hold is not a prefix of the file: start over
                    dest.unlink(missing_ok=True)
                    raise TruncatedDownload("range not satisfiable, restarting")
                reply.raise_for_status()
                total = _expected_total(reply, have)
                mode = "ab" if reply.status_code == 206 else "wb"
                with open(dest, mode) as fh:
                    try:
                        for chunk in reply.iter_content(CHUNK_BYTES):
                            fh.write(chunk)
                    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
                        fh.flush()
                        got = dest.stat().st_size
                        raise TruncatedDownload(
                            f"connection broke after {got} of {total if total is not None else '?'} bytes"
                        ) from exc
            size = dest.stat().st_size
            if total is not None and size != total:
                if size > total:
                    dest.unlink(missing_ok=True)
                raise TruncatedDownload(f"got {size} of {total} bytes")
            return size

        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._retry(attempt, f"download {what}")

    # -- competitions --------------------------------------------------------------------------
    def submit(self, path: Path, message: str, competition: str) -> int:
        """Upload and create one submission (no retry: the caller reconciles); returns its ref."""
        with quiet_stdout():
            try:
                reply = self.api.competition_submit(str(path), message, competition, quiet=True)
            except Exception as exc:
                if http_status(exc) == UNAUTHENTICATED:
                    raise CredentialsRejected(f"submit {path.name}: {CREDENTIALS_FIX}") from None
                if http_status(exc) == 403:
                    told = hint(str(exc), competition)
                    raise KaggleCallError(f"submit {path.name}: Kaggle refused it (HTTP 403): {told}"
                                          + ("" if told != str(exc) else advice(exc))) from None
                raise
        if (reply.message or "") == UPLOAD_FAILED:
            raise ConnectionError(f"upload of {path.name} failed")
        if not reply.ref:
            raise KaggleCallError(f"submit {path}: Kaggle returned no submission ref ({reply.message})")
        return int(reply.ref)

    def submissions(self, competition: str) -> list[Submission]:
        """All of the user's submissions to a competition, newest first."""
        from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

        found: list[Submission] = []
        token = ""
        for page in range(1, MAX_PAGES + 1):
            def call(page_token: str = token, page_number: int = page) -> Any:
                request = ApiListSubmissionsRequest()
                request.competition_name = competition
                request.page_size = SUBMISSION_PAGE_SIZE
                request.page_token = page_token
                if not page_token:
                    request.page = page_number
                with self._sdk() as kaggle:
                    return kaggle.competitions.competition_api_client.list_submissions(request)

            reply = self._retry(call, f"list submissions of {competition}")
            found.extend(_submission(s) for s in reply.submissions or [] if s is not None)
            token = reply.next_page_token or ""
            if not token:
                break
        return found

    def submission(self, ref: int) -> Submission:
        """One submission; raises SubmissionNotFound on 404 (Kaggle's lag right after a submit)."""
        from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

        def call() -> Submission:
            request = ApiGetSubmissionRequest()
            request.ref = int(ref)
            try:
                with self._sdk() as kaggle:
                    return _submission(kaggle.competitions.competition_api_client.get_submission(request))
            except Exception as exc:
                if http_status(exc) == 404:
                    raise SubmissionNotFound(f"submission {ref}: not found (HTTP 404)") from None
                raise

        return self._retry(call, f"get submission {ref}")

    def quota(self) -> Quota:
        """The weekly accelerator quota as `kaggle quota` reports it (the client's `quota_view`)."""
        def call() -> Quota:
            with quiet_stdout():
                reply = self.api.quota_view()
            used: dict[str, float] = {}
            allowed: dict[str, float] = {}
            for kind in ("gpu", "tpu"):
                figures = getattr(reply, f"{kind}_quota", None)
                if figures is None or figures.total_time_allowed is None:
                    continue
                used[kind] = (figures.time_used.total_seconds() if figures.time_used else 0.0) / HOUR_S
                allowed[kind] = figures.total_time_allowed.total_seconds() / HOUR_S
            refresh = getattr(reply, "quota_refresh_time", None)
            return Quota(used, allowed, refresh.isoformat(timespec="minutes") if refresh else "")

        return self._retry(call, "quota")

    # -- checks before a push ------------------------------------------------------------------
    def dataset_visible(self, ref: str) -> bool:
        """Whether the dataset `owner/slug` exists and the caller can see it (its file list answers)."""
        from kagglesdk.datasets.types.dataset_api_service import ApiListDatasetFilesRequest

        owner, _, slug = ref.partition("/")

        def call() -> bool:
            request = ApiListDatasetFilesRequest()
            request.owner_slug, request.dataset_slug = owner, slug
            try:
                with self._sdk() as kaggle:
                    kaggle.datasets.dataset_api_client.list_dataset_files(request)
            except Exception as exc:
                if http_status(exc) in (403, 404):
                    return False
                raise
            return True

        return bool(self._retry(call, f"check dataset {ref}"))

    def competition_access(self, competition: str) -> str:
        """'' when the caller may use the competition's data, else Kaggle's refusal with a hint."""
        from kagglesdk.competitions.types.competition_api_service import ApiListDataFilesRequest

        def call() -> str:
            request = ApiListDataFilesRequest()
            request.competition_name = competition
            try:
                with self._sdk() as kaggle:
                    kaggle.competitions.competition_api_client.list_data_files(request)
            except Exception as exc:
                status = http_status(exc)
                if status == 404:
                    return f"competition {competition!r} not found"
                if status == 403:
                    return hint(" ".join(str(exc).split()), competition)
                raise
            return ""

        return str(self._retry(call, f"check competition {competition}"))


def _expected_total(reply: Any, have: int) -> int | None:
    if reply.status_code == 206:
        content_range = reply.headers.get("Content-Range", "")
        start = content_range.split(" ")[-1].split("-")[0]
        if not start.isdigit() or int(start) != have:
            raise TruncatedDownload(f"server resumed at {content_range!r}, expected byte {have}")
        total = content_range.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = reply.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _submission(s: Any) -> Submission:
    date = getattr(s, "date", None)
    return Submission(
        ref=int(s.ref or 0),
        status=_enum_name(s.status).upper(),
        description=s.description or "",
        file_name=s.file_name or "",
        public_score=s.public_score or "",
        private_score=s.private_score or "",
        error=s.error_description or "",
        date=date.isoformat(timespec="seconds") if date else "",
    )


def _client_args(environ: Mapping[str, str]) -> list[str]:
    """The client's routing flags for the current environment (never --verbose: it prints headers)."""
    return ["--local"] if environ.get("KAGGLE_API_ENVIRONMENT") == LOCAL_ENV_VALUE else []


def connect(policy: RetryPolicy | None = None, on_retry: Callable[[str, int, str, float], None] | None = None,
            warn: Callable[[str], None] | None = None) -> KaggleClient:
    """Authenticate with the usual credentials and return a `KaggleClient` (see module docstring)."""
    timeouts.install()
    info = find_credentials()
    if info is None:
        raise KitError(NO_CREDENTIALS)
    for line in info.warnings:
        (warn or (lambda text: print(f"warning: {text}", file=sys.stderr)))(line)
    config_dir = kaggle_config_dir()
    with quiet_stdout():
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi  # runs kaggle/__init__ (authenticates)
        except ImportError as exc:
            if exc.name in ("kaggle", "six", "kagglesdk"):
                raise KitError(f"{NOT_INSTALLED} (missing module {exc.name!r})") from None
            raise
        api = KaggleApi()
        # The class reads these once at import; set them from the environment as it is now.
        api.config_dir = str(config_dir)
        api.config = str(config_dir / "kaggle.json")
        api.args = _client_args(os.environ)
        policy = policy or RetryPolicy.from_env()
        try:  # a token is checked with Kaggle here (IntrospectToken): transient failures are retried
            call_with_retry(api.authenticate, "check credentials", policy, on_retry=on_retry)
        except SystemExit:
            if "token" in info.source.lower():  # the client drops a token Kaggle calls inactive, then finds nothing
                raise CredentialsRejected(f"check credentials ({info.source}): {CREDENTIALS_FIX}") from None
            raise KitError(NO_CREDENTIALS) from None
        except CredentialsRejected:
            raise CredentialsRejected(f"check credentials ({info.source}): {CREDENTIALS_FIX}") from None
    return KaggleClient(api, policy=policy, on_retry=on_retry)
