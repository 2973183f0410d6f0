"""`kit data synth` and `kit data import`: write a competition-format dataset folder.

In:  command-line arguments (see `register`). Out: the dataset folder (layout in `kit.data.tfrecords`), a
progress bar while images are written, a per-shard balance table, exit code 0. Bad input -> KitError.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from kit.console import console

if TYPE_CHECKING:
    from rich.progress import Progress

    from kit.data.tfrecords import DatasetSummary

SYNTH_DEFAULTS = {"train": 1000, "test": 400, "size": 128, "shards": 10, "seed": 42, "malignant_rate": 0.1}
IMPORT_DEFAULTS = {"test_fraction": 0.2, "shards": 10, "seed": 42}
TF_LOG_LEVEL_VAR, TF_LOG_LEVEL_WARNINGS = "TF_CPP_MIN_LOG_LEVEL", "1"


def _quiet_tensorflow() -> None:
    """TensorFlow's start-up notices (oneDNN, CPU features, absl) are noise here; the user can still override
    the log level with TF_CPP_MIN_LOG_LEVEL."""
    from kit.quiet import quiet_tensorflow

    os.environ.setdefault(TF_LOG_LEVEL_VAR, TF_LOG_LEVEL_WARNINGS)
    quiet_tensorflow()


def _progress(total: int, label: str) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )
    progress.add_task(label, total=total)
    return progress


def _advance(progress: Progress) -> Callable[[], None]:
    task = progress.task_ids[0]
    return lambda: progress.advance(task)


def _report(summary: DatasetSummary) -> None:
    table = Table(title=escape(str(summary.out)), title_justify="left")
    for column in ("split", "shard", "images", "patients", "malignant", "malignant %"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, balance in (("train", summary.train), ("test", summary.test)):
        for shard, row in balance.iterrows():
            table.add_row(split, str(shard), str(int(row["images"])), str(int(row["patients"])),
                          str(int(row["malignant"])), f"{100 * row['malignant_share']:.1f}")
    console.print(table)
    empty = [int(s) for s in summary.train.index[summary.train["malignant"] == 0]]
    if empty:
        console.print(f"[yellow]warning[/]: train file(s) {empty} hold no malignant image; folds made of them "
                      "cannot be scored by AUC (use fewer --shards or more images)")
    n_train, n_test = int(summary.train["images"].sum()), int(summary.test["images"].sum())
    console.print(f"wrote {escape(str(summary.out))}: {n_train} train images in {len(summary.train)} file(s), "
                  f"{n_test} test images in {len(summary.test)} file(s), train/test/sample_submission/solution CSVs")


def cmd_synth(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from kit.data.synth import SynthSpec, check_spec, write_synth

    spec = SynthSpec(n_train=args.train, n_test=args.test, size=args.size, shards=args.shards,
                     test_shards=args.test_shards, seed=args.seed, malignant_rate=args.malignant_rate)
    check_spec(spec)
    _quiet_tensorflow()
    with _progress(spec.n_train + spec.n_test, "synth images") as progress:
        summary = write_synth(Path(args.out), spec, args.force, _advance(progress))
    _report(summary)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    _quiet_tensorflow()  # before kit.data.importer, which imports TensorFlow (kit.data.images)
    from kit.data.importer import ImportSpec, check_spec, find_images, import_dataset, read_labels

    spec = ImportSpec(size=args.size, test_fraction=args.test_fraction, shards=args.shards,
                      test_shards=args.test_shards, seed=args.seed)
    check_spec(spec)
    _quiet_tensorflow()
    n_images = len(find_images(read_labels(args.labels), args.images, args.labels))  # fail fast, before the bar
    with _progress(n_images, "import images") as progress:
        summary = import_dataset(args.labels, args.images, Path(args.out), spec, args.force, _advance(progress))
    _report(summary)
    return 0


def _common(parser: argparse.ArgumentParser, shards: int, seed: int) -> None:
    parser.add_argument("--shards", type=int, default=shards, help=f"train TFRecord files (default {shards})")
    parser.add_argument("--test-shards", type=int, default=0,
                        help="test TFRecord files (default 0 = about the size of a train file)")
    parser.add_argument("--seed", type=int, default=seed, help=f"seed; same seed, same bytes (default {seed})")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `kit data synth` and `kit data import`."""
    data = subparsers.add_parser("data", help="make competition-format datasets (synthetic or from real images)")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    d = SYNTH_DEFAULTS
    synth = sub.add_parser("synth", help="write a synthetic dataset with a learnable malignant signal")
    synth.add_argument("out", metavar="OUT", help="output folder (created; must be new or empty unless --force)")
    synth.add_argument("--train", type=int, default=d["train"], help=f"train images (default {d['train']})")
    synth.add_argument("--test", type=int, default=d["test"], help=f"test images (default {d['test']})")
    synth.add_argument("--size", type=int, default=d["size"], help=f"image side in pixels (default {d['size']})")
    synth.add_argument("--malignant-rate", type=float, default=d["malignant_rate"],
                       help=f"share of malignant images (default {d['malignant_rate']})")
    _common(synth, d["shards"], d["seed"])
    synth.set_defaults(func=cmd_synth)

    d = IMPORT_DEFAULTS
    imp = sub.add_parser("import", help="convert real images and a labels CSV into the competition format")
    imp.add_argument("labels", metavar="LABELS_CSV", help="CSV with image_name,target (+ optional columns)")
    imp.add_argument("images", metavar="IMAGES_DIR", help="folder with the images (JPEG/PNG/...)")
    imp.add_argument("out", metavar="OUT", help="output folder (created; must be new or empty unless --force)")
    imp.add_argument("--size", type=int, required=True, help="output image side in pixels (centre crop + resize)")
    imp.add_argument("--test-fraction", type=float, default=d["test_fraction"],
                     help=f"share of images held out as the test set (default {d['test_fraction']})")
    _common(imp, d["shards"], d["seed"])
    imp.set_defaults(func=cmd_import)
