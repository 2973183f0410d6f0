"""The Kaggle emulator: an HTTP server on loopback that the real `kaggle` client talks to.

In:  a state folder, a competition folder (sample_submission.csv, solution.csv with
     image_name,target,Usage, and whatever else kernels may read), a datasets root (attached
     datasets are resolved as <root>/<dataset-name>), a `FaultConfig`, and a port (0 = any).
Out: a running server. Point the client at it with KAGGLE_API_ENVIRONMENT=LOCALHOST and
     HTTP_PROXY=http://127.0.0.1:<port> (`Emulator.client_env()`); every call then arrives here
     as a proxy request. State (kernels, versions, outputs, logs, uploads, submissions, fault and
     call counters) lives in the state folder, so a restarted emulator carries on.

What it does, with Kaggle's wire format (camelCase JSON, enums by name, errors as
{"code", "message"}; see ../shared/notes/kaggle-api.md):
- SaveKernel makes a new version and queues it; a small worker pool runs it with the local
  backend (`kit.localrun.run_kernel`) against the attached datasets and the competition folder
  (without its solution file). GetKernelSessionStatus, GetKernel, ListKernelSessionOutput
  (loopback download URLs, Range-resumable) follow it.
- StartSubmissionUpload / PUT / CreateSubmission accept a submission, which is scored a moment
  later against solution.csv: public and private AUC from its Usage column, like Kaggle.
- Faults, deterministic for a seed and a sequence of calls: 429 and 500 replies, lost replies
  (the work is done, the reply is a 500), slow replies, truncated downloads, 404 for a kernel
  just created, kernels ending in ERROR, output names escaping the download folder. At most
  `max_streak` faults in a row hit the same call, so bounded retries always get through.
This module is the state and the behaviour; `emulator_http` speaks HTTP, `faults` picks the faults.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from kernels.config import COMPETITION
from kernels.contracts import atomic_write_bytes, atomic_write_text, read_test_pred
from kernels.metrics import auc
from kit.errors import KitError
from kit.kaggle.emulator_http import ApiError, EmulatorServer, handler_for
from kit.kaggle.faults import FaultConfig, FaultPlan
from kit.localrun import run_kernel, stop_kernel

HOST = "127.0.0.1"
STATE_FILE = "state.json"
SOLUTION_FILE = "solution.csv"
SAMPLE_FILE = "sample_submission.csv"
USAGE_COLUMN = "Usage"
PUBLIC_USAGE = "Public"
PUBLIC_FRACTION = 0.3  # used when solution.csv has no Usage column
SCORE_DECIMALS = 4
DEFAULT_WORKERS = 2
DEFAULT_SESSION_TIMEOUT_S = 3600
DEFAULT_SCORE_DELAY_S = 1.0
DEFAULT_DAILY_SUBMISSIONS = 5
DEFAULT_USER = "kit-user"
NOT_FOUND_WINDOW_S = 5.0  # a kernel younger than this may answer 404 (Kaggle's eventual consistency)
MIN_SLUG = 5
OUTPUT_PAGE_SIZE = 20
ESCAPE_NAME = "../../escaped-by-emulator.txt"
MACHINE_SHAPES = ("TpuV5E8", "NvidiaTeslaT4", "NvidiaTeslaT4Highmem", "NvidiaL4", "NvidiaL4X1", "Tpu1VmV38",
                  "TpuV38", "NvidiaTeslaP100", "None")
LOG_NAME = "emulator.log"
FAILURE_CHARS = 400  # of the log's last line, in a failure message



def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_version(label: str | None) -> int | None:
    if not label:
        return None
    text = label[1:] if label[:1] in "vV" else label
    if not text.isdigit():
        raise ApiError(400, f"invalid version label {label!r}")
    return int(text)


@dataclass
class EmulatorSettings:
    """Everything that shapes an emulator besides its faults."""

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


class Emulator:
    """The server and its state. `start()` serves in a background thread; `serve_forever()` blocks."""

    def __init__(self, settings: EmulatorSettings, faults: FaultConfig | None = None,
                 port: int = 0, host: str = HOST) -> None:
        self.settings = settings
        self.faults = FaultPlan(faults or FaultConfig())
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.state = self._load()
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="emu-kernel")
        self._server = EmulatorServer((host, port), handler_for(self), self)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None
        self._running: dict[tuple[str, int], subprocess.Popen[str]] = {}  # kernel processes now running
        self._stopping = False
        self._requeue_unfinished()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment that points the real `kaggle` client at this emulator."""
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": self.url, "http_proxy": self.url,
                "NO_PROXY": "", "no_proxy": ""}

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self.stop()

    def stop(self, wait_kernels: bool = False) -> None:
        """Stop serving. Queued kernels are dropped; running ones are waited for with `wait_kernels`,
        else killed (Ctrl-C on `kit emulator` returns at once). Dropped and killed ones stay QUEUED /
        RUNNING in the state folder and are re-queued at the next start."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
        if not wait_kernels:
            with self._lock:
                self._stopping = True
                running = list(self._running.values())
            for proc in running:
                stop_kernel(proc)
        self._pool.shutdown(wait=wait_kernels, cancel_futures=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------------
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

    def _count_fault(self, kind: str) -> None:
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
            fh.write(f"{_iso(_now())} {line}\n")

    def version_dir(self, ref: str, number: int) -> Path:
        owner, slug = ref.split("/", 1)
        return self.state_dir / "kernels" / owner / slug / f"v{number}"

    # -- kernels --------------------------------------------------------------------------------
    def _kernel(self, owner: str, slug: str) -> dict[str, Any]:
        kernel = self.state["kernels"].get(f"{owner}/{slug}")
        if kernel is None:
            raise ApiError(404, f"Kernel {owner}/{slug} not found")
        return kernel

    def _version(self, owner: str, slug: str, label: str | None) -> dict[str, Any]:
        kernel = self._kernel(owner, slug)
        number = _parse_version(label)
        versions = kernel["versions"]
        if not versions:
            raise ApiError(404, f"Kernel {owner}/{slug} has no versions")
        if number is None:
            return versions[-1]
        for version in versions:
            if version["number"] == number:
                return version
        raise ApiError(404, f"Kernel {owner}/{slug} version {number} not found")

    def _active_sessions(self, owner: str) -> int:
        return sum(
            1 for ref, k in self.state["kernels"].items() if ref.split("/")[0] == owner
            for v in k["versions"] if v["status"] in ("QUEUED", "RUNNING") and v["machine_shape"] not in ("", "None")
        )

    def save_kernel(self, body: Mapping[str, Any], user: str) -> dict[str, Any]:
        slug_ref = str(body.get("slug") or "")
        if slug_ref.count("/") != 1:
            return {"error": f"Invalid kernel slug {slug_ref!r}: expected owner/slug"}
        owner, slug = slug_ref.split("/")
        if owner != user:
            return {"error": f"You ({user}) cannot push to kernel {slug_ref} owned by {owner}"}
        if len(slug) < MIN_SLUG:
            return {"error": f"Kernel slug {slug!r} must be at least {MIN_SLUG} characters"}
        text = body.get("text")
        if not text:
            return {"error": "Kernel text is empty"}
        if body.get("language", "python") != "python":
            return {"error": f"Unsupported language {body.get('language')!r}"}
        shape = body.get("machineShape") or ""
        if shape and shape not in MACHINE_SHAPES:
            return {"error": f"Invalid machine shape {shape!r}"}
        quick = body.get("kernelExecutionType") == "QUICK_SAVE"
        with self._lock:
            limit = self.settings.max_sessions
            if limit and shape and not quick and self._active_sessions(owner) >= limit:
                return {"error": f"Maximum batch accelerator session count of {limit} reached"}
            kernel = self.state["kernels"].setdefault(
                slug_ref, {"id": self._new_id(), "title": body.get("newTitle") or slug, "versions": []}
            )
            number = len(kernel["versions"]) + 1
            source_sha = _sha256(str(text).encode())
            if kernel["versions"] and kernel["versions"][-1]["source_sha256"] == source_sha:
                self.state["stats"]["identical_versions"] += 1
            kind = "notebook" if body.get("kernelType") == "notebook" else "script"
            version = {
                "number": number, "status": "QUEUED", "failure": "", "created": _now(), "started": None,
                "finished": None, "machine_shape": shape, "source_sha256": source_sha, "kernel_type": kind,
                "datasets": list(body.get("datasetDataSources") or []),
                "competitions": list(body.get("competitionDataSources") or []),
                "timeout_s": int(body.get("sessionTimeoutSeconds") or self.settings.session_timeout_s),
                "quick_save": quick,
            }
            folder = self.version_dir(slug_ref, number)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / ("source.ipynb" if kind == "notebook" else "source.py"), str(text))
            kernel["versions"].append(version)
            if body.get("newTitle"):
                kernel["title"] = body["newTitle"]
            self.state["stats"]["versions"] += 1
            if quick:
                version["status"] = "COMPLETE"
            self._save()
        self.log(f"push {slug_ref} v{number} shape={shape or 'none'}")
        if not quick:
            self._pool.submit(self._run_version, slug_ref, number)
        return {"ref": f"/code/{slug_ref}", "url": f"{self.url}/code/{slug_ref}", "versionNumber": number,
                "kernelId": kernel["id"]}

    def _set_version(self, ref: str, number: int, **changes: Any) -> None:
        with self._lock:
            for version in self.state["kernels"][ref]["versions"]:
                if version["number"] == number:
                    version.update(changes)
            self._save()

    def _input_root(self, folder: Path, version: Mapping[str, Any]) -> Path:
        """/kaggle/input for one run: links to the attached datasets and the competition (no solution)."""
        root = folder / "input"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for source in version["datasets"]:
            name = source.split("/")[1] if "/" in source else source
            target = Path(self.settings.datasets_root) / name
            if target.is_dir() and not (root / name).exists():
                _link_entries(target, root / name)
        for competition in version["competitions"]:
            if competition == self.settings.competition and not (root / competition).exists():
                _link_entries(Path(self.settings.competition_dir), root / competition)
        return root

    def _run_version(self, ref: str, number: int) -> None:
        folder = self.version_dir(ref, number)
        with self._lock:
            version = dict(next(v for v in self.state["kernels"][ref]["versions"] if v["number"] == number))
        if version["status"] not in ("QUEUED", "RUNNING"):
            return
        self._set_version(ref, number, status="RUNNING", started=_now())
        log_path = folder / "kernel.log"
        if self.faults.decide(f"kernel:{ref}:{number}", ("kernel_error",)) == "kernel_error":
            self._count_fault("kernel_error")
            log_path.write_text("[emulator] the session was lost (injected kernel error)\n", encoding="utf-8")
            self._set_version(ref, number, status="ERROR", finished=_now(),
                              failure="Kernel session ended unexpectedly (injected by the emulator)")
            return
        output = folder / "output"
        shutil.rmtree(output, ignore_errors=True)
        code = folder / ("source.ipynb" if version["kernel_type"] == "notebook" else "source.py")
        try:
            input_root = self._input_root(folder, version)
            self._count("kernel_runs")
            result = run_kernel(code, output, input_root=str(input_root), log_path=log_path,
                                timeout_s=version["timeout_s"], extra_env=self.settings.kernel_env,
                                on_start=lambda proc: self._started(ref, number, proc))
        except Exception as exc:  # the emulator must survive whatever a kernel does
            self._set_version(ref, number, status="ERROR", finished=_now(), failure=f"emulator: {exc}")
            return
        finally:
            with self._lock:
                self._running.pop((ref, number), None)
        if self._stopping and result.returncode != 0:  # killed by stop(): stays RUNNING, re-queued next start
            self.log(f"run {ref} v{number} stopped with the emulator")
            return
        if result.returncode == 0:
            self._set_version(ref, number, status="COMPLETE", finished=_now())
        else:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            self._set_version(ref, number, status="ERROR", finished=_now(),
                              failure=f"Kernel exited with code {result.returncode}: {tail[0][:FAILURE_CHARS]}")
        self.log(f"run {ref} v{number} rc={result.returncode} {result.seconds:.1f}s")

    def _started(self, ref: str, number: int, proc: subprocess.Popen[str]) -> None:
        """Track a kernel process; one that starts while the emulator stops is killed at once."""
        with self._lock:
            self._running[(ref, number)] = proc
            stopping = self._stopping
        if stopping:
            stop_kernel(proc)

    def _requeue_unfinished(self) -> None:
        with self._lock:
            todo = [(ref, v["number"]) for ref, k in self.state["kernels"].items() for v in k["versions"]
                    if v["status"] in ("QUEUED", "RUNNING")]
            for ref, number in todo:
                self._set_version(ref, number, status="QUEUED")
        for ref, number in todo:
            self._pool.submit(self._run_version, ref, number)

    def _maybe_not_found(self, owner: str, slug: str, version: Mapping[str, Any], call: str) -> None:
        if _now() - version["created"] < NOT_FOUND_WINDOW_S:
            if self.faults.decide(f"nf:{call}:{owner}/{slug}", ("not_found",)) == "not_found":
                self._count_fault("not_found")
                raise ApiError(404, f"Kernel {owner}/{slug} not found")

    def kernel_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            version = dict(self._version(owner, slug, body.get("versionLabel")))
        self._maybe_not_found(owner, slug, version, "status")
        reply = {"status": version["status"]}
        if version["failure"]:
            reply["failureMessage"] = version["failure"]
        return reply

    def get_kernel(self, body: Mapping[str, Any]) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            kernel = self._kernel(owner, slug)
            version = dict(self._version(owner, slug, body.get("versionLabel")))
            latest = kernel["versions"][-1]["number"]
        self._maybe_not_found(owner, slug, version, "get")
        kind = version["kernel_type"]
        source = (self.version_dir(f"{owner}/{slug}", version["number"])
                  / ("source.ipynb" if kind == "notebook" else "source.py")).read_text(encoding="utf-8")
        meta = {"id": kernel["id"], "ref": f"{owner}/{slug}", "title": kernel["title"], "author": owner,
                "slug": slug, "language": "python", "kernelType": kind, "currentVersionNumber": latest,
                "competitionDataSources": version["competitions"], "datasetDataSources": version["datasets"]}
        if version["machine_shape"]:
            meta["machineShape"] = version["machine_shape"]
        return {"metadata": meta, "blob": {"source": source, "language": "python", "kernelType": kind, "slug": slug}}

    def list_output(self, body: Mapping[str, Any]) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            version = dict(self._version(owner, slug, body.get("versionLabel")))
        folder = self.version_dir(f"{owner}/{slug}", version["number"])
        output = folder / "output"
        names = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()) \
            if output.is_dir() else []
        base = f"{self.url}/files/{owner}/{slug}/{version['number']}"
        files = [{"fileName": n, "url": f"{base}/{quote(n)}"} for n in names]
        if self.faults.config.escape_names and version["status"] == "COMPLETE":
            self._count_fault("escape")
            files.append({"fileName": ESCAPE_NAME, "url": f"{base}/{quote(names[0]) if names else 'missing'}"})
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or OUTPUT_PAGE_SIZE)
        page = files[start:start + size]
        reply: dict[str, Any] = {"files": page}
        if start + size < len(files):
            reply["nextPageToken"] = str(start + size)
        log_path = folder / "kernel.log"
        if log_path.exists():
            reply["log"] = log_path.read_text(encoding="utf-8", errors="replace")
        return reply

    def output_file(self, owner: str, slug: str, number: int, name: str) -> Path:
        output = (self.version_dir(f"{owner}/{slug}", number) / "output").resolve()
        path = (output / name).resolve()
        if output not in path.parents or not path.is_file():
            raise ApiError(404, f"no output file {name!r}")
        return path

    # -- competitions ---------------------------------------------------------------------------
    def _check_competition(self, name: str | None) -> None:
        if name != self.settings.competition:
            raise ApiError(404, f"Competition {name!r} not found")

    def start_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_competition(body.get("competitionName"))
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
        self._check_competition(body.get("competitionName"))
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
                "created": _now(), "day": today, "status": "PENDING", "public": "", "private": "", "error": "",
                "bytes": upload["content_length"],
            })
            self.state["stats"]["submissions"] += 1
            self._save()
        return {"message": f"Successfully submitted to {self.settings.competition}", "ref": ref}

    def _score(self, submission: dict[str, Any]) -> None:
        """Score a pending submission once its delay has passed (called under the lock)."""
        if submission["status"] != "PENDING" or _now() - submission["created"] < self.settings.score_delay_s:
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
        reply = {"ref": s["ref"], "date": _iso(s["created"]), "description": s["description"],
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
        size = int(body.get("pageSize") or OUTPUT_PAGE_SIZE)
        token = body.get("pageToken") or ""
        start = int(token) if token.isdigit() else (max(1, int(body.get("page") or 1)) - 1) * size
        reply: dict[str, Any] = {"submissions": items[start:start + size]}
        if start + size < len(items):
            reply["nextPageToken"] = str(start + size)
        return reply

    def get_submission(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = int(body.get("ref") or 0)
        with self._lock:
            for s in self.state["submissions"]:
                if s["ref"] == ref:
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


def _link_entries(source: Path, mount: Path) -> None:
    """Mount `source` read-only-ish at `mount`: a folder of symlinks to its entries, minus any solution file."""
    mount.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != SOLUTION_FILE:
            (mount / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def score_submission(csv_path: Path, solution_path: Path) -> tuple[float, float]:
    """Public and private AUC of a submission file against the solution (Usage column splits them)."""
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


# -- HTTP ---------------------------------------------------------------------------------------
