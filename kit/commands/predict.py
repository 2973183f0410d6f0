"""`kit predict IMAGE_OR_FOLDER... [--ensemble NAME | --run RUN]`: P(malignant) for each lesion image.

In:  image files and/or folders (JPEG or PNG, any size or colour mode), the source of models: ``--ensemble
     NAME`` (``ensembles/NAME/blend.json`` from `kit blend`), or ``--run`` (a run folder, ``<experiment>/v<N>``
     or an experiment name = its latest run). Neither: the ``demo`` ensemble if it has been blended, else the
     most recently finished run under ``--runs``.
Out: a table (image, probability of malignancy, spread across fold models) on stdout; ``--csv`` / ``--json``
     files written atomically; one ``error: FILE: ...`` line on stderr per unreadable file. Exit 0 when every
     image was predicted, 1 when any failed (the others are still predicted and written), 2 on a usage error.

Heavy imports (TensorFlow, Keras) happen only when the command runs, so ``kit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

PROBABILITY_DIGITS = 4
EXIT_SOME_FAILED = 1


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{PROBABILITY_DIGITS}f}"


def _short_path(path: str) -> str:
    """A path as short as it can be said: relative to the working folder when it lies below it."""
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


def cmd_predict(args: argparse.Namespace) -> int:
    from kit.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up chatter and retracing warnings are not for users
    from rich import box
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from kit.console import console
    from kit.data.images import find_images
    from kit.errors import KitError
    from kit.predict import (
        compare_with_baseline,
        predict,
        resolve_source,
        total_steps,
        write_results_csv,
        write_results_json,
    )

    files, problems = find_images(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        raise KitError("no images to predict (give JPEG/PNG files or folders holding them)")
    source = resolve_source(args.ensemble, args.run, runs_root=args.runs, ensembles_root=args.ensembles)
    console.print(f"predicting {len(files)} image(s) with {source.label}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    with progress:
        task = progress.add_task("loading models", total=total_steps(source, len(files)))

        def tick(what: str, done: int) -> None:
            progress.update(task, description=what, advance=done)

        frame = predict(files, source, tick, fit=args.fit)

    table = Table(title=f"P(malignant) - {source.label}", caption="folds: the fold models' raw outputs",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)  # no side borders: a repository-relative path fits in 80 columns
    table.add_column("image", overflow="fold")  # folds only when a path is wider than the terminal allows
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("folds min-max", justify="right", no_wrap=True)
    table.add_column("folds sd", justify="right", no_wrap=True)
    for row in frame.itertuples(index=False):
        shown = _short_path(row.image)
        if row.error:
            table.add_row(shown, "[red]error[/]", "-", "-")
        else:
            table.add_row(shown, _fmt(row.probability), f"{_fmt(row.fold_min)}-{_fmt(row.fold_max)}",
                          _fmt(row.fold_std))
    console.print(table)
    comparison = compare_with_baseline(source, args.runs)
    if comparison is not None:
        style = "green" if comparison.beats else "yellow"
        console.print(f"[{style}]{'note' if not comparison.beats else 'baseline'}:[/] {comparison.sentence()}")
    failed = frame[frame["error"] != ""]
    for message in failed["error"]:
        print(f"error: {message}", file=sys.stderr)
    if args.csv:
        write_results_csv(frame, args.csv)
        console.print(f"written {args.csv}")
    if args.json:
        write_results_json(frame, source, args.json, fit=args.fit)
        console.print(f"written {args.json}")
    if len(failed) or problems:
        console.print(f"{len(frame) - len(failed)} predicted, {len(failed) + len(problems)} failed")
        return EXIT_SOME_FAILED
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="probability that lesion images are malignant (from an ensemble or a run)",
        description="Predict P(malignant) for JPEG/PNG images with the trained fold models, the kernel's own "
                    "preprocessing and TTA, and the ensemble's learned blend and calibration. Default source: "
                    "the 'demo' ensemble if blended, else the most recently finished run.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of JPEG/PNG")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ensemble", default=None, metavar="NAME",
                       help="saved blend ensembles/NAME/blend.json (or a path to a blend.json)")
    which.add_argument("--run", default=None, metavar="RUN_DIR_OR_EXPERIMENT",
                       help="a run folder, <experiment>/v<N>, or an experiment name (its latest run)")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the results as CSV")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--fit", choices=("crop", "squash"), default="crop",
                   help="non-square images: centre square crop (default; as `kit data import` builds datasets) "
                        "or squash the whole image to a square")
    p.add_argument("--runs", default="runs", help="runs root (default runs)")
    p.add_argument("--ensembles", default="ensembles", help="ensembles root (default ensembles)")
    p.set_defaults(func=cmd_predict)
