"""Run folders: discovery, selection, versioning and loading (`kit run`, `pull`, `blend`, `predict`).

Layout: ``<root>/<experiment>/v<N>/`` holds exactly what the kernel wrote (the files named in
`kernels.contracts`: oof.csv, test_pred.csv, test_pred_folds.csv, manifest.json, history.json,
history.png, fold{k}.weights.h5, optional plots) plus ``kernel.log`` and ``run.json`` (kit's
provenance: experiment, version, source "local" | "kaggle", kernel "owner/slug" or null,
content_hash, finished_at). The latest run of an experiment is its highest N. A folder whose
manifest.json is missing, invalid, or not marked complete by the kernel (`kernels.contracts.incomplete_reason`:
interrupted after some folds) is incomplete: listed by `incomplete_runs` with why, never loaded, and a
selection that would reach past it (the newest folder of a selected experiment) is refused with one line.
Selectors starting with ``!`` exclude (``tags=["!synthetic"]``, ``globs=["!smoke-*"]``).

In:  a runs root folder (default ``runs``) and selectors (names, tags, globs).
Out: `RunInfo` (manifest-level facts, cheap) and `Run` (plus the validated OOF and test frames);
     `KitError` / `ContractError` with one line naming the folder or file and the problem.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kernels.contracts import (
    MANIFEST_FILE,
    OOF_FILE,
    TEST_PRED_FILE,
    ContractError,
    atomic_write_text,
    file_digest,
    incomplete_reason,
    read_json,
    read_manifest,
    read_oof,
    read_test_pred,
    verify_files,
)
from kit.errors import KitError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_ROOT = "runs"
RUN_JSON = "run.json"
KERNEL_LOG = "kernel.log"
VERSION_PREFIX = "v"
VERSION_RE = re.compile(r"^v(\d+)$")
RUN_ID_SEP = "/"
CHECKED_CSVS = (OOF_FILE, TEST_PRED_FILE)  # checked against the manifest's sha256 on every load
RUN_JSON_KEYS = ("experiment", "version", "source", "kernel", "content_hash", "finished_at")
SOURCES = ("local", "kaggle")
EXCLUDE_PREFIX = "!"
RESUME_HINT = "finish it with `kit run EXP --resume`, delete it, or exclude it from the selection"


CACHE_DIR_ENV = "KIT_CACHE_DIR"  # kit's per-user cache (compiled rehearsal steps, blend results)
CACHE_DIR_DEFAULT = Path("~/.cache/kit")  # ($XDG_CACHE_HOME/kit when that is set)


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """kit's per-user cache folder: ``$KIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kit``, else ``~/.cache/kit``."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "kit"
    return CACHE_DIR_DEFAULT.expanduser()

@dataclass(frozen=True)
class RunInfo:
    """A complete run folder: who it is and what its manifest says (frames not loaded)."""

    experiment: str
    version: int
    folder: Path
    manifest: Mapping[str, Any] = field(repr=False)
    provenance: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        """``<experiment>/v<N>``: how reports and blend.json name the run."""
        return f"{self.experiment}{RUN_ID_SEP}{VERSION_PREFIX}{self.version}"

    @property
    def config(self) -> Mapping[str, Any]:
        """The experiment config the kernel ran with (a plain dict)."""
        cfg = self.manifest.get("config")
        return cfg if isinstance(cfg, Mapping) else {}

    @property
    def tags(self) -> tuple[str, ...]:
        """The experiment's tags (config ``tags``)."""
        return tuple(str(t) for t in self.config.get("tags", ()) or ())


@dataclass(frozen=True)
class Run:
    """A loaded run: its `RunInfo` plus validated OOF and test-prediction frames."""

    info: RunInfo
    oof: pd.DataFrame = field(repr=False)
    test: pd.DataFrame = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.info.run_id


