"""`kit render EXP...`: write build/kernels/<slug>/ (kernel + kernel-metadata.json) for each experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from kernels.accelerators import ACCELERATOR_HELP
from kit.console import console


def cmd_render(args: argparse.Namespace) -> int:
    from kit.config import load_experiments
    from kit.render.kernel import default_owner, render_experiment

    for path in args.experiments:
        for exp in load_experiments(path):
            kernel = render_experiment(
                exp, owner=args.owner or default_owner(), out_root=Path(args.out), fmt=args.format,
                accelerator=args.accelerator,
            )
            console.print(f"rendered [bold]{exp.name}[/] -> {kernel.code_file}  ({kernel.kernel_id})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render experiments into Kaggle kernels (script or notebook)")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment TOML file(s)")
    p.add_argument("--out", default="build/kernels", help="output root (default build/kernels)")
    p.add_argument("--format", choices=("script", "notebook"), default=None,
                   help="kernel form (default: the config's kaggle.format)")
    p.add_argument("--owner", default=None, help="Kaggle user name for the kernel id")
    p.add_argument("--accelerator", default=None, help=ACCELERATOR_HELP)
    p.set_defaults(func=cmd_render)
