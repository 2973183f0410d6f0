"""The flow between the Kaggle commands: cheap checks before the preflight, and every stop saying what is next.

- a push without credentials, and a push the ledger refuses as unchanged, stop with one line before any
  preflight: counted by TensorFlow never being imported (the preflight cannot run without it), in a real
  `kit` process;
- `kit status` names the next command for finished, pulled and failed runs (quick kernels on the emulator);
- Ctrl-C (a real SIGINT) in `kit status --wait` says the kernel keeps running and which command carries on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.kaggle_support import ctrl_c_works, env_without_kaggle, quick_rendered

from kernels.config import from_dict
from kit.cli import main as kit_main
from kit.kaggle.ledger import Ledger
from kit.kaggle.push import push_one
from kit.kaggle.status import next_steps, wait_until_done
from kit.render.kernel import render_experiment

REPO = Path(__file__).resolve().parents[1]
SHAPE = "TpuV5E8"
PROBE = ("import sys\nfrom kit.cli import main\ncode = main(sys.argv[1:])\n"
         "print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')\nsys.exit(code)\n")
TINY = {"name": "cheap", "data": {"dataset": "kit-user/tiny", "image_size": 32, "folds": 2},
        "model": {"backbone": "scratch", "weights": "none"}, "train": {"epochs": 1}}
SIGINT_WAIT_S = 90.0


def _probe(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`kit ARGS` in a fresh process that reports whether TensorFlow was imported (i.e. a preflight ran)."""
    env = {**env, "PYTHONPATH": str(REPO), "KIT_PREFLIGHT": "1"}
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _toml(folder: Path) -> Path:
    path = folder / "cheap.toml"
    path.write_text('name = "cheap"\n[data]\ndataset = "kit-user/tiny"\nimage_size = 32\nfolds = 2\n'
                    '[model]\nbackbone = "scratch"\nweights = "none"\n[train]\nepochs = 1\n')
    return path


def test_credential_less_push_fails_in_one_line_before_any_preflight(tmp_path: Path) -> None:
    empty = tmp_path / "home"
    empty.mkdir()
    env = {**env_without_kaggle(), "HOME": str(empty), "KAGGLE_CONFIG_DIR": str(empty)}
    proc = _probe(["push", str(_toml(tmp_path))], env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Kaggle credentials found")
    assert "TF-NOT-IMPORTED" in proc.stdout and "[kit] preflight" not in proc.stdout
    assert not (tmp_path / "build").exists()  # nothing rendered either


def test_unchanged_push_is_refused_before_the_preflight(world, tmp_path: Path) -> None:
    make, ledger = world
    make()
    (tmp_path / "datasets" / "tiny").mkdir(parents=True, exist_ok=True)  # the emulator's datasets root
    build = tmp_path / "build"
    kernel = render_experiment(from_dict(TINY), "kit-user", out_root=build)
    with ledger.transaction() as data:  # what an earlier push of the same config left
        data["experiments"]["cheap"] = {"kernel": kernel.kernel_id, "pending": None, "versions": [{
            "version": 1, "content_hash": kernel.content_hash, "body_sha256": "", "accelerator": SHAPE,
            "pushed_at": "2026-01-01T00:00:00Z", "status": "COMPLETE", "failure": "", "checked_at": None,
            "run_dir": None}]}
    env = {**os.environ, "KIT_LEDGER": str(ledger.path)}
    proc = _probe(["push", str(_toml(tmp_path)), "--build", str(build)], env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: cheap: unchanged since v1 (COMPLETE); --force pushes it again"
    assert "TF-NOT-IMPORTED" in proc.stdout


def _rows(status: str, pulled: str = "", name: str = "x") -> dict:
    return {"experiment": name, "status": status, "pulled": pulled}


def test_next_steps_name_the_command_for_each_kind_of_run() -> None:
    lines = next_steps([_rows("RUNNING", name="a"), _rows("COMPLETE", name="b"),
                        _rows("COMPLETE", "runs/c/v1", name="c"), _rows("ERROR", name="d")])
    assert lines[0].startswith("still going on Kaggle (a): `kit status --wait`")
    assert lines[1].startswith("finished (b): `kit pull`")
    assert lines[2].startswith("pulled (c): `kit blend NAME`")
    assert lines[3].startswith("failed (d):") and "`kit preflight EXP`" in lines[3] and "`kit push EXP`" in lines[3]
    assert next_steps([]) == []


def _text(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_kit_status_names_the_next_command(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    make, ledger = world
    make()
    monkeypatch.setenv("KIT_LEDGER", str(ledger.path))
    monkeypatch.chdir(tmp_path)
    from kit.kaggle.client import connect

    client = connect()
    push_one(client, ledger, quick_rendered(tmp_path / "b", "quick-ok"), SHAPE)
    push_one(client, ledger, quick_rendered(tmp_path / "b", "quick-boom", fail="boom"), SHAPE)
    wait_until_done(client, ledger, timeout_s=60)
    assert kit_main(["status"]) == 0
    out = _text(capsys)
    assert "next: finished (quick-ok): `kit pull` downloads" in out
    assert "next: failed (quick-boom):" in out
    assert kit_main(["pull", "--runs", str(tmp_path / "runs")]) == 2  # the failed run is named, the other pulled
    assert (tmp_path / "runs" / "quick-ok" / "v1").is_dir()
    capsys.readouterr()
    assert kit_main(["status"]) == 0
    assert "next: pulled (quick-ok): `kit blend NAME`" in _text(capsys)


def test_interrupted_wait_says_the_kernel_keeps_running_and_what_carries_on(world, tmp_path: Path) -> None:
    make, ledger = world
    make()
    from kit.kaggle.client import connect

    push_one(connect(), ledger, quick_rendered(tmp_path / "b", "quick-slow", sleep_s=60), SHAPE)
    env = {**os.environ, "KIT_LEDGER": str(ledger.path), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "status", "--wait"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_works)
    deadline = time.monotonic() + SIGINT_WAIT_S
    while time.monotonic() < deadline:  # the wait loop has polled once: the ledger says when it checked
        version = json.loads(Path(ledger.path).read_text())["experiments"]["quick-slow"]["versions"][-1]
        if version.get("checked_at"):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("kit status --wait never polled")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = " ".join(err.split())
    assert line.startswith("error: interrupted: kit stopped waiting, but the kernels (quick-slow) keep running on "
                           "Kaggle; `kit status --wait` carries on")
    assert Ledger(ledger.path).read()["experiments"]["quick-slow"]["versions"][-1]["status"] in ("QUEUED", "RUNNING")
