"""The real path end to end: `kit push -> status -> pull -> blend -> submit -> submissions` through the real
`kaggle` client against the emulator, which runs the rendered TensorFlow kernels with the local backend.

Tiny kernels (32 px synthetic data, a one-stage from-scratch CNN, 1 epoch, 2 folds) keep each run to
seconds; the emulator runs two at a time. The `kit` commands run in this process (`kit.cli.main`), except
the first push of the interrupted sweep, which is a real `kit` process stopped with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.kaggle_support import (
    FAKE_KEY,
    QUICK_REALISM,
    apply_env,
    client_env,
    ctrl_c_works,
    start_emulator,
    tree_text,
    write_credentials,
)

from kernels.contracts import read_manifest, verify_files
from kit.cli import main as kit_main
from kit.kaggle.emulator import Realism
from kit.kaggle.emulator.faults import FaultConfig, fault_figures
from kit.kaggle.ledger import Ledger

DATASET = "melanoma-synth"
SYNTH = ["--train", "48", "--test", "16", "--size", "32", "--shards", "4", "--seed", "3"]
TINY = """\
name = "{name}"
tags = ["loop"]
seed = 1
[data]
dataset = "kit/{dataset}"
image_size = 32
folds = 2
shuffle_buffer = 64
{data_extra}
[augment]
ops = ["dihedral"]
[model]
backbone = "scratch"
weights = "none"
dropout = 0.0
[model.scratch]
stages = 1
width = 8
[train]
epochs = 1
batch_size = 16
verbose = 0
tta_dihedral = false
{train_extra}
{extra}
"""
ONE_FOLD = {"data_extra": "run_folds = [0]", "train_extra": "save_weights = false"}  # the fault run: cheaper kernels
TWO_FOLDS = {"data_extra": "", "train_extra": ""}
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}  # two kernels share two cores
# The fault run's kaggle.com: the quick realistic mode plus stalled replies, rate-limit spells and a
# session started elsewhere that holds one of the account's two accelerator slots for a while.
FAULT_REALISM = replace(QUICK_REALISM, stall_rate=0.01, throttle_rate=0.01, throttle_s=0.5, external_sessions=1,
                        external_session_s=12.0)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny competition-format dataset (TFRecords, sample_submission.csv, solution.csv), made once."""
    root = tmp_path_factory.mktemp("kaggle-data")
    out = root / DATASET
    assert kit_main(["data", "synth", str(out), *SYNTH]) == 0
    return out


@pytest.fixture()
def workdir(tmp_path: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch):
    """A project folder (cwd) with credentials, a datasets root and a function starting the emulator."""
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / DATASET).symlink_to(synth_data, target_is_directory=True)
    creds = write_credentials(tmp_path / "creds")
    monkeypatch.chdir(work)
    made = []

    def start(faults: FaultConfig | None = None, realism: Realism = QUICK_REALISM, **settings: object):
        emulator = start_emulator(tmp_path, faults, realism, competition_dir=synth_data, workers=2,
                                  kernel_env=ONE_THREAD, **settings)
        made.append(emulator)
        apply_env(monkeypatch, client_env(emulator, creds))
        return emulator

    yield work, start
    for emulator in made:
        emulator.stop(wait_kernels=True)


def _kit(*args: str) -> int:
    return kit_main([str(a) for a in args])


def _assert_no_secret(*roots: Path, text: str = "") -> None:
    for path, data in tree_text(*roots):
        assert FAKE_KEY.encode() not in data, f"the Kaggle key leaked into {path}"
    assert FAKE_KEY not in text


def _assert_pulled_intact(emulator, work: Path, ledger: Ledger) -> int:
    """Every pulled run folder equals the kernel's outputs byte for byte and passes verify_files."""
    intact = 0
    for name, entry in ledger.read()["experiments"].items():
        version = entry["versions"][-1]
        folder = work / "runs" / name / f"v{version['version']}"
        verify_files(folder, read_manifest(folder / "manifest.json"))
        source = emulator.version_dir(entry["kernel"], version["version"]) / "output"
        for path in source.rglob("*"):
            if path.is_file():
                assert (folder / path.relative_to(source)).read_bytes() == path.read_bytes(), path
        record = json.loads((folder / "run.json").read_text())
        assert (record["source"], record["kernel"], record["version"]) == ("kaggle", entry["kernel"],
                                                                          version["version"])
        intact += 1
    return intact


