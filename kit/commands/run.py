"""`kit run EXP...`: render each experiment and run it with the local backend into runs/<exp>/v<N>/.

In:  experiment TOMLs; the dataset is data.dataset when that is a local folder, else --data.
Out: a run folder per experiment with the kernel's outputs (checked against kernels.contracts),
     kernel.log and run.json; a summary line with the OOF AUC. Exit 1 if any kernel failed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.markup import escape

from kernels.config import Experiment
from kernels.contracts import MANIFEST_FILE, read_manifest, verify_files
from kit.commands.render import default_owner
from kit.config import load_experiments
from kit.console import console
from kit.errors import KitError
from kit.localrun import run_kernel
from kit.render import render_experiment
from kit.runs import next_version_dir, write_run_record

LOG_TAIL_LINES = 25


def dataset_dir(exp: Experiment, override: str | None) -> str:
    """The local dataset folder for a run: --data, else data.dataset when it is a folder."""
    if override:
        if "://" not in override and not os.path.isdir(override):
            raise KitError(f"--data {override}: not a folder")
        return override
    if os.path.isdir(exp.data.dataset):
        return exp.data.dataset
    raise KitError(f"{exp.name}: data.dataset {exp.data.dataset!r} is not a local folder; pass --data DIR")


def run_experiment(
    exp: Experiment,
    data: str,
    runs_root: Path = Path("runs"),
    build_root: Path = Path("build/kernels"),
    fmt: str | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
    verbose: bool = False,
) -> Path:
    """Render, run and check one experiment against the dataset folder `data`; return its run folder."""
    kernel = render_experiment(exp, owner=default_owner(), out_root=build_root, fmt=fmt)
    out = next_version_dir(runs_root, exp.name, create=True)
    extra = {"KERAS_BACKEND": backend} if backend else {}
    console.print(f"[bold]{exp.name}[/]: running {kernel.code_file} -> {out}")
    shown = console.print if verbose else None
    with console.status(f"{exp.name}: training", spinner="dots") as status:
        def on_line(line: str) -> None:
            if shown:
                shown(f"  {line}", markup=False)
            elif line.startswith("[kit]"):
                status.update(f"{exp.name}: {escape(line[6:][:100])}")

        result = run_kernel(kernel.code_file, out, data_dir=data, extra_env=extra, on_line=on_line,
                            timeout_s=timeout_s)
    if result.returncode != 0:
        tail = result.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        console.print("\n".join(tail), markup=False)
        raise KitError(f"{exp.name}: kernel exited with code {result.returncode}; log: {result.log_path}")
    manifest = read_manifest(out / MANIFEST_FILE)
    verify_files(out, manifest)
    write_run_record(out, experiment=exp.name, version=int(out.name[1:]), source="local", kernel=None,
                     content_hash=kernel.content_hash, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    folds = ", ".join(f"{f['auc']:.3f}" for f in manifest["folds"])
    console.print(f"[bold]{exp.name}[/]: OOF AUC {manifest['oof_auc']:.4f} (folds {folds}) in {result.seconds:.0f} s")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.experiments:
        for exp in load_experiments(path):
            try:
                run_experiment(
                    exp, dataset_dir(exp, args.data), Path(args.runs), Path(args.build), fmt=args.format,
                    backend=args.backend, timeout_s=args.timeout or None, verbose=args.verbose,
                )
            except KitError as exc:
                console.print(f"[red]error:[/] {exc}", markup=True)
                failed += 1
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="render and run experiments locally (the local backend)")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment TOML file(s)")
    p.add_argument("--data", default=None, help="dataset folder (default: data.dataset when it is a folder)")
    p.add_argument("--runs", default="runs", help="runs root (default runs)")
    p.add_argument("--build", default="build/kernels", help="where kernels are rendered")
    p.add_argument("--format", choices=("script", "notebook"), default=None, help="kernel form")
    p.add_argument("--backend", choices=("tensorflow", "jax"), default=None, help="force the Keras backend")
    p.add_argument("--timeout", type=float, default=0, help="kill the kernel after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the kernel's output")
    p.set_defaults(func=cmd_run)
