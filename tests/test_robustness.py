"""Nothing half-done, nothing silent: each case of issue 14 fed to the real command line.

Every test feeds a bad input or an interruption and checks the one-line error, the exit code and that
nothing was lost or left half-written. The interruption test trains a tiny real TensorFlow kernel
(32 px, 2 folds, 1 epoch) through `kit run`, stops it with Ctrl-C after fold 0 and resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.kaggle_support import ctrl_c_works

from kernels.contracts import COMPLETE_KEY, FOLDS_PLANNED_KEY, MANIFEST_FILE, OOF_FILE, read_manifest
from kit.config import load_experiment
from kit.data.synth import SynthSpec, write_synth
from kit.run.experiment import resume_folder
from kit.run.folders import RUN_JSON, incomplete_runs, list_runs

REPO = Path(__file__).resolve().parents[1]
TINY = SynthSpec(n_train=96, n_test=24, size=32, shards=4, seed=5, malignant_rate=0.25)
SAMPLE_IMAGE = REPO / "data" / "isic-uda1" / "images" / "ISIC_0000000.jpg"
TINY_TOML = """\
name = "tiny-resume"
tags = ["robust"]
seed = 3
[data]
dataset = "{data}"
image_size = 32
folds = 2
shuffle_buffer = 32
[augment]
ops = ["dihedral"]
[model]
backbone = "scratch"
weights = "none"
[model.scratch]
stages = 2
width = 8
[train]
epochs = 1
batch_size = 16
lr = 2e-3
warmup_epochs = 0.0
verbose = 0
"""


def kit(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`kit ARGS` in a pipe, as in a log (80 columns: no COLUMNS from the caller's terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "kit.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**env, "PYTHONPATH": str(REPO)})


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("robust")
    write_synth(work / "data", TINY)
    (work / "tiny.toml").write_text(TINY_TOML.format(data=work / "data"))
    return work


def test_ctrl_c_after_fold_0_then_resume(tiny_exp: Path) -> None:
    work = tiny_exp
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit.cli", "run", "tiny.toml", "-v"], cwd=work, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=ctrl_c_works,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "fold 0 done" in line:
            proc.send_signal(signal.SIGINT)  # Ctrl-C reaches kit, not the kernel (its own session)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().startswith("error: tiny-resume: interrupted; fold(s) 0 finished are kept in")
    assert "--resume" in err and len(err.strip().splitlines()) == 1

    folder = work / "runs" / "tiny-resume" / "v1"
    manifest = read_manifest(folder / MANIFEST_FILE)  # valid, but not marked complete
    assert manifest[COMPLETE_KEY] is False and manifest[FOLDS_PLANNED_KEY] == [0, 1]
    assert [f["fold"] for f in manifest["folds"]] == [0] and not (folder / RUN_JSON).exists()
    assert list_runs(work / "runs") == []
    (where, why), = incomplete_runs(work / "runs")
    assert where == folder and "fold(s) 0 of 2 finished, 1 never ran" in why
    fold0 = pd.read_csv(folder / OOF_FILE)
    weights0 = sha(folder / "fold0.weights.h5")

    # Incomplete runs are refused with one line by blend and predict, listed by report.
    (work / "ensembles").mkdir()
    (work / "ensembles" / "robust.toml").write_text('[runs]\ntags = ["robust"]\n')
    line = one_error_line(kit("blend", "robust", cwd=work))
    assert "tiny-resume/v1: incomplete" in line and "--resume" in line
    line = one_error_line(kit("predict", SAMPLE_IMAGE, "--run", "runs/tiny-resume/v1", cwd=work))
    assert "incomplete: fold(s) 0 of 2 finished" in line

    resumed = kit("run", "tiny.toml", "--resume", cwd=work)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout and not (work / "runs" / "tiny-resume" / "v2").exists()
    manifest = read_manifest(folder / MANIFEST_FILE)
    assert manifest[COMPLETE_KEY] is True and [f["fold"] for f in manifest["folds"]] == [0, 1]
    assert sha(folder / "fold0.weights.h5") == weights0  # fold 0 was not trained again
    oof = pd.read_csv(folder / OOF_FILE)
    pd.testing.assert_frame_equal(oof[oof["fold"] == 0].reset_index(drop=True), fold0)
    assert sorted(oof["fold"].unique()) == [0, 1] and json.loads((folder / RUN_JSON).read_text())["version"] == 1
    assert [r.run_id for r in list_runs(work / "runs")] == ["tiny-resume/v1"]
    log = (folder / "kernel.log").read_text()
    assert "fold 0 done" in log and "resuming: fold(s) [0] already finished" in log

    assert resume_folder(work / "runs", load_experiment(work / "tiny.toml", validate_names=False)) is None

    # In a pipe, the run printed one line per epoch (fold, epoch, loss, val AUC, time, ETA) as it came.
    printed = " ".join(resumed.stdout.split())  # a pipe is 80 columns: long lines wrap at spaces
    assert printed.count("fold 1 epoch 1/1 loss") == 1
    assert re.search(r"fold 1 epoch 1/1 loss \S+ val_loss \S+ auc \S+ val_auc \S+ lr \S+ \S+ s eta ", printed), printed

    # Issue 14, cases 7 and 9: kit predict in a pipe: no TensorFlow banner or retracing warning, the table
    # fits 80 columns and the image path is whole.
    (work / "img").mkdir()
    (work / "img" / "ISIC_0000000.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    predicted = kit("predict", "img", "--run", "tiny-resume", cwd=work)
    assert predicted.returncode == 0 and predicted.stderr == "", predicted.stderr
    assert max(len(ln) for ln in predicted.stdout.splitlines()) <= 80
    assert any(ln.startswith("img/ISIC_0000000.jpg ") for ln in predicted.stdout.splitlines()), predicted.stdout


def test_run_timeout_must_be_positive(tiny_exp: Path) -> None:
    result = kit("run", "tiny.toml", "--timeout", "-5", cwd=tiny_exp)
    assert result.returncode == 2
    assert one_error_line(result) == "error: --timeout -5: expected seconds > 0 (or 0 for no limit)"


def _copy_data(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_tfrecord_named_before_training(tiny_exp: Path, tmp_path: Path) -> None:
    """Issue 14, case 3: a truncated train file is named (file and record) in one line, before any epoch."""
    data = _copy_data(tiny_exp / "data", tmp_path / "data")
    victim = sorted(data.glob("train*.tfrec"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (tmp_path / "tiny.toml").write_text(TINY_TOML.format(data=data))
    result = kit("run", "tiny.toml", cwd=tmp_path)
    assert result.returncode == 1
    errors = [ln for ln in result.stdout.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"{victim}: record " in errors[0] and "corrupt or truncated" in errors[0]
    log = next((tmp_path / "runs" / "tiny-resume").glob("v*/kernel.log")).read_text()
    assert "fold 0:" not in log  # stopped before the first fold started training


def test_check_records_names_file_and_record(tiny_exp: Path, tmp_path: Path) -> None:
    from kernels.data import DataRecordError, check_records

    data = _copy_data(tiny_exp / "data", tmp_path / "data")
    files = sorted(str(p) for p in data.glob("*.tfrec"))
    check_records(files)  # intact
    victim = Path(files[0])
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a record: its CRC fails
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataRecordError, match=rf"^{victim}: record \d+ \(from 0\) cannot be read"):
        check_records(files)
    renamed = victim.with_name(victim.name.replace(victim.stem.split("-")[-1], "999"))
    Path(files[1]).rename(renamed)
    with pytest.raises(DataRecordError, match=r"holds \d+ records, its name says 999"):
        check_records([str(renamed)])


def test_more_folds_than_train_files_refused_before_start(tiny_exp: Path, tmp_path: Path) -> None:
    (tmp_path / "many.toml").write_text(TINY_TOML.format(data=tiny_exp / "data").replace("folds = 2", "folds = 5"))
    result = kit("run", "many.toml", cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "runs").exists()
    assert result.stdout.strip() == (f"error: many.toml: data.folds: got 5, expected at most 4 (folds are whole "
                                     f"files: 4 train files match 'train*.tfrec' in {tiny_exp / 'data'})")


@pytest.fixture()
def two_runs(tmp_path: Path) -> Path:
    from helpers.blend_fixtures import experiment_config, make_cohort, make_run, signal_preds

    cohort = make_cohort(n=60, n_test=12)
    for i, (name, tags) in enumerate((("demo-a", ["demo"]), ("demo-b", ["demo"]), ("dryrun-synth", ["dryrun"]))):
        oof, test = signal_preds(cohort, 1.0, seed=i)
        make_run(tmp_path / "runs", name, cohort, oof, test, 1, experiment_config(name, tags=tags))
    return tmp_path


def test_damaged_manifest_refuses_the_blend_and_is_listed(two_runs: Path) -> None:
    """Issue 14, case 4: one of the blended runs' manifest.json damaged -> one line naming it, exit 2,
    no half-written ensemble; `kit report` lists it."""
    manifest = two_runs / "runs" / "demo-b" / "v1" / MANIFEST_FILE
    manifest.write_text(manifest.read_text()[:100])
    (two_runs / "ensembles").mkdir()
    (two_runs / "ensembles" / "d.toml").write_text('[runs]\nglobs = ["demo-*"]\n')
    line = one_error_line(kit("blend", "d", cwd=two_runs))
    assert "runs/demo-b/v1: incomplete (manifest.json: not valid JSON" in line and "exclude it" in line
    assert not (two_runs / "ensembles" / "d").exists()
    (two_runs / "ensembles" / "d.toml").write_text('[runs]\nglobs = ["demo-*"]\nexclude_globs = ["demo-b"]\n')
    result = kit("blend", "d", cwd=two_runs)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = json.loads((two_runs / "ensembles" / "d" / "blend.json").read_text())["runs"]
    assert [r["run_id"] for r in runs] == ["demo-a/v1"]
    report = kit("report", "--out", "rep", cwd=two_runs)
    assert report.returncode == 0 and "not in the report: runs/demo-b/v1: incomplete (manifest.json" in report.stdout
    status = kit("status", "--offline", cwd=two_runs)  # no ledger yet: the incomplete folder is still named
    assert status.returncode == 0 and "incomplete run: runs/demo-b/v1: incomplete (manifest.json" in status.stdout


def test_demo_recipe_takes_only_demo_runs(two_runs: Path) -> None:
    """Issue 14, case 5: after `make demo`, a pulled dry-run run does not join the demo blend, and a
    recipe can set runs aside by tag."""
    from helpers.blend_fixtures import make_baseline_run, make_cohort

    from kit.blend.recipe import load_recipe
    from kit.run.folders import select_runs

    make_baseline_run(two_runs / "runs", make_cohort(n=60, n_test=12), 0.5)  # `make demo` fits it first
    demo = load_recipe("demo", REPO / "ensembles")
    ids = [r.run_id for r in select_runs(two_runs / "runs", demo.names, demo.tags, demo.globs, demo.latest)]
    assert sorted(ids) == ["baseline/v1", "demo-a/v1", "demo-b/v1"]  # the demo's own runs and its baseline
    dry = load_recipe("dryrun", REPO / "ensembles")
    assert [r.run_id for r in select_runs(two_runs / "runs", dry.names, dry.tags, dry.globs)] == ["dryrun-synth/v1"]
    (two_runs / "r.toml").write_text('[runs]\nglobs = ["*"]\nexclude_tags = ["dryrun"]\n')
    mixed = load_recipe(str(two_runs / "r.toml"))
    assert [r.run_id for r in select_runs(two_runs / "runs", mixed.names, mixed.tags, mixed.globs)] == [
        "baseline/v1", "demo-a/v1", "demo-b/v1"]


def test_make_clean_keeps_the_ledger_and_pulled_runs(tmp_path: Path) -> None:
    """Issue 14, case 6: `make clean` removes only what can be rebuilt; runs/ and .kit/ need an explicit
    target whose help says what it deletes."""
    import shutil

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    keep = ["runs/x/v1/oof.csv", ".kit/ledger.json", "data/isic-uda1/labels.csv", "ensembles/demo.toml",
            "ensembles/demo/submission.csv", ".venv/lib/__pycache__/a.pyc"]
    gone = ["build/kernels/k.py", "data/synth-128/train00-1.tfrec", "data/uda-128/test.csv", "bench/results.json",
            "kit/__pycache__/a.pyc"]
    for name in keep + gone:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")

    def make(target: str) -> None:
        subprocess.run(["make", "-s", target], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    make("clean")
    assert all((tmp_path / n).exists() for n in keep) and not any((tmp_path / n).exists() for n in gone)
    make("clean-runs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ensembles" / "demo").exists()
    assert (tmp_path / ".kit" / "ledger.json").exists() and (tmp_path / "ensembles" / "demo.toml").exists()
    make("clean-all")
    assert not (tmp_path / ".kit").exists() and (tmp_path / "data" / "isic-uda1" / "labels.csv").exists()
    helps = subprocess.run(["make", "-s", "help"], cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert "DELETES runs/" in helps and "DELETES .kit/" in helps


def test_non_utf8_submission_and_bad_port_are_one_line(tmp_path: Path) -> None:
    """Issue 14, case 8: a non-UTF-8 submission CSV and `kit emulator --port -1`."""
    (tmp_path / "sub.csv").write_bytes("image_name,target\nISIC_\xe9,0.5\n".encode("latin-1"))
    (tmp_path / "sample.csv").write_text("image_name,target\nISIC_1,0\n")
    result = kit("submit", "sub.csv", "--sample", "sample.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == "error: sub.csv: not UTF-8 text (byte 23: invalid continuation byte); save it as UTF-8"
    for port in ("-1", "65536"):
        result = kit("emulator", "--port", port, cwd=tmp_path)
        assert result.returncode == 2
        assert one_error_line(result) == f"error: --port {port}: expected 0..65535 (0 = any free port)"
    assert not (tmp_path / ".kit").exists()


def test_checks_that_need_the_data(tiny_exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14, case 2: image size larger than the stored images, and more folds than train files, are
    one-line config errors from the kernel before any fold trains."""
    from kernels.config import ConfigError, from_dict
    from kernels.data import discover_files
    from kernels.main import check_data
    from kit.config import read_toml

    monkeypatch.setenv("KIT_DATA_DIR", str(tiny_exp / "data"))
    base = read_toml(tiny_exp / "tiny.toml")
    exp = from_dict(base)
    check_data(exp, discover_files(exp))  # fine as it is
    big = from_dict({**base, "data": {**base["data"], "image_size": 64}})
    with pytest.raises(ConfigError, match=r"^CONFIG: data.image_size: got 64, expected at most 32 \(the stored"):
        check_data(big, discover_files(big))
    many = from_dict({**base, "data": {**base["data"], "folds": 6}})
    with pytest.raises(ConfigError, match=r"^CONFIG: data.folds: got 6, expected at most 4 \(folds are whole files"):
        check_data(many, discover_files(many))


def test_sigterm_stops_the_kernel_with_kit_run(tiny_exp: Path, tmp_path: Path) -> None:
    """`kill` of `kit run` (SIGTERM) stops its kernel too (it runs in its own session), with the same one
    line as Ctrl-C, instead of leaving it training alone."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML.format(data=tiny_exp / "data").replace("epochs = 1", "epochs = 50"))
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "run", "tiny.toml", "-v"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "fold 0:" in line:  # the kernel is up and about to train
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; fold(s) none finished" in err
    folder = next((tmp_path / "runs" / "tiny-resume").glob("v*")).resolve()

    def kernels_in(path: Path) -> list[str]:  # processes whose working folder is the run folder: the kernel
        found = []
        for proc_dir in Path("/proc").iterdir():
            try:
                if proc_dir.name.isdigit() and Path(os.readlink(proc_dir / "cwd")) == path:
                    found.append(proc_dir.name)
            except OSError:
                continue
        return found

    import time

    deadline = time.monotonic() + 10
    while kernels_in(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernels_in(folder) == []
