"""`kit baseline [--data DIR] [--like EXP.toml] [--runs DIR]`: the floor run every model must beat.

In:  a dataset folder of competition TFRecords and the experiment whose folds, image size and file globs to
     copy (``--like``, default the demo's MobileNet experiment), or ``--folds`` / ``--fold-seed`` / ``--size``.
Out: ``<runs>/baseline/v<N>/`` (oof.csv, test_pred.csv, test_pred_folds.csv, manifest.json with
     ``"role": "baseline"``, run.json), see `kit.run.baseline`; one line with its OOF AUC and per-fold AUCs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

DEFAULT_LIKE = "experiments/demo-mobilenet.toml"


def cmd_baseline(args: argparse.Namespace) -> int:
    import json

    from kit.config import load_experiment
    from kit.console import console
    from kit.run.baseline import run_baseline
    from kit.run.experiment import dataset_dir

    like = load_experiment(args.like)
    data = dataclasses.replace(like.data)
    if args.folds:
        data = dataclasses.replace(data, folds=args.folds)
    if args.fold_seed is not None:
        data = dataclasses.replace(data, fold_seed=args.fold_seed)
    if args.size:
        data = dataclasses.replace(data, image_size=args.size)
    like = dataclasses.replace(like, data=data)
    out = run_baseline(like, dataset_dir(like, args.data), Path(args.runs), metadata=not args.no_metadata)
    manifest = json.loads((out / "manifest.json").read_text())
    folds = ", ".join(f"{f['auc']:.3f}" for f in manifest["folds"])
    console.print(f"[bold]baseline[/]: OOF AUC {manifest['oof_auc']:.4f} (folds {folds}; colour/texture"
                  f"{'' if args.no_metadata else ' + metadata'} logistic regression) -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="fit the colour/texture + metadata logistic-regression floor run")
    p.add_argument("--data", default=None, help="dataset folder (default: data.dataset of --like when a folder)")
    p.add_argument("--like", default=DEFAULT_LIKE, help=f"experiment whose folds/size/globs to copy ({DEFAULT_LIKE})")
    p.add_argument("--folds", type=int, default=0, help="override data.folds")
    p.add_argument("--fold-seed", type=int, default=None, help="override data.fold_seed")
    p.add_argument("--size", type=int, default=0, help="override data.image_size (px the statistics are taken at)")
    p.add_argument("--runs", default="runs", help="runs root (default runs)")
    p.add_argument("--no-metadata", action="store_true", help="image statistics only")
    p.set_defaults(func=cmd_baseline)
