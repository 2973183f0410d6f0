"""The emulator's HTTP face: Kaggle's wire format on top of an `Emulator`.

In:  requests from the real `kaggle` client (as proxy requests: absolute URIs, routed on the
     `/v1/<service>/<Method>` suffix), plain GETs of download URLs, PUTs of submission uploads.
Out: camelCase JSON replies, Kaggle's {"code", "message"} errors (401 without an Authorization
     header), redirects, file bytes with Content-Length, ETag, Last-Modified and Range (206)
     support; the faults the emulator's `FaultPlan` picks (429, 500, lost replies, slow replies,
     truncation), the answers a test scripted (`answers.AnswerScript`: any class of reply for the
     next call of an RPC) and the wire-level realistic behaviours (rate-limit spells answering 429
     with `Realism.retry_after_s`, replies stalled past a client's read timeout, a revoked key or
     an expired token answering 401, pages no larger than `Realism.max_page_size`).
This module only calls into the emulator; the emulator's composition (`app`) hands it over.
Adding a call is one method on a service and one line in `API_CALLS`.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from kit.kaggle.emulator.answers import AFTER_WORK, HTML_PAGE, MESSAGES, answer_class, retry_after
from kit.kaggle.emulator.competitions import DATA_PATH, Redirect
from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.faults import API_FAULTS, FILE_FAULTS

if TYPE_CHECKING:
    from kit.kaggle.emulator.app import Emulator

TOKEN_CHECK = "security.OAuthService/IntrospectToken"
NO_FAULT_CALLS = frozenset({TOKEN_CHECK})
UNAUTHENTICATED = "Unauthenticated"
STATS_PATH = "/emulator/stats"
RATE_LIMITED = "Too many requests"


def _api_calls() -> dict[str, Callable[[Emulator, Mapping[str, Any], str], Any]]:
    """The calls the emulator answers: "<service>/<Method>" -> handler(emulator, body, user)."""
    kernels, competitions, datasets = "kernels.KernelsApiService/", "competitions.CompetitionApiService/", \
        "datasets.DatasetApiService/"
    return {
        "security.OAuthService/IntrospectToken": lambda e, b, u: {"active": True, "username": e.settings.token_user},
        kernels + "SaveKernel": lambda e, b, u: e.save_kernel(b, u),
        kernels + "GetKernelSessionStatus": lambda e, b, u: e.kernel_status(b, u),
        kernels + "GetKernel": lambda e, b, u: e.get_kernel(b, u),
        kernels + "ListKernelSessionOutput": lambda e, b, u: e.list_output(b, u),
        kernels + "ListKernels": lambda e, b, u: e.list_kernels(b, u),
        kernels + "ListKernelFiles": lambda e, b, u: e.list_kernel_files(b, u),
        kernels + "DeleteKernel": lambda e, b, u: e.delete_kernel(b, u),
        kernels + "GetAcceleratorQuotaStatistics": lambda e, b, u: e.quota(u),
        competitions + "StartSubmissionUpload": lambda e, b, u: e.start_upload(b),
        competitions + "CreateSubmission": lambda e, b, u: e.create_submission(b),
        competitions + "GetSubmissionLimits": lambda e, b, u: e.submission_limits(b),
        competitions + "ListSubmissions": lambda e, b, u: e.list_submissions(b),
        competitions + "GetSubmission": lambda e, b, u: e.get_submission(b),
        competitions + "ListCompetitions": lambda e, b, u: e.list_competitions(b),
        competitions + "ListDataFiles": lambda e, b, u: e.list_data_files(b),
        competitions + "DownloadDataFiles": lambda e, b, u: e.download_data(b),
        competitions + "GetLeaderboard": lambda e, b, u: e.leaderboard(b, u),
        datasets + "ListDatasets": lambda e, b, u: e.list_datasets(b),
        datasets + "ListDatasetFiles": lambda e, b, u: e.list_dataset_files(b),
    }


API_CALLS = _api_calls()


def _caller(header: str | None, token_user: str) -> str | None:
    """The user an Authorization header names (Basic: its user name; Bearer: the token user)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return token_user
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return base64.b64decode(value).decode().split(":", 1)[0] or None
    return None


