"""`make dryrun` from a fresh clone, end to end, and docs/dryrun.md's paste-safe block.

The clone is the repository's files as git would check them out (tracked plus new, unignored ones) in a
temporary folder, with the shared .venv linked in; `make dryrun` runs there with the tiny dry-run recipe
(32 px synthetic data, a one-stage CNN, one epoch, two folds) and kaggle.com's windows shrunk, so the real
emulator, the real `kaggle` client and a real TensorFlow kernel take about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.kaggle_support import FAST_ENV, TINY_EXPERIMENT, env_without_kaggle

from kit.errors import KitError
from kit.kaggle.dryrun import OWNER_MARK, DryRun, prepare_home, shown

REPO = Path(__file__).resolve().parents[1]
QUICK_EMULATOR = ("--lag-s=0.4", "--submission-lag-s=0.4", "--new-script-s=0.2", "--external-session-s=1",
                  "--score-delay=0.2")
SYNTH = ["--train", "48", "--test", "16", "--size", "32", "--shards", "4", "--seed", "3"]
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def fresh_clone(target: Path) -> Path:
    """The files a clone of this working tree holds, copied to `target`, with .venv linked."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    return target


def test_make_dryrun_runs_end_to_end_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    env = {**env_without_kaggle(), **FAST_ENV, **ONE_THREAD, "PYTHONPATH": str(clone)}
    env.pop("KIT_LEDGER", None)
    env.pop("KIT_PREFLIGHT", None)
    python = str(REPO / ".venv" / "bin" / "python")
    subprocess.run([python, "-m", "kit.cli", "data", "synth", "data/synth-tiny", *SYNTH], cwd=clone, env=env,
                   check=True, capture_output=True)
    (clone / "experiments" / "dryrun-tiny.toml").write_text(TINY_EXPERIMENT.format(
        name="dryrun-tiny", tag="dryrun", dataset="kit-user/synth-tiny", data_extra="", train_extra="", extra=""))
    args = " ".join(["--experiment experiments/dryrun-tiny.toml --data data/synth-tiny",
                     *(f"--emulator-arg={a}" for a in QUICK_EMULATOR)])
    # -o: the shared .venv is installed already; a copied setup.py is newer than its stamp
    proc = subprocess.run(["make", "-o", ".venv/.installed", "dryrun", f"DRYRUN_ARGS={args}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    plan = DryRun(experiment="experiments/dryrun-tiny.toml", data="data/synth-tiny",
                  port=int(re.search(r"on http://127\.0\.0\.1:(\d+)", out).group(1)))
    for command in plan.steps():  # each step printed as the command to paste, in order
        assert f"$ {shown(command)}\n" in out
    positions = [out.index(f"$ {shown(c)}\n") for c in plan.steps()]
    assert positions == sorted(positions)
    home = clone / ".kit" / "dryrun"
    assert stat.S_IMODE((home / "kaggle.json").stat().st_mode) == 0o600
    ledger = json.loads((home / "ledger.json").read_text())
    record = ledger["submissions"][-1]
    assert record["status"] == "COMPLETE" and f"public score {record['public_score']}" in out
    assert "Dry run complete. The figures, and why:" in out and "unset KAGGLE_API_ENVIRONMENT HTTP_PROXY" in out
    pid = int((home / "emulator.pid").read_text())
    assert f"$ kill {pid}" in out
    with pytest.raises(ProcessLookupError):  # the emulator is gone
        os.kill(pid, 0)
    assert (home / "runs" / "dryrun-tiny" / "v1" / "manifest.json").is_file()
    assert not (clone / "runs").exists() and not (clone / ".kit" / "ledger.json").exists()  # the user's own: untouched
    assert not (clone / "ensembles" / "dryrun").exists()


def test_the_docs_paste_block_is_the_dry_runs_commands_one_per_line() -> None:
    text = (REPO / "docs" / "dryrun.md").read_text()
    block = text.split("## The same by hand", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    plan = DryRun(port=8765)
    emulator = f"{shown(plan.emulator_command())} > {plan.home}/emulator.log 2>&1 &"
    for line in [emulator, *plan.env_lines(), *(shown(c) for c in plan.steps())]:
        assert line in block, line
    assert "kill $(cat .kit/dryrun/emulator.pid)" in block and any(line.startswith("unset ") for line in block)
    assert not any("#" in line for line in block)  # nothing hides behind a comment
    assert all(not line.startswith("kit ") for line in block)  # no bare `kit`: .venv needs no activating
    assert "make dryrun" in text


def test_the_dry_run_empties_only_a_folder_it_made(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(KitError, match="was not made by the dry run"):
        prepare_home(foreign)
    assert (foreign / "keep.txt").exists()
    home = tmp_path / "dry"
    prepare_home(home)
    (home / "old").write_text("from the last dry run")
    prepare_home(home)
    assert sorted(p.name for p in home.iterdir()) == sorted([OWNER_MARK, "kaggle.json"])
    assert json.loads((home / "kaggle.json").read_text())["username"] == "kit-user"
    assert sys.platform == "win32" or stat.S_IMODE((home / "kaggle.json").stat().st_mode) == 0o600
