"""The emulator's kernels service: push, run, status, read back, outputs, list, files, delete, quota.

In:  request bodies of kernels.KernelsApiService calls (camelCase, as the real client sends them)
     and the caller's user name.
Out: reply dicts (camelCase) or `ApiError`s, with kaggle.com's behaviours where `Realism` has them
     on: 403 for kernels the caller cannot see, read-after-write lag, NEW_SCRIPT, cancelled and
     long-running runs, invalid*Sources in push replies, refusals for the session cap (counting
     sessions started elsewhere), for a competition not joined and for an unverified phone.
SaveKernel queues a version; a worker pool runs it with the local backend (`kit.run.local`)
against the attached datasets and the competition folder (without its solution file).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kernels.contracts import atomic_write_text
from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.realism import PERMISSION_DENIED, PHONE_NOT_VERIFIED, RULES_NOT_ACCEPTED, kaggle_notebook
from kit.kaggle.emulator.state import SOLUTION_FILE, EmulatorState, iso, now, page, parse_version, sha256
from kit.run.local import run_kernel, stop_kernel

MIN_SLUG = 5
OUTPUT_PAGE_SIZE = 20
LIST_PAGE_SIZE = 20
ESCAPE_NAME = "../../escaped-by-emulator.txt"
NOT_FOUND_WINDOW_S = 5.0  # a kernel younger than this may answer 404 (the `not_found` fault)
MACHINE_SHAPES = ("TpuV5E8", "NvidiaTeslaT4", "NvidiaL4", "NvidiaL4X1", "Tpu1VmV38", "TpuV38",
                  "NvidiaTeslaP100", "None")
NO_SHAPES = ("", "None")
FAILURE_CHARS = 400  # of the log's last line, in a failure message
ACTIVE = ("QUEUED", "RUNNING")
WEEKLY_GPU_S = 30 * 3600
WEEKLY_TPU_S = 20 * 3600
WEEK_S = 7 * 24 * 3600
CANCELLED = "The session was cancelled (by the user, on kaggle.com)"


def _sources(body: Mapping[str, Any], key: str) -> list[str]:
    return [str(s) for s in body.get(key) or []]


class KernelsService(EmulatorState):
    """kernels.KernelsApiService on top of the state (a mixin of `kit.kaggle.emulator.Emulator`)."""

    _pool: Any
    _running: dict[tuple[str, int], subprocess.Popen[str]]
    _stopping: bool
    url: str

    # -- look-ups with kaggle.com's visibility ---------------------------------------------------
    def _hidden(self, owner: str, slug: str, what: str = "") -> ApiError:
        """Kaggle's answer for a kernel the caller cannot see: 403 (realistic) or 404 (kind)."""
        if self.realism.hidden_is_403:
            return ApiError(403, PERMISSION_DENIED)
        return ApiError(404, f"Kernel {owner}/{slug}{what} not found")

    def _kernel(self, owner: str, slug: str, user: str | None = None) -> dict[str, Any]:
        """The kernel, if `user` (None: the emulator itself) may see it: not deleted, and public or theirs."""
        kernel = self.state["kernels"].get(f"{owner}/{slug}")
        if kernel is None or kernel.get("deleted"):
            raise self._hidden(owner, slug)
        private = not kernel["versions"] or kernel["versions"][-1].get("is_private", True)
        if user is not None and user != owner and private:
            raise self._hidden(owner, slug)
        return kernel

    def _visible_versions(self, kernel: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [v for v in kernel["versions"] if self.behaviours.visible(v["created"])]

    def _version(self, owner: str, slug: str, label: str | None, user: str | None = None) -> dict[str, Any]:
        """The version a read names (latest visible without a label); lagging ones answer 403/404."""
        kernel = self._kernel(owner, slug, user)
        number = parse_version(label)
        visible = self._visible_versions(kernel)
        if number is None:
            if visible:
                return visible[-1]
            if not kernel["versions"]:
                raise ApiError(404, f"Kernel {owner}/{slug} has no versions")
            raise self._lagging(owner, slug, kernel["versions"][-1]["number"])
        for version in kernel["versions"]:
            if version["number"] == number:
                if version not in visible:
                    raise self._lagging(owner, slug, number)
                return version
        raise ApiError(404, f"Kernel {owner}/{slug} version {number} not found")

    def _lagging(self, owner: str, slug: str, number: int) -> ApiError:
        self.count_fault("lag")
        status = self.behaviours.pick_hidden_status(f"{owner}/{slug}/{number}")
        return ApiError(403, PERMISSION_DENIED) if status == 403 else ApiError(404, f"Kernel {owner}/{slug} not found")

    def _active_sessions(self, owner: str) -> int:
        mine = sum(
            1 for ref, k in self.state["kernels"].items() if ref.split("/")[0] == owner
            for v in k["versions"] if v["status"] in ACTIVE and v["machine_shape"] not in NO_SHAPES
        )
        return mine + self.behaviours.external_sessions()

    # -- SaveKernel -----------------------------------------------------------------------------
    def _refusal(self, body: Mapping[str, Any], user: str) -> str | None:
        """Kaggle's {"error": ...} for a push it refuses outright, else None."""
        slug_ref = str(body.get("slug") or "")
        if slug_ref.count("/") != 1:
            return f"Invalid kernel slug {slug_ref!r}: expected owner/slug"
        owner, slug = slug_ref.split("/")
        if owner != user:
            return f"You ({user}) cannot push to kernel {slug_ref} owned by {owner}"
        if len(slug) < MIN_SLUG:
            return f"Kernel slug {slug!r} must be at least {MIN_SLUG} characters"
        if not body.get("text"):
            return "Kernel text is empty"
        if body.get("language", "python") != "python":
            return f"Unsupported language {body.get('language')!r}"
        shape = body.get("machineShape") or ""
        if shape and shape not in MACHINE_SHAPES:
            return f"Invalid machine shape {shape!r}"
        if not self.realism.phone_verified and (shape not in NO_SHAPES or body.get("enableInternet")):
            return PHONE_NOT_VERIFIED
        if not self.realism.joined and self.settings.competition in _sources(body, "competitionDataSources"):
            return RULES_NOT_ACCEPTED.format(what="add it as a datasource")
        return None

    def _invalid_sources(self, body: Mapping[str, Any]) -> dict[str, list[str]]:
        """Sources that do not exist (Kaggle names them in the reply and pushes anyway)."""
        if not self.realism.invalid_sources:
            return {}
        root = Path(self.settings.datasets_root)
        invalid = {
            "invalidDatasetSources": [s for s in _sources(body, "datasetDataSources")
                                      if not (root / s.split("/")[-1]).is_dir()],
            "invalidCompetitionSources": [s for s in _sources(body, "competitionDataSources")
                                          if s != self.settings.competition],
            "invalidKernelSources": [s for s in _sources(body, "kernelDataSources")
                                     if s not in self.state["kernels"]],
            "invalidModelSources": [s for s in _sources(body, "modelDataSources")
                                    if not (root / "models" / s).is_dir()],
        }
        return {k: v for k, v in invalid.items() if v}

    def save_kernel(self, body: Mapping[str, Any], user: str) -> dict[str, Any]:
        refusal = self._refusal(body, user)
        if refusal:
            return {"error": refusal}
        slug_ref = str(body["slug"])
        owner, slug = slug_ref.split("/")
        text = str(body["text"])
        shape = body.get("machineShape") or ""
        quick = body.get("kernelExecutionType") == "QUICK_SAVE"
        with self._lock:
            limit = self.settings.max_sessions
            if limit and shape not in NO_SHAPES and not quick and self._active_sessions(owner) >= limit:
                return {"error": f"Maximum batch accelerator session count of {limit} reached"}
            kernel = self.state["kernels"].get(slug_ref)
            if kernel is None or kernel.get("deleted"):
                kernel = {"id": self._new_id(), "title": body.get("newTitle") or slug, "versions": []}
                self.state["kernels"][slug_ref] = kernel
            number = len(kernel["versions"]) + 1
            source_sha = sha256(text.encode())
            if kernel["versions"] and kernel["versions"][-1]["source_sha256"] == source_sha:
                self.state["stats"]["identical_versions"] += 1
            kind = "notebook" if body.get("kernelType") == "notebook" else "script"
            version = {
                "number": number, "status": "QUEUED", "failure": "", "created": now(), "started": None,
                "finished": None, "machine_shape": shape, "source_sha256": source_sha, "kernel_type": kind,
                "datasets": _sources(body, "datasetDataSources"),
                "competitions": _sources(body, "competitionDataSources"),
                "kernel_sources": _sources(body, "kernelDataSources"),
                "model_sources": _sources(body, "modelDataSources"),
                "category_ids": _sources(body, "categoryIds"),
                "is_private": bool(body.get("isPrivate", False)),
                "enable_gpu": bool(body.get("enableGpu", False)), "enable_tpu": bool(body.get("enableTpu", False)),
                "enable_internet": bool(body.get("enableInternet", False)),
                "docker_image": body.get("dockerImage") or "",
                "timeout_s": int(body.get("sessionTimeoutSeconds") or self.settings.session_timeout_s),
                "quick_save": quick,
            }
            folder = self.version_dir(slug_ref, number)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / ("source.ipynb" if kind == "notebook" else "source.py"), text)
            kernel["versions"].append(version)
            if body.get("newTitle"):
                kernel["title"] = body["newTitle"]
            self.state["stats"]["versions"] += 1
            if quick:
                version["status"] = "COMPLETE"
            invalid = self._invalid_sources(body)
            self._save()
        self.log(f"push {slug_ref} v{number} shape={shape or 'none'}" + (f" invalid={invalid}" if invalid else ""))
        if not quick:
            self._pool.submit(self._run_version, slug_ref, number)
        return {"ref": f"/code/{slug_ref}", "url": f"{self.url}/code/{slug_ref}", "versionNumber": number,
                "kernelId": kernel["id"], **invalid}

    # -- running --------------------------------------------------------------------------------
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

    def _hold(self, ref: str, number: int, seconds: float) -> bool:
        """Sleep `seconds` in small steps; False when the emulator stops meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._stopping:
                return False
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return True

    def _run_version(self, ref: str, number: int) -> None:
        folder = self.version_dir(ref, number)
        with self._lock:
            version = dict(next(v for v in self.state["kernels"][ref]["versions"] if v["number"] == number))
        if version["status"] not in ACTIVE:
            return
        self._set_version(ref, number, status="RUNNING", started=now())
        log_path = folder / "kernel.log"
        key = f"kernel:{ref}:{number}"
        if self.faults.decide(key, ("kernel_error",)) == "kernel_error":
            self.count_fault("kernel_error")
            log_path.write_text("[emulator] the session was lost (injected kernel error)\n", encoding="utf-8")
            self._set_version(ref, number, status="ERROR", finished=now(),
                              failure="Kernel session ended unexpectedly (injected by the emulator)")
            return
        if self.behaviours.chance(f"cancel:{key}", self.realism.cancel_rate):
            self.count_fault("cancelled")
            self._set_version(ref, number, status="CANCEL_REQUESTED")
            if self._hold(ref, number, self.realism.cancel_s):
                log_path.write_text(f"[emulator] {CANCELLED}\n", encoding="utf-8")
                self._set_version(ref, number, status="CANCEL_ACKNOWLEDGED", finished=now(), failure=CANCELLED)
            return
        if self.behaviours.chance(f"long:{key}", self.realism.long_run_rate):
            self.count_fault("long_run")
            if not self._hold(ref, number, self.realism.long_run_s):
                return
        self._execute(ref, number, version, folder, log_path)

    def _execute(self, ref: str, number: int, version: Mapping[str, Any], folder: Path, log_path: Path) -> None:
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
            self._set_version(ref, number, status="ERROR", finished=now(), failure=f"emulator: {exc}")
            return
        finally:
            with self._lock:
                self._running.pop((ref, number), None)
        if self._stopping and result.returncode != 0:  # killed by stop(): stays RUNNING, re-queued next start
            self.log(f"run {ref} v{number} stopped with the emulator")
            return
        if result.returncode == 0:
            self._set_version(ref, number, status="COMPLETE", finished=now())
        else:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            self._set_version(ref, number, status="ERROR", finished=now(),
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
                    if v["status"] in ("QUEUED", "RUNNING", "CANCEL_REQUESTED")]
            for ref, number in todo:
                self._set_version(ref, number, status="QUEUED")
        for ref, number in todo:
            self._pool.submit(self._run_version, ref, number)

    # -- reads ----------------------------------------------------------------------------------
    def _maybe_not_found(self, owner: str, slug: str, version: Mapping[str, Any], call: str) -> None:
        if now() - version["created"] < NOT_FOUND_WINDOW_S:
            if self.faults.decide(f"nf:{call}:{owner}/{slug}", ("not_found",)) == "not_found":
                self.count_fault("not_found")
                raise ApiError(404, f"Kernel {owner}/{slug} not found")

    def kernel_status(self, body: Mapping[str, Any], user: str | None = None) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            version = dict(self._version(owner, slug, body.get("versionLabel"), user))
        self._maybe_not_found(owner, slug, version, "status")
        status = version["status"]
        if status == "QUEUED" and now() - version["created"] < self.realism.lag_s + self.realism.new_script_s:
            status = "NEW_SCRIPT"
        reply = {"status": status}
        if version["failure"]:
            reply["failureMessage"] = version["failure"]
        return reply

    def _metadata(self, owner: str, slug: str, kernel: Mapping[str, Any], version: Mapping[str, Any],
                  latest: int) -> dict[str, Any]:
        meta = {"id": kernel["id"], "ref": f"{owner}/{slug}", "title": kernel["title"], "author": owner,
                "slug": slug, "language": "python", "kernelType": version["kernel_type"],
                "currentVersionNumber": latest, "isPrivate": version.get("is_private", True),
                "enableGpu": version.get("enable_gpu", False), "enableTpu": version.get("enable_tpu", False),
                "enableInternet": version.get("enable_internet", False),
                "competitionDataSources": version["competitions"], "datasetDataSources": version["datasets"],
                "kernelDataSources": version.get("kernel_sources", []),
                "modelDataSources": version.get("model_sources", []),
                "categoryIds": version.get("category_ids", []), "lastRunTime": iso(version["created"]),
                "url": f"{self.url}/code/{owner}/{slug}", "totalVotes": 0}
        if version["machine_shape"]:
            meta["machineShape"] = version["machine_shape"]
        if version.get("docker_image"):
            meta["dockerImage"] = version["docker_image"]
        return meta

    def get_kernel(self, body: Mapping[str, Any], user: str | None = None) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            kernel = self._kernel(owner, slug, user)
            version = dict(self._version(owner, slug, body.get("versionLabel"), user))
            latest = self._visible_versions(kernel)[-1]["number"]  # stale while the newest one lags
        self._maybe_not_found(owner, slug, version, "get")
        kind = version["kernel_type"]
        source = (self.version_dir(f"{owner}/{slug}", version["number"])
                  / ("source.ipynb" if kind == "notebook" else "source.py")).read_text(encoding="utf-8")
        meta = self._metadata(owner, slug, kernel, version, latest)
        if kind == "notebook" and self.realism.notebook_metadata:
            source = kaggle_notebook(source, {
                "accelerator": (version["machine_shape"] or "none").lower(),
                "dataSources": [{"sourceType": "competition", "sourceId": c} for c in version["competitions"]]
                + [{"sourceType": "datasetVersion", "sourceId": d} for d in version["datasets"]],
                "isInternetEnabled": meta["enableInternet"], "isGpuEnabled": meta["enableGpu"],
                "language": "python", "sourceType": "notebook"})
        return {"metadata": meta, "blob": {"source": source, "language": "python", "kernelType": kind, "slug": slug}}

    def list_output(self, body: Mapping[str, Any], user: str | None = None) -> dict[str, Any]:
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            version = dict(self._version(owner, slug, body.get("versionLabel"), user))
        folder = self.version_dir(f"{owner}/{slug}", version["number"])
        output = folder / "output"
        names = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()) \
            if output.is_dir() else []
        base = f"{self.url}/files/{owner}/{slug}/{version['number']}"
        files = [{"fileName": n, "url": f"{base}/{quote(n)}"} for n in names]
        if self.faults.config.escape_names and version["status"] == "COMPLETE":
            self.count_fault("escape")
            files.append({"fileName": ESCAPE_NAME, "url": f"{base}/{quote(names[0]) if names else 'missing'}"})
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or OUTPUT_PAGE_SIZE)
        reply: dict[str, Any] = {"files": files[start:start + size]}
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

    # -- the rest of the CLI's kernel calls -----------------------------------------------------
    def list_kernels(self, body: Mapping[str, Any], user: str) -> dict[str, Any]:
        """`kaggle kernels list --mine`: the caller's kernels (others' are private to them)."""
        wanted = body.get("user") or user
        search = str(body.get("search") or "").lower()
        with self._lock:
            rows = []
            for ref, kernel in sorted(self.state["kernels"].items()):
                owner, slug = ref.split("/", 1)
                visible = self._visible_versions(kernel)
                if kernel.get("deleted") or owner != wanted or owner != user or not visible:
                    continue
                if search and search not in ref.lower() and search not in kernel["title"].lower():
                    continue
                rows.append(self._metadata(owner, slug, kernel, visible[-1], visible[-1]["number"]))
        return page(rows, body, "kernels", LIST_PAGE_SIZE)

    def list_kernel_files(self, body: Mapping[str, Any], user: str | None = None) -> dict[str, Any]:
        """`kaggle kernels files`: the output files of a version, with sizes and dates."""
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            version = dict(self._version(owner, slug, body.get("versionLabel"), user))
        output = self.version_dir(f"{owner}/{slug}", version["number"]) / "output"
        files = [{"name": p.relative_to(output).as_posix(), "size": p.stat().st_size,
                  "creationDate": iso(p.stat().st_mtime)}
                 for p in sorted(output.rglob("*")) if p.is_file()] if output.is_dir() else []
        return page(files, body, "files", LIST_PAGE_SIZE)

    def delete_kernel(self, body: Mapping[str, Any], user: str) -> dict[str, Any]:
        """`kaggle kernels delete`: the kernel is gone for every later call (its folder stays)."""
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        with self._lock:
            kernel = self._kernel(owner, slug)
            if owner != user:
                raise ApiError(403, f"Permission 'kernels.delete' was denied for {owner}/{slug}")
            kernel["deleted"] = True
            self._save()
        return {}

    def quota(self, user: str) -> dict[str, Any]:
        """`kaggle quota`: accelerator hours used this week (runs' wall time) out of the allowance."""
        used = {"gpu": 0.0, "tpu": 0.0}
        with self._lock:
            for ref, kernel in self.state["kernels"].items():
                if ref.split("/")[0] != user:
                    continue
                for v in kernel["versions"]:
                    if v["machine_shape"] in NO_SHAPES or not v.get("started"):
                        continue
                    spent = (v.get("finished") or now()) - v["started"]
                    used["tpu" if v["machine_shape"].startswith("Tpu") else "gpu"] += max(0.0, spent)

        def quota(spent: float, total: int) -> dict[str, str]:
            return {"timeUsed": _duration(spent), "totalTimeAllowed": _duration(total)}

        return {"quotaRefreshTime": iso(self.behaviours.started + WEEK_S),
                "gpuQuota": quota(used["gpu"], WEEKLY_GPU_S), "tpuQuota": quota(used["tpu"], WEEKLY_TPU_S)}


def _duration(seconds: float) -> str:
    """A protobuf Duration as kagglesdk reads it ("151s"); whole seconds."""
    return f"{int(timedelta(seconds=seconds).total_seconds())}s"


def _link_entries(source: Path, mount: Path) -> None:
    """Mount `source` read-only-ish at `mount`: a folder of symlinks to its entries, minus any solution file."""
    mount.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != SOLUTION_FILE:
            (mount / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
