"""`kit blend RECIPE_OR_NAME` and `kit report [RECIPE_OR_NAME]`.

In:  a recipe name (``ensembles/<name>.toml``) or path; optional --runs (runs root), --dataset
     (folder with sample_submission.csv / train.csv), --out (output folder), --ensembles.
Out: `kit blend` writes ``ensembles/<name>/`` (submission.csv, blend.json, report.md/.html, PNGs)
     and prints the report; `kit report NAME` rewrites only that ensemble's report; `kit report`
     alone reports on every latest run (leaderboard, answers, their rank-mean blend) into
     ``build/report/``. Exit 0; bad recipes or inputs -> one `error:` line (see kit.cli).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from kit.console import console

DEFAULT_REPORT_DIR = "build/report"
ENSEMBLES_DIR = "ensembles"  # = kit.blend.recipe.ENSEMBLES_DIR (the blend stack loads only when a command runs)


def cmd_blend(args: argparse.Namespace) -> int:
    from kit.blend.build import REPORT_HTML, REPORT_MD, SUBMISSION_FILE, run_blend
    from kit.blend.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.ensembles)
    outcome = run_blend(recipe, root=args.runs, dataset=args.dataset, out_dir=args.out, console=console,
                        cache=not args.no_cache)
    blend = outcome.blend or {}
    console.print(f"\n[bold]{recipe.name}[/]: {blend.get('method')} over {len(blend.get('runs', []))} run(s): "
                  + headline_text(blend))
    console.print(f"wrote {outcome.out_dir / SUBMISSION_FILE}, {outcome.out_dir / REPORT_MD}, "
                  f"{outcome.out_dir / REPORT_HTML} and the plots")
    _reused(outcome.reused)
    return 0


def _reused(line: str) -> None:
    if line:
        console.print(f"[dim]{escape(line)}[/]")


def headline_text(blend: dict) -> str:
    """"OOF AUC 0.6123 [0.581, 0.640] nested CV (in-sample 0.6500)", or the in-sample figure alone
    for a method that learns nothing (both are the same there)."""
    nan = float("nan")
    low, high = (blend.get("oof_auc_ci") or [nan, nan])[:2]
    head = f"OOF AUC {blend.get('oof_auc', nan):.4f} [{low:.3f}, {high:.3f}]"
    if blend.get("oof_auc_headline") == "nested_cv":
        return head + f" nested CV (in-sample {blend.get('oof_auc_in_sample', nan):.4f}, optimistic)"
    return head + " (the method learns nothing: in-sample is honest)"


def cmd_report(args: argparse.Namespace) -> int:
    from kit.blend.build import REPORT_HTML, REPORT_MD, run_blend
    from kit.blend.recipe import default_recipe, load_recipe

    if args.recipe:
        recipe = load_recipe(args.recipe, args.ensembles)
        outcome = run_blend(recipe, root=args.runs, dataset=args.dataset, out_dir=args.out, write_blend=False,
                            console=console, cache=not args.no_cache)
    else:
        from kit.run.folders import incomplete_runs

        for _folder, why in incomplete_runs(args.runs or "runs"):  # listed, never silently left out
            console.print(f"[yellow]not in the report:[/] {escape(why)}")
        recipe = default_recipe(root=args.runs or "runs", dataset=args.dataset or "",
                                path=Path(args.ensembles) / "all-runs.toml")
        outcome = run_blend(recipe, dataset=args.dataset, out_dir=args.out or DEFAULT_REPORT_DIR, write_blend=False,
                            console=console, title="Runs report", cache=not args.no_cache)
    console.print(f"\nwrote {outcome.out_dir / REPORT_MD} and {outcome.out_dir / REPORT_HTML}")
    _reused(outcome.reused)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=None, help="runs root (default: the recipe's runs.root, else runs)")
    p.add_argument("--dataset", default=None, help="dataset folder with sample_submission.csv (and train.csv)")
    p.add_argument("--out", default=None, help="output folder (default ensembles/<name>/)")
    p.add_argument("--ensembles", default=ENSEMBLES_DIR, help=f"where recipes live (default {ENSEMBLES_DIR})")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute every fit, figure and plot (default: reuse those stored for identical inputs)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("blend", help="blend runs by a recipe: submission.csv, blend.json and the AUC report")
    p.add_argument("recipe", metavar="RECIPE_OR_NAME", help="ensembles/<name>.toml by name, or a path")
    _common(p)
    p.set_defaults(func=cmd_blend)
    p = sub.add_parser("report", help="AUC report: of an ensemble (NAME) or of every latest run (no NAME)")
    p.add_argument("recipe", metavar="RECIPE_OR_NAME", nargs="?", default=None)
    _common(p)
    p.set_defaults(func=cmd_report)