def test_full_loop_push_status_pull_blend_submit(workdir, synth_data: Path, capsys: pytest.CaptureFixture) -> None:
    work, start = workdir
    emulator = start()
    exp = work / "loop.toml"
    exp.write_text(TINY.format(name="loop", dataset=DATASET, extra='[sweep]\n"seed" = [1, 2]', **TWO_FOLDS))
    sample = synth_data / "sample_submission.csv"

    assert _kit("push", exp) == 0
    assert _kit("status", "--wait", "--timeout", "240") == 0
    assert _kit("pull") == 0
    ledger = Ledger(work / ".kit" / "ledger.json")
    assert _assert_pulled_intact(emulator, work, ledger) == 2
    out = capsys.readouterr().out
    assert "pushed loop--seed-1 -> kit-user/kit-loop-seed-1 v1" in out and "COMPLETE" in out

    # Unchanged: a sweep reports its members as skipped; one experiment alone is refused; pulled: no-op.
    assert _kit("push", exp) == 0
    assert capsys.readouterr().out.count("skipped loop") == 2
    single = work / "one.toml"
    single.write_text(TINY.format(name="loop--seed-1", dataset=DATASET, extra="", **TWO_FOLDS))
    assert _kit("push", single) == 2
    assert "unchanged since v1 (COMPLETE); --force pushes it again" in capsys.readouterr().err
    assert _kit("pull") == 0
    assert capsys.readouterr().out.count("already pulled") == 2
    assert emulator.stats()["versions"] == 2

    (work / "ensembles").mkdir()
    (work / "ensembles" / "loop.toml").write_text(
        f'[runs]\nglobs = ["loop*"]\n[method]\nname = "rank_mean"\n[data]\ndataset = "{synth_data}"\n'
    )
    assert _kit("blend", "loop") == 0
    submission = work / "ensembles" / "loop" / "submission.csv"
    assert _kit("submit", submission, "--recipe", "loop", "--sample", sample) == 0
    assert _kit("submissions") == 0
    out = capsys.readouterr().out
    record = ledger.read()["submissions"][0]
    assert record["status"] == "COMPLETE" and float(record["public_score"]) >= 0.0
    assert record["message"].startswith("kit: loop recipe ")
    assert f"ref {record['ref']}: public {record['public_score']}" in out
    # Submitting the same file again is refused (exit 2) before anything is sent.
    assert _kit("submit", submission, "--sample", sample) == 2
    assert emulator.stats()["submissions"] == 1
    _assert_no_secret(work, Path(emulator.state_dir), text=out + capsys.readouterr().out)


def test_fault_run_ten_kernels_interrupted_sweep_resumes(workdir, synth_data: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """10 kernels at a 30 % fault rate plus kaggle.com's behaviours, at a session cap of 2 of which one is
    taken by a session kit did not start; the sweep's first `kit push` is stopped with Ctrl-C and resumed."""
    work, start = workdir
    # Seed 41: among other faults, SaveKernel replies are lost (work done, 500) and must be reconciled.
    emulator = start(FaultConfig.uniform(0.3, seed=41, slow_s=0.1), replace(FAULT_REALISM, seed=41), max_sessions=2)
    sweep = work / "sweep.toml"
    seeds = ", ".join(str(s) for s in range(1, 11))
    sweep.write_text(TINY.format(name="fault", dataset=DATASET, extra=f'[sweep]\n"seed" = [{seeds}]', **ONE_FOLD))
    sample = synth_data / "sample_submission.csv"

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "push", str(sweep), "--concurrency", "2"], cwd=work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_works)
    first_lines: list[str] = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        first_lines.append(line)
        if sum(line.startswith(("pushed ", "reconciled ")) for line in first_lines) == 2:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C while it waits for a free accelerator slot
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(first_lines) + rest
    assert "error: interrupted" in rest
    assert "session cap is reached" in "".join(first_lines) + rest  # it waited for a slot, not stopped
    ledger = Ledger(work / ".kit" / "ledger.json")
    pushed_first = sorted(n for n, e in ledger.read()["experiments"].items() if e["versions"])
    assert len(pushed_first) == 2

    assert _kit("push", sweep) == 0  # resumes from the ledger
    out = capsys.readouterr().out
    assert out.count("skipped fault") == 2
    assert _kit("status", "--wait", "--timeout", "420") == 0
    assert _kit("pull") == 0
    intact = _assert_pulled_intact(emulator, work, ledger)
    for name in sorted(ledger.read()["experiments"]):
        assert _kit("submit", work / "runs" / name / "v1" / "test_pred.csv", "--sample", sample) == 0
    assert _kit("submissions") == 0
    out += capsys.readouterr().out

    data = ledger.read()
    stats = emulator.stats()
    figures = fault_figures(stats)
    figures.update(kernels=len(data["experiments"]), outputs_intact=intact,
                   retries_made=int(data["counters"].get("retries", 0)),
                   reconciled_pushes=int(data["counters"].get("reconciled_pushes", 0)),
                   reconciled_submissions=int(data["counters"].get("reconciled_submissions", 0)),
                   scores_recorded=sum(bool(s["public_score"]) for s in data["submissions"]),
                   lost_outputs=10 - intact, duplicate_versions=stats["identical_versions"] + stats["versions"] - 10)
    print("\nfault run figures:", json.dumps(figures, sort_keys=True))
    assert figures["kernels"] == 10 and intact == 10
    assert stats["versions"] == 10 and stats["identical_versions"] == 0  # no duplicate push
    assert all(len(e["versions"]) == 1 for e in data["experiments"].values())
    assert stats["submissions"] == 10 and stats["duplicate_submissions"] == 0
    assert figures["scores_recorded"] == 10
    assert all(s["status"] == "COMPLETE" for s in data["submissions"])
    assert figures["faults_injected"] >= 20 and figures["retries_made"] > 0
    assert figures["reconciled_pushes"] >= 1 and figures["fault_lost_reply"] >= 2
    # kaggle.com's behaviours met on the way (how many depends on timing: the number of polls varies).
    assert figures.get("fault_throttled", 0) + figures.get("fault_stall", 0) + figures.get("fault_lag", 0) >= 2
    _assert_no_secret(work, Path(emulator.state_dir), text=out + "".join(first_lines) + rest)