class EmulatorServer(ThreadingHTTPServer):
    """Threaded server holding the `Emulator` its `KaggleRequestHandler`s answer from; it notes, instead of
    printing, clients hanging up mid-request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, KaggleRequestHandler)
        self.emulator = emulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.emulator.log(f"client {client_address[1]} hung up: {type(exc).__name__}")
            return
        super().handle_error(request, client_address)


class KaggleRequestHandler(BaseHTTPRequestHandler):
    """One request from the kaggle client, answered from the `EmulatorServer`'s emulator (``self.server``)."""

    server: EmulatorServer
    protocol_version = "HTTP/1.1"
    server_version = "KaggleEmulator/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.emulator.log(f"{self.command} {urlsplit(self.path).path} " + (format % args).split('"')[-1].strip())

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, data: bytes, headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"code": status, "message": message})

    def _rate_limited(self) -> None:
        headers = {"Retry-After": f"{self.emulator.realism.retry_after_s:g}"}
        self._send(429, json.dumps({"code": 429, "message": RATE_LIMITED}).encode(), headers)

    def _scripted_refusal(self, answer: str) -> None:
        """A scripted answer that comes before any work: an error, a 429, a gateway page."""
        self.emulator.count_fault(f"scripted_{answer_class(answer)}")
        kind = answer_class(answer)
        if kind == "429":
            after = retry_after(answer)
            headers = {"Retry-After": after} if after is not None else {}
            return self._send(429, json.dumps({"code": 429, "message": RATE_LIMITED}).encode(), headers)
        if kind.endswith("-html"):
            status = int(kind.split("-")[0])
            return self._send(status, HTML_PAGE.format(status=status).encode(), content_type="text/html")
        return self._error(int(kind), MESSAGES[kind])

    def _scripted_reply(self, answer: str, reply: Any) -> bool:
        """A scripted answer that comes after the work: True when it has answered."""
        self.emulator.count_fault(f"scripted_{answer_class(answer)}")
        kind = answer_class(answer)
        if kind == "unnumbered":  # the reply without its version number; a reply that has none goes as usual
            if not isinstance(reply, dict) or "versionNumber" not in reply:
                return False
            self._json(200, {key: value for key, value in reply.items() if key != "versionNumber"})
            return True
        if kind == "stall":
            time.sleep(self.emulator.realism.stall_s)
            return False
        if kind == "lost":
            self._error(500, "Internal server error (after the work was done)")
        elif kind == "empty":
            self._send(200, b"")
        else:  # truncated
            data = json.dumps(reply if isinstance(reply, dict) else {}).encode()
            self._send(200, data[: len(data) // 2])
        return True

    def _fault(self, key: str, kinds: tuple[str, ...]) -> str | None:
        kind = self.emulator.faults.decide(key, kinds)
        if kind is None:
            return None
        self.emulator.count_fault(kind)
        if kind == "slow":
            time.sleep(self.emulator.faults.config.slow_s)
            return None
        if kind == "429":
            self._rate_limited()
            return kind
        if kind == "500":
            self._error(500, "Internal server error (injected)")
            return kind
        return kind  # lost_reply / truncate: the caller acts on it

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        raw = self._body()
        marker = "/v1/"
        if marker not in path:
            return self._error(404, f"no such endpoint {path}")
        call = path.split(marker, 1)[1]
        handler = API_CALLS.get(call)
        if handler is None:
            return self._error(404, f"the emulator does not implement {call}")
        user = _caller(self.headers.get("Authorization"), self.emulator.settings.token_user)
        if user is None:
            return self._error(401, UNAUTHENTICATED)
        realism = self.emulator.realism
        if realism.token_expired if call == TOKEN_CHECK else realism.key_revoked:
            return self._error(401, UNAUTHENTICATED)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON")
        self.emulator._count("calls")
        if realism.max_page_size and call.split("/")[-1].startswith("List"):  # the server's page size wins
            body["pageSize"] = min(int(body.get("pageSize") or realism.max_page_size), realism.max_page_size)
        scripted = self.emulator.answers.next(call)
        if scripted is not None and answer_class(scripted) not in AFTER_WORK:
            return self._scripted_refusal(scripted)
        lost = stall = False
        if call not in NO_FAULT_CALLS:
            identity = body.get("slug") or body.get("kernelSlug") or body.get("competitionName") or body.get("ref")
            key = f"{call}:{identity}"
            if self.emulator.behaviours.throttled(key):
                self.emulator.count_fault("throttled")
                return self._rate_limited()
            kind = self._fault(key, API_FAULTS)
            if kind in ("429", "500"):
                return None
            lost = kind == "lost_reply"
            stall = self.emulator.behaviours.stalls(key)
        try:
            reply = handler(self.emulator, body, user)
        except ApiError as exc:
            return self._error(exc.status, exc.message)
        if scripted is not None and self._scripted_reply(scripted, reply):
            return None
        if stall:  # the work is done; the reply comes after the client has given up on it
            self.emulator.count_fault("stall")
            time.sleep(self.emulator.realism.stall_s)
        if lost:
            return self._error(500, "Internal server error (injected after the work was done)")
        if isinstance(reply, Redirect):
            return self._send(302, b"", {"Location": reply.url})
        return self._json(200, reply)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path == STATS_PATH:
            return self._json(200, self.emulator.stats())
        if path.startswith(DATA_PATH):
            try:
                data = self.emulator.data_zip(unquote(path[len(DATA_PATH):]))
            except ApiError as exc:
                return self._error(exc.status, exc.message)
            return self._send(200, data, {"Accept-Ranges": "none", "Last-Modified": email.utils.formatdate(
                0, usegmt=True)}, content_type="application/zip")
        parts = path.split("/", 5)
        if len(parts) < 6 or parts[1] != "files" or not parts[4].isdigit():
            return self._error(404, f"no such file {path}")
        _, _, owner, slug, number, name = parts
        name = unquote(name)
        kind = self._fault(f"GET:{owner}/{slug}/{number}/{name}", FILE_FAULTS)
        if kind in ("429", "500"):
            return None
        truncate = kind == "truncate"
        try:
            file_path = self.emulator.output_file(owner, slug, int(number), name)
        except ApiError as exc:
            return self._error(exc.status, exc.message)
        self._serve_file(file_path, truncate)
        return None

    def _serve_file(self, file_path: Path, truncate: bool) -> None:
        data = file_path.read_bytes()
        size = len(data)
        stat = file_path.stat()
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()[:16]}"',
                   "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}
        status, start = 200, 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted[6:].endswith("-") and wanted[6:-1].isdigit():
            start = int(wanted[6:-1])
            if start >= size:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, b"", headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        body = data[start:]
        self.emulator._count("downloads")
        if truncate and len(body) > 1:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(status, body, headers, content_type="application/octet-stream")

    def do_PUT(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        data = self._body()
        if not path.startswith("/upload/"):
            return self._error(404, f"no such upload URL {path}")
        if self._fault(f"PUT:{path}", ("500", "slow")) == "500":
            return None
        try:
            self.emulator.receive_upload(path.rsplit("/", 1)[1], data)
        except ApiError as exc:
            return self._error(exc.status, exc.message)
        return self._json(200, {})

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator
