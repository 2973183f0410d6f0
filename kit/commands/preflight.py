"""`kit preflight EXP... [--accelerator ACC] [--format F] [--all-folds]`: rehearse the exact kernel on this CPU first.

In:  experiment TOMLs (a sweep expands), the target accelerator (default: the config's).
Out: one line per experiment: passed (exit 0), or the reason it failed (one line, exit 2). See kit.run.preflight.
"""

from __future__ import annotations

import argparse

from kernels.accelerators import ACCELERATOR_HELP


def cmd_preflight(args: argparse.Namespace) -> int:
    from kit.config import load_experiments
    from kit.run.preflight import run_preflight

    experiments = [exp for path in args.experiments for exp in load_experiments(path)]
    for result in run_preflight(experiments, args.accelerator, args.format, args.all_folds):
        print(result.line, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preflight", help="rehearse the kernel on the target's simulated topology (tiny data)")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment TOML file(s)")
    p.add_argument("--accelerator", default=None, help=ACCELERATOR_HELP)
    p.add_argument("--format", choices=("script", "notebook"), default=None, help="kernel form (default: config's)")
    p.add_argument("--all-folds", action="store_true",
                   help="rehearse every fold (default: the first two, which run every code path of the rest)")
    p.set_defaults(func=cmd_preflight)
