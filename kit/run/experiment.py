"""Run one experiment with the local backend: render it, run the kernel, check and record the run folder.

In:  an `Experiment` and its dataset folder (data.dataset when that is a local folder, else --data).
Out: a run folder (runs/<exp>/v<N>/) with the kernel's outputs (checked against kernels.contracts),
     kernel.log and run.json; a summary line with the OOF AUC; KitError (one line) when the kernel fails,
     Interrupted on Ctrl-C. A run stopped part-way keeps its finished folds; ``resume`` trains only the
     rest, in the same folder. In a terminal a progress line follows the kernel; in a log (stdout not a
     terminal) each of the kernel's ``[kit]`` lines (one per epoch) is printed as it comes.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from rich.markup import escape

from kernels.config import Experiment, to_dict
from kernels.contracts import MANIFEST_FILE, ContractError, incomplete_reason, read_json, read_manifest, verify_files
from kit.console import console
from kit.errors import Interrupted, KitError
from kit.render.kernel import default_owner, render_experiment
from kit.run.folders import VERSION_PREFIX, next_version_dir, write_run_record
from kit.run.local import run_kernel

LOG_TAIL_LINES = 25
RESUME_ENV = "KIT_RESUME"  # = kernels.main.RESUME_ENV (kit never imports the kernel's entry point)
KIT_LINE = "[kit] "
STAGE_WIDTH = 24  # characters of the kernel's latest step shown after the progress bar
BAR_WIDTH = 20
EPOCH_LINE = re.compile(r"\bepoch \d+/\d+ ")  # the kernel's one line per epoch (kernels.train.EpochRecorder)
ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit))(?:: (.*))?$")
ONE_LINE_ERRORS = ("ConfigError", "DataRecordError", "DataLocationError", "ContractError")  # message says it all


def kernel_error(log_text: str) -> str | None:
    """The kernel's last exception as one line (``Type: message``; just the message for the kernel's
    own one-line errors), or None when the log holds no traceback."""
    if "Traceback (most recent call last)" not in log_text:
        return None
    for line in reversed(log_text.splitlines()):
        match = ERROR_LINE.match(line.strip())
        if match:
            kind, message = match.group(1), (match.group(2) or "").strip()
            return message if kind in ONE_LINE_ERRORS and message else f"{kind}: {message}".rstrip(": ")
    return None


def dataset_dir(exp: Experiment, override: str | None) -> str:
    """The local dataset folder for a run: --data, else data.dataset when it is a folder."""
    if override:
        if "://" not in override and not os.path.isdir(override):
            raise KitError(f"--data {override}: not a folder")
        return override
    if os.path.isdir(exp.data.dataset):
        return exp.data.dataset
    raise KitError(f"{exp.name}: data.dataset {exp.data.dataset!r} is not a local folder; pass --data DIR")


def check_folds(exp: Experiment, data: str, where: str) -> None:
    """data.folds against the dataset folder: folds are whole train files, so there must be at least as
    many files as folds (checked here, before anything starts, when the dataset is a local folder)."""
    if "://" in data:
        return
    n = len(list(Path(data).glob(exp.data.train_glob)))
    if 0 < n < exp.data.folds:
        raise KitError(f"{where}: data.folds: got {exp.data.folds}, expected at most {n} (folds are whole files: "
                       f"{n} train files match {exp.data.train_glob!r} in {data})")


def _done_folds(folder: Path) -> str:
    try:
        manifest = read_json(folder / MANIFEST_FILE)
        return ", ".join(str(f["fold"]) for f in manifest["folds"]) or "none"
    except (ContractError, KeyError, TypeError):
        return "none"


def resume_folder(runs_root: Path, exp: Experiment) -> Path | None:
    """The folder `--resume` carries on: the experiment's newest version when it is incomplete and was
    started with the same config; None when there is nothing to resume (no folder, or it is complete)."""
    exp_dir = runs_root / exp.name
    versions = sorted((int(p.name[1:]), p) for p in exp_dir.glob(f"{VERSION_PREFIX}*")
                      if p.is_dir() and p.name[1:].isdigit()) if exp_dir.is_dir() else []
    if not versions:
        return None
    folder = versions[-1][1]
    if not (folder / MANIFEST_FILE).exists():
        return folder  # stopped before its first fold finished: start again in the same folder
    try:
        manifest = read_manifest(folder / MANIFEST_FILE)
    except ContractError as exc:
        raise KitError(f"--resume: {exc}; cannot carry on from a damaged manifest (delete {folder})") from None
    if incomplete_reason(manifest) is None:
        return None
    if json.dumps(manifest["config"], sort_keys=True) != json.dumps(to_dict(exp), sort_keys=True):
        raise KitError(f"--resume: {folder} was started with another config of {exp.name!r}; "
                       "run without --resume for a new version")
    return folder


def run_experiment(
    exp: Experiment,
    data: str,
    runs_root: Path = Path("runs"),
    build_root: Path = Path("build/kernels"),
    fmt: str | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Path:
    """Render, run and check one experiment against the dataset folder `data`; return its run folder.
    With `resume`, the newest incomplete folder of the experiment is carried on (see `resume_folder`)."""
    kernel = render_experiment(exp, owner=default_owner(), out_root=build_root, fmt=fmt)
    out = resume_folder(runs_root, exp) if resume else None
    if resume and out is None:
        console.print(f"{exp.name}: nothing to resume (no interrupted run); starting a new version")
    resuming = out is not None
    out = out or next_version_dir(runs_root, exp.name, create=True)
    extra = {"KERAS_BACKEND": backend} if backend else {}
    if resuming:
        extra[RESUME_ENV] = "1"
        console.print(f"[bold]{escape(exp.name)}[/]: resuming {out} (fold(s) {_done_folds(out)} finished)")
    console.print(f"[bold]{escape(exp.name)}[/]: running {kernel.code_file} -> {out}", soft_wrap=True)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    in_log = verbose or not console.is_terminal
    planned = list(exp.data.run_folds) or list(range(exp.data.folds))
    done = 0 if not resuming or _done_folds(out) == "none" else len(_done_folds(out).split(", "))
    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=BAR_WIDTH), MofNCompleteColumn(),
                        TextColumn("epochs"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[stage]}"), console=console, transient=True, disable=in_log)
    with progress:
        task = progress.add_task(exp.name, total=len(planned) * exp.train.epochs, completed=done * exp.train.epochs,
                                 stage="starting")

        def on_line(line: str) -> None:
            if verbose:
                console.print(f"  {line}", markup=False)
            elif line.startswith(KIT_LINE):
                text = line[len(KIT_LINE):]
                if in_log:
                    console.print(f"  {text}", markup=False)
                else:
                    epoch = EPOCH_LINE.search(text)
                    stage = text[:epoch.end()].strip() if epoch else text.split(":")[0]
                    progress.update(task, stage=escape(stage[:STAGE_WIDTH]), advance=1 if epoch else 0)

        try:
            result = run_kernel(kernel.code_file, out, data_dir=data, extra_env=extra, on_line=on_line,
                                timeout_s=timeout_s, append_log=resuming)
        except KeyboardInterrupt:
            raise Interrupted(f"{exp.name}: interrupted; fold(s) {_done_folds(out)} finished are kept in {out}; "
                              f"`kit run EXP --resume` trains the rest") from None
    if result.returncode != 0:
        text = result.log_path.read_text(errors="replace")
        cause = kernel_error(text)
        if cause is None or verbose:  # no one-line cause found: show the log's tail
            console.print("\n".join(text.splitlines()[-LOG_TAIL_LINES:]), markup=False, soft_wrap=True)
        kept = _done_folds(out)
        hint = f"; fold(s) {kept} finished are kept, `kit run EXP --resume` trains the rest" if kept != "none" else ""
        what = cause or f"kernel exited with code {result.returncode}"
        raise KitError(f"{exp.name}: {what}; log: {result.log_path}{hint}")
    manifest = read_manifest(out / MANIFEST_FILE)
    reason = incomplete_reason(manifest)
    if reason:
        raise KitError(f"{out}: {reason}")
    verify_files(out, manifest)
    write_run_record(out, experiment=exp.name, version=int(out.name[1:]), source="local", kernel=None,
                     content_hash=kernel.content_hash, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    folds = ", ".join(f"{f['auc']:.3f}" for f in manifest["folds"])
    console.print(f"[bold]{escape(exp.name)}[/]: OOF AUC {manifest['oof_auc']:.4f} (folds {folds}) in {result.seconds:.0f} s")
    return out
