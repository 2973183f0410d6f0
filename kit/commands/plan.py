"""`kit plan ENS_OR_EXP`: estimated accelerator hours per kernel against the weekly quota, before any push.

In:  an ensemble recipe (``ensembles/<name>.toml`` or its name: the experiments under ``--experiments`` that its
     [runs] names/tags/globs select) or an experiment TOML (a sweep expands to its grid); completed runs under
     ``--runs`` and in the ledger calibrate the estimate (see `kit.kaggle.plan` for the cost model and its constants).
Out: a table (hours per kernel, share of the session limit, cumulative hours against the weekly quota) and
     closing lines (totals, weeks of quota needed, the calibration used). Exit 0; 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from kernels.accelerators import ACCELERATOR_HELP

ENSEMBLES_DIR = "ensembles"
EXPERIMENTS_DIR = "experiments"
ENSEMBLE_TABLES = ("runs", "method", "calibration", "report")  # top-level tables only a blend recipe has


def _is_ensemble(path: Path) -> bool:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return "name" not in data and any(key in data for key in ENSEMBLE_TABLES)


def resolve_target(spec: str, ensembles: Path, experiments: Path) -> tuple[str, Path]:
    """("ensemble" | "experiment", TOML path) for ENS_OR_EXP: a path, an ensemble name or an experiment name."""
    from kit.errors import KitError

    path = Path(spec)
    if path.is_file():
        return ("ensemble" if _is_ensemble(path) else "experiment"), path
    for kind, folder in (("ensemble", ensembles), ("experiment", experiments)):
        candidate = folder / f"{spec}.toml"
        if candidate.is_file():
            return kind, candidate
    raise KitError(f"{spec}: no such file, and neither {ensembles / (spec + '.toml')} nor "
                   f"{experiments / (spec + '.toml')} exists")


def cmd_plan(args: argparse.Namespace) -> int:
    from kit.blend.recipe import load_recipe
    from kit.config import load_experiments
    from kit.console import console
    from kit.errors import KitError
    from kit.kaggle.ledger import Ledger, default_ledger_path
    from kit.kaggle.plan import (
        calibrate,
        estimate,
        ledger_run_folders,
        on_accelerator,
        plan_summary,
        plan_table,
        run_folders,
        select_experiments,
    )

    kind, path = resolve_target(args.target, Path(args.ensembles), Path(args.experiments))
    if kind == "ensemble":
        recipe = load_recipe(str(path))
        pool = [e for toml in sorted(Path(args.experiments).glob("*.toml")) for e in load_experiments(toml)]
        exps = select_experiments(pool, recipe.names, recipe.tags, recipe.globs)
        if not exps:
            raise KitError(f"{path}: [runs] selects none of the experiments in {args.experiments}/")
        title = f"kit plan: ensemble {recipe.name} ({len(exps)} kernels)"
    else:
        exps = load_experiments(path)
        title = f"kit plan: {path}"
    if args.accelerator:
        exps = [on_accelerator(e, args.accelerator) for e in exps]
    folders = run_folders(Path(args.runs))
    ledger_path = Path(args.ledger) if args.ledger else default_ledger_path()
    if ledger_path.is_file():
        folders += ledger_run_folders(Ledger(ledger_path).read())
    calibration = calibrate(folders)
    costs = [estimate(e, calibration) for e in exps]
    console.print(plan_table(costs, calibration, title))
    for line in plan_summary(costs, calibration):
        console.print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="estimated accelerator hours per kernel against the weekly quota")
    p.add_argument("target", metavar="ENS_OR_EXP", help="ensemble recipe or experiment TOML (or its name)")
    p.add_argument("--experiments", default=EXPERIMENTS_DIR, help="where an ensemble's experiments are looked up")
    p.add_argument("--ensembles", default=ENSEMBLES_DIR, help="where ensemble names are looked up")
    p.add_argument("--runs", default="runs", help="completed runs that calibrate the estimate (default runs)")
    p.add_argument("--ledger", default=None, help="ledger whose pulled runs also calibrate (default .kit/ledger.json)")
    p.add_argument("--accelerator", default=None, help=ACCELERATOR_HELP)
    p.set_defaults(func=cmd_plan)
