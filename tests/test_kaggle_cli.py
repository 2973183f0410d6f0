"""The real `kaggle` command (a subprocess) against the emulator in its realistic mode: the user's
path push -> status -> output -> submit -> submissions, and the other calls the CLI makes
(kernels list/files/pull -m/delete, competitions list/files/download/leaderboard, datasets
list/files, quota). The CLI sets no timeouts, so stalls and rate-limit spells stay off here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.kaggle_support import (
    COMPETITION,
    QUICK_REALISM,
    env_without_kaggle,
    quick_kernel_dir,
    start_emulator,
    write_credentials,
)

from kit.kaggle.emulator import ApiError

KAGGLE = str(Path(sys.executable).with_name("kaggle"))
USER = "kit-user"
DATASET = "melanoma-synth"
VISIBLE_WAIT_S = 30
LAG_S = 2.0


@pytest.fixture()
def cli(tmp_path: Path):
    """(run, emulator): run(*args, ok=True) runs `kaggle ARGS` against an emulator and returns its stdout."""
    (tmp_path / "datasets" / DATASET).mkdir(parents=True)
    (tmp_path / "datasets" / DATASET / "train.csv").write_text("image_name,target\nISIC_1,0\n")
    emulator = start_emulator(tmp_path, realism=replace(QUICK_REALISM, lag_s=LAG_S, submission_lag_s=0.5))
    env = {**env_without_kaggle(), **emulator.client_env(),
           "KAGGLE_CONFIG_DIR": str(write_credentials(tmp_path / "creds"))}

    def run(*args: str, ok: bool = True) -> str:
        proc = subprocess.run([KAGGLE, *args], env=env, capture_output=True, text=True, timeout=60)
        if ok:
            assert proc.returncode == 0, f"kaggle {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout + (proc.stderr if not ok else "")

    yield run, emulator
    emulator.stop()


def _until(run, *args: str) -> str:
    """The output of `kaggle ARGS` once it succeeds (Kaggle lags behind writes for a moment)."""
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while True:
        out = run(*args, ok=False)
        if "403" not in out and "not found" not in out.lower() and "denied" not in out:
            return out
        assert time.monotonic() < deadline, out
        time.sleep(0.3)


def test_the_kaggle_cli_drives_the_emulator_end_to_end(cli, tmp_path: Path) -> None:
    run, emulator = cli
    folder = quick_kernel_dir(tmp_path / "k", "quick-cli", datasets=[f"kit/{DATASET}"])
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    meta.update(keywords=["gpu"], enable_internet=False)
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    assert "Kernel version 1 successfully pushed" in run("kernels", "push", "-p", str(folder))
    ref = f"{USER}/quick-cli"
    with pytest.raises(ApiError) as lagging:  # kaggle.com's read-after-write lag (the CLI may start too late to see it)
        emulator.kernel_status({"userName": USER, "kernelSlug": "quick-cli"})
    assert lagging.value.status in (403, 404)
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while "COMPLETE" not in (out := _until(run, "kernels", "status", ref)):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    out_dir = tmp_path / "out"
    run("kernels", "output", ref, "-p", str(out_dir))
    assert (out_dir / "test_pred.csv").is_file() and (out_dir / "quick-cli.log").is_file()
    assert "test_pred.csv" in run("kernels", "files", ref)
    assert ref in run("kernels", "list", "--mine")
    pulled = tmp_path / "pulled"
    run("kernels", "pull", "-m", ref, "-p", str(pulled))
    back = json.loads((pulled / "kernel-metadata.json").read_text())
    for key in ("id", "is_private", "enable_tpu", "enable_gpu", "enable_internet", "machine_shape", "dataset_sources",
                "competition_sources", "kernel_sources", "model_sources", "keywords"):
        assert back[key] == meta[key], key

    sample = tmp_path / "competition" / "sample_submission.csv"
    assert "Successfully submitted" in run("competitions", "submit", "-c", COMPETITION, "-f", str(sample),
                                           "-m", "cli run")
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while "complete" not in (out := run("competitions", "submissions", "-c", COMPETITION)).lower():
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    assert "cli run" in out
    assert USER in run("competitions", "leaderboard", COMPETITION, "-s")

    assert COMPETITION in run("competitions", "list")
    files = run("competitions", "files", COMPETITION)
    assert "sample_submission.csv" in files and "solution.csv" not in files
    run("competitions", "download", COMPETITION, "-p", str(tmp_path / "dl"))
    with zipfile.ZipFile(tmp_path / "dl" / f"{COMPETITION}.zip") as archive:
        assert "sample_submission.csv" in archive.namelist() and "solution.csv" not in archive.namelist()
    assert f"kit/{DATASET}" in run("datasets", "list")
    assert "train.csv" in run("datasets", "files", f"kit/{DATASET}")
    quota = run("quota")
    assert "TPU" in quota and "20.00h" in quota

    run("kernels", "delete", ref, "-y")
    assert "Permission 'kernels.get' was denied" in run("kernels", "status", ref, ok=False)
    assert emulator.stats()["versions"] == 1 and emulator.stats()["submissions"] == 1
