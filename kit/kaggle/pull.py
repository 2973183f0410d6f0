"""Pull the outputs of completed Kaggle runs into run folders, verified, resumable and idempotent.

In:  a `KaggleClient`, the `Ledger`, experiment names (default: all), a runs root (default runs/).
Out: `runs/<experiment>/v<N>/` (N = the Kaggle version) holding the kernel's output files, the
     kernel log `kernel.log` and `run.json` (source "kaggle"); a `PullOutcome` per experiment.

How: every output name is checked first (absolute paths, `..`, backslashes and kit's own
`run.json` are refused before anything is written). Files go into a hidden staging folder
`runs/<experiment>/.v<N>.partial/`, each first as `<name>.part` (resumed with a Range request
after an interruption), renamed once its size matches the server's and its size and sha256 match
the kernel's manifest. When every file is in, `kernels.contracts.verify_files` checks them all
(sizes, checksums, OOF and test CSV schema), run.json is written and the staging folder is renamed
to `v<N>` in one step. A pulled version is skipped next time; an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kernels.contracts import MANIFEST_FILE, ContractError, atomic_write_text, file_digest, read_manifest, verify_files
from kit.errors import KitError
from kit.kaggle.client import KaggleClient, KernelNotVisible, OutputFile
from kit.kaggle.ledger import Ledger, latest_version, now_iso
from kit.kaggle.status import log_text
from kit.run.folders import KERNEL_LOG, RUN_JSON, write_run_record

PART_SUFFIX = ".part"
STAGING_SUFFIX = ".partial"
RESERVED_NAMES = frozenset({RUN_JSON})
CORRUPT_RETRIES = 2  # a complete file whose checksum is wrong is fetched afresh this many times


@dataclass(frozen=True)
class PullOutcome:
    experiment: str
    version: int | None
    action: str  # pulled | already | not-ready | failed
    folder: Path | None = None
    note: str = ""
    files: int = 0


def safe_output_name(name: str, where: str) -> PurePosixPath:
    """The output name as a relative path that stays inside the run folder, or a KitError."""
    if not name or "\\" in name or "\x00" in name:
        raise KitError(f"{where}: output name {name!r} is not a plain relative path; refusing to pull")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or name.startswith("~"):
        raise KitError(f"{where}: output name {name!r} escapes the run folder; refusing to pull")
    if str(path) in RESERVED_NAMES or str(path).endswith(PART_SUFFIX):
        raise KitError(f"{where}: output name {name!r} clashes with kit's own files; refusing to pull")
    return path


def run_folder(runs_root: Path, experiment: str, version: int) -> Path:
    if not experiment or "/" in experiment or experiment.startswith("."):
        raise KitError(f"ledger: experiment name {experiment!r} cannot name a run folder")
    return Path(runs_root) / experiment / f"v{version}"


def _matches(path: Path, meta: Mapping[str, Any] | None) -> bool:
    if not path.is_file():
        return False
    if meta is None:
        return True
    digest = file_digest(path)
    return digest["size"] == meta["size"] and digest["sha256"] == meta["sha256"]


def _fetch(client: KaggleClient, item: OutputFile, target: Path, meta: Mapping[str, Any] | None, what: str) -> bool:
    """Download one file into `target` via `<target>.part`; True if it was downloaded, False if already there."""
    if _matches(target, meta):
        return False
    target.unlink(missing_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    for _ in range(CORRUPT_RETRIES):
        client.download(item.url, part, what)
        if _matches(part, meta):
            os.replace(part, target)
            return True
        part.unlink(missing_ok=True)
    raise KitError(f"{what}: size or sha256 differs from the manifest after {CORRUPT_RETRIES} downloads")


def _existing_ok(folder: Path, kernel: str, version: int) -> bool:
    """True when `folder` already holds this Kaggle version, verified; KitError when it holds something else."""
    record_path = folder / RUN_JSON
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if record.get("source") != "kaggle" or record.get("kernel") != kernel or record.get("version") != version:
        raise KitError(f"{folder}: already holds another run ({record.get('source', 'no run.json')}); "
                       f"move it away to pull {kernel}/{version}")
    verify_files(folder, read_manifest(folder / MANIFEST_FILE))
    return True


def pull_version(client: KaggleClient, kernel: str, version: int, experiment: str, content_hash: str,
                 runs_root: Path, on_file: Callable[[str], None] | None = None) -> PullOutcome:
    """Pull one COMPLETE kernel version into its run folder (see module docstring)."""
    final = run_folder(runs_root, experiment, version)
    if final.exists():
        _existing_ok(final, kernel, version)
        return PullOutcome(experiment, version, "already", final)
    where = f"{kernel}/{version}"
    owner, slug = kernel.split("/", 1)
    outputs = client.list_outputs(owner, slug, version)
    names = {str(safe_output_name(f.name, where)): f for f in outputs.files}
    if MANIFEST_FILE not in names:
        raise KitError(f"{where}: no {MANIFEST_FILE} among its {len(names)} output file(s); not a kit kernel run")
    staging = final.with_name(f".{final.name}{STAGING_SUFFIX}")
    staging.mkdir(parents=True, exist_ok=True)
    manifest_path = staging / MANIFEST_FILE
    try:
        _fetch(client, names[MANIFEST_FILE], manifest_path, None, f"{where}/{MANIFEST_FILE}")
        manifest = read_manifest(manifest_path)
    except ContractError:
        manifest_path.unlink(missing_ok=True)  # a bad manifest is fetched again next time
        raise
    missing = [n for n in manifest["files"] if n not in names]
    if missing:
        raise KitError(f"{where}: {missing[0]!r} is listed in the manifest but not among the outputs")
    fetched = 0
    for name, item in sorted(names.items()):
        if name == MANIFEST_FILE:
            continue
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fetched += _fetch(client, item, target, manifest["files"].get(name), f"{where}/{name}")
        if on_file:
            on_file(name)
    verify_files(staging, manifest)
    if KERNEL_LOG not in names:
        atomic_write_text(staging / KERNEL_LOG, log_text(outputs.log))
    write_run_record(staging, experiment=experiment, version=version, source="kaggle", kernel=kernel,
                     content_hash=content_hash, finished_at=now_iso())
    os.replace(staging, final)
    return PullOutcome(experiment, version, "pulled", final, files=len(names), note=f"{fetched} downloaded")


def pull_all(client: KaggleClient, ledger: Ledger, names: Sequence[str] | None, runs_root: Path,
             on_outcome: Callable[[PullOutcome], None] | None = None,
             on_file: Callable[[str], None] | None = None,
             on_note: Callable[[str], None] | None = None) -> list[PullOutcome]:
    """Pull the latest COMPLETE version of each selected experiment; failures are reported, not fatal."""
    from kit.kaggle.status import refresh, selected

    refresh(client, ledger, names, on_note=on_note)
    data = ledger.read()
    outcomes = []
    for name in selected(data, names):
        entry = data["experiments"][name]
        version = latest_version(entry)
        if version is None or version["status"] != "COMPLETE":
            status = version["status"] if version else "not pushed"
            outcome = PullOutcome(name, version["version"] if version else None, "not-ready", note=status)
        else:
            try:
                outcome = pull_version(client, entry["kernel"], version["version"], name, version["content_hash"],
                                       Path(runs_root), on_file)
            except KernelNotVisible as exc:  # Kaggle's lag: the outputs show a moment later
                outcome = PullOutcome(name, version["version"], "not-ready", note=f"outputs not visible yet ({exc})")
            except (KitError, ContractError) as exc:
                outcome = PullOutcome(name, version["version"], "failed", note=str(exc))
            if outcome.folder is not None:
                with ledger.transaction() as fresh:
                    for v in fresh["experiments"][name]["versions"]:
                        if v["version"] == version["version"]:
                            v["run_dir"] = str(outcome.folder)
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    return outcomes

