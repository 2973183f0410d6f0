"""`kit run EXP...`: render each experiment and run it with the local backend into runs/<exp>/v<N>/.

In:  experiment TOMLs and the command's options. Out: exit 0, or 1 if any kernel failed (one `error:` line
each), 130 on Ctrl-C. The work is `kit.run.experiment.run_experiment`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.markup import escape

from kit.config import load_experiments
from kit.console import console
from kit.errors import Interrupted, KitError


def check_timeout(value: float) -> float | None:
    """--timeout: seconds > 0, or 0 for none; anything else is a one-line error."""
    if not math.isfinite(value) or value < 0:
        raise KitError(f"--timeout {value:g}: expected seconds > 0 (or 0 for no limit)")
    return value or None


def cmd_run(args: argparse.Namespace) -> int:
    from kit.run.experiment import check_folds, dataset_dir, run_experiment

    timeout_s = check_timeout(args.timeout)
    failed = 0
    for path in args.experiments:
        for exp in load_experiments(path):
            try:
                data = dataset_dir(exp, args.data)
                check_folds(exp, data, str(path))
                run_experiment(
                    exp, data, Path(args.runs), Path(args.build), fmt=args.format,
                    backend=args.backend, timeout_s=timeout_s, verbose=args.verbose, resume=args.resume,
                )
            except Interrupted:
                raise
            except KitError as exc:
                console.print(f"[red]error:[/] {escape(str(exc))}", no_wrap=True)  # one line, never wrapped
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
    p.add_argument("--resume", action="store_true",
                   help="carry on the experiment's interrupted run: keep its finished folds, train the rest")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the kernel's output")
    p.set_defaults(func=cmd_run)