def _version_of(name: str) -> int | None:
    match = VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def _read_provenance(folder: Path) -> Mapping[str, Any] | None:
    path = folder / RUN_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ContractError(f"{path}: expected a JSON object")
    return data


def _version_folders(root: Path) -> Iterable[tuple[str, int, Path]]:
    if not root.is_dir():
        return
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for run_dir in exp_dir.iterdir():
            version = _version_of(run_dir.name)
            if version is not None and run_dir.is_dir():
                yield exp_dir.name, version, run_dir


def _info(experiment: str, version: int, folder: Path) -> RunInfo:
    try:
        manifest = read_manifest(folder / MANIFEST_FILE)
    except ContractError as exc:
        detail = str(exc).replace(f"{folder}{os.sep}", "", 1)
        raise ContractError(f"{folder}: incomplete ({detail})") from None
    reason = incomplete_reason(manifest)
    if reason:
        raise ContractError(f"{folder}: {reason}")
    return RunInfo(experiment, version, folder, manifest, _read_provenance(folder))


def list_runs(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[RunInfo]:
    """Every complete run under `root` (valid manifest.json), sorted by experiment then version."""
    runs = []
    for experiment, version, folder in _version_folders(Path(root)):
        try:
            runs.append(_info(experiment, version, folder))
        except ContractError:
            continue  # incomplete: see incomplete_runs
    return sorted(runs, key=lambda r: (r.experiment, r.version))


def incomplete_runs(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[tuple[Path, str]]:
    """Run folders that blends ignore, each with the reason (missing or invalid manifest)."""
    out = []
    for experiment, version, folder in _version_folders(Path(root)):
        try:
            _info(experiment, version, folder)
        except ContractError as exc:
            out.append((folder, str(exc)))
    return sorted(out, key=lambda item: (item[0].parent.name, _version_of(item[0].name) or 0))


def _folder_tags(folder: Path) -> tuple[str, ...]:
    """Tags of a (possibly incomplete) run folder's config; () when its manifest is unreadable."""
    try:
        manifest = read_json(folder / MANIFEST_FILE)
        return tuple(str(t) for t in manifest.get("config", {}).get("tags", ()) or ())
    except (ContractError, AttributeError, TypeError):
        return ()


def _blocking(root: Path, everything: Sequence[RunInfo], latest: bool) -> list[tuple[str, Path, str]]:
    """Incomplete folders a selection must not silently skip: with `latest`, an experiment's newest
    folder when it is incomplete (so an older run would stand in for it); else every incomplete one."""
    newest_complete = {}
    for run in everything:
        newest_complete[run.experiment] = max(run.version, newest_complete.get(run.experiment, 0))
    out = []
    for folder, reason in incomplete_runs(root):
        version = _version_of(folder.name) or 0
        if not latest or version > newest_complete.get(folder.parent.name, 0):
            out.append((folder.parent.name, folder, reason))
    return out


def latest_runs(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[RunInfo]:
    """The highest complete version of every experiment under `root`."""
    latest: dict[str, RunInfo] = {}
    for run in list_runs(root):
        latest[run.experiment] = run  # sorted by version, so the last one wins
    return [latest[k] for k in sorted(latest)]


def _matches_glob(experiment: str, run_id: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(experiment, pattern) or fnmatch.fnmatchcase(run_id, pattern)


def _split(selectors: Sequence[str]) -> tuple[list[str], list[str]]:
    """(include, exclude): selectors starting with EXCLUDE_PREFIX exclude."""
    return ([s for s in selectors if not s.startswith(EXCLUDE_PREFIX)],
            [s[len(EXCLUDE_PREFIX):] for s in selectors if s.startswith(EXCLUDE_PREFIX)])


def select_runs(
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    names: Sequence[str] = (),
    tags: Sequence[str] = (),
    globs: Sequence[str] = (),
    latest: bool = True,
) -> list[RunInfo]:
    """Runs matching any selector (union), minus the excluded ones, sorted by run id; no including
    selector at all means every run.

    A name is an experiment (its latest run when `latest`) or an exact ``<experiment>/v<N>``;
    a tag matches the config's ``tags``; a glob (fnmatch) matches the experiment name or run id;
    ``!tag`` / ``!glob`` remove runs. A selector that matches nothing is an error naming it, so a
    typo never shrinks a blend; so is an incomplete folder that a selector reaches (see the module doc).
    """
    tags_in, tags_out = _split(tags)
    globs_in, globs_out = _split(globs)
    everything = list_runs(root)
    pool = latest_runs(root) if latest else everything

    def excluded(experiment: str, run_id: str, run_tags: Sequence[str]) -> bool:
        return (any(t in run_tags for t in tags_out)
                or any(_matches_glob(experiment, run_id, g) for g in globs_out))

    def wanted(experiment: str, run_id: str, run_tags: Sequence[str]) -> bool:
        if excluded(experiment, run_id, run_tags):
            return False
        if not (names or tags_in or globs_in):
            return True
        return (experiment in names or run_id in names or any(t in run_tags for t in tags_in)
                or any(_matches_glob(experiment, run_id, g) for g in globs_in))

    for experiment, folder, reason in _blocking(Path(root), everything, latest):
        run_id = f"{experiment}{RUN_ID_SEP}{folder.name}"
        if (names or tags_in or globs_in) and wanted(experiment, run_id, _folder_tags(folder)):
            raise KitError(f"{reason}; {RESUME_HINT}")
    if not everything:
        raise KitError(f"{root}: no complete runs (expected <experiment>/v<N>/ folders with a valid manifest.json)")
    chosen: dict[str, RunInfo] = {}
    if not (names or tags_in or globs_in):
        chosen = {r.run_id: r for r in pool}
    for name in names:
        hits = [r for r in everything if r.run_id == name] or [r for r in pool if r.experiment == name]
        if not hits:
            bad = [reason for folder, reason in incomplete_runs(root) if f"{folder.parent.name}/{folder.name}" == name]
            if bad:
                raise KitError(bad[0])
            have = ", ".join(sorted({r.experiment for r in everything}))
            raise KitError(f"{root}: no run named {name!r} (have: {have})")
        chosen.update((r.run_id, r) for r in hits)
    for tag in tags_in:
        hits = [r for r in pool if tag in r.tags]
        if not hits:
            raise KitError(f"{root}: no run tagged {tag!r}")
        chosen.update((r.run_id, r) for r in hits)
    for pattern in globs_in:
        hits = [r for r in pool if _matches_glob(r.experiment, r.run_id, pattern)]
        if not hits:
            raise KitError(f"{root}: no run matches the glob {pattern!r}")
        chosen.update((r.run_id, r) for r in hits)
    kept = {k: r for k, r in chosen.items() if not excluded(r.experiment, r.run_id, r.tags)}
    if not kept:
        raise KitError(f"{root}: every selected run is excluded (by {', '.join(EXCLUDE_PREFIX + x for x in tags_out + globs_out)})")
    return [kept[k] for k in sorted(kept)]


def next_version_dir(root: str | os.PathLike[str], experiment: str, create: bool = False) -> Path:
    """``<root>/<experiment>/v<N+1>`` where N is the highest version folder present (complete or not).

    With `create`, the folder is made (claimed) atomically, retrying if another process takes N+1.
    """
    if not experiment or RUN_ID_SEP in experiment or experiment.startswith("."):
        raise KitError(f"{root}: experiment name {experiment!r} cannot name a run folder")
    exp_dir = Path(root) / experiment
    while True:
        versions = [_version_of(p.name) for p in exp_dir.iterdir()] if exp_dir.is_dir() else []
        folder = exp_dir / f"{VERSION_PREFIX}{max([v for v in versions if v is not None], default=0) + 1}"
        if not create:
            return folder
        exp_dir.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


def write_run_record(
    folder: str | os.PathLike[str],
    *,
    experiment: str,
    version: int,
    source: str,
    kernel: str | None,
    content_hash: str,
    finished_at: str,
) -> dict[str, Any]:
    """Write ``run.json`` (kit's provenance of the run) atomically into `folder`; return the record."""
    if source not in SOURCES:
        raise KitError(f"{folder}: run source {source!r}, expected one of {', '.join(SOURCES)}")
    record = {"experiment": experiment, "version": int(version), "source": source, "kernel": kernel,
              "content_hash": content_hash, "finished_at": finished_at}
    atomic_write_text(Path(folder) / RUN_JSON, json.dumps(record, indent=2) + "\n")
    return record


def _check_digests(folder: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    """{name: sha256} of the CSVs the manifest lists, each checked against it (ContractError if changed)."""
    files = manifest["files"]
    seen: dict[str, str] = {}
    for name in CHECKED_CSVS:
        meta = files.get(name)
        if meta is None or not (folder / name).exists():
            continue
        seen[name] = file_digest(folder / name)["sha256"]
        if seen[name] != meta["sha256"]:
            raise ContractError(f"{folder / name}: sha256 differs from the manifest (file changed after the run)")
    return seen


class FrameStore(Protocol):
    """Where parsed, validated run CSVs are kept between commands (`kit.blend.memo.Memo` is one)."""

    def load(self, namespace: str, parts: Any) -> Any: ...

    def save(self, namespace: str, parts: Any, value: Any) -> None: ...


FRAME_NAMESPACE = "frames"


def _read_checked(path: Path, reader: Any, sha256: str | None, frames: FrameStore | None) -> pd.DataFrame:
    """`reader(path)` (parse + validate), or the frame stored for a file of the same sha256 and reader.

    A stored frame is the reader's result for exactly these bytes: the key is the file's sha256 (taken
    before parsing), and a frame is stored only when the file's sha256 after parsing is the same one.
    """
    import pandas as pd

    if frames is None:
        return reader(path)
    sha256 = sha256 or file_digest(path)["sha256"]
    key = (reader.__module__, reader.__qualname__, sha256)
    stored = frames.load(FRAME_NAMESPACE, key)
    if isinstance(stored, pd.DataFrame):
        return stored
    frame = reader(path)
    if file_digest(path)["sha256"] == sha256:  # not rewritten while it was parsed
        frames.save(FRAME_NAMESPACE, key, frame)
    return frame


def run_from_folder(folder: str | os.PathLike[str]) -> RunInfo:
    """The `RunInfo` of one ``<experiment>/v<N>`` folder (manifest validated)."""
    path = Path(folder)
    version = _version_of(path.name)
    if version is None:
        raise KitError(f"{path}: not a run folder (expected <experiment>/v<N>)")
    return _info(path.parent.name, version, path)


def load_run(folder: str | os.PathLike[str] | RunInfo, verify: bool = False, frames: FrameStore | None = None
             ) -> Run:
    """Load a run: manifest, OOF and test predictions, each validated by `kernels.contracts`.

    The two CSVs are checked against the manifest's sha256; `verify` checks every listed file.
    `frames`: a store of parsed CSVs by content (a blend keeps them in kit's cache: reading 50 runs' CSVs
    is most of loading them), so an unchanged file is hashed and checked but not parsed again.
    """
    info = folder if isinstance(folder, RunInfo) else run_from_folder(folder)
    digests = {} if verify else _check_digests(info.folder, info.manifest)
    if verify:  # every listed file by size and sha256 (the two CSVs among them): not hashed a second time
        verify_files(info.folder, info.manifest)
    oof = _read_checked(info.folder / OOF_FILE, read_oof, digests.get(OOF_FILE), frames)
    test = _read_checked(info.folder / TEST_PRED_FILE, read_test_pred, digests.get(TEST_PRED_FILE), frames)
    return Run(info, oof, test)
