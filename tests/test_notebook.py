"""The notebook form: valid nbformat, the same kernel code as the script, run by a real Jupyter kernel.

The slow test renders one tiny experiment both ways, runs the script with the local backend and
pushes the notebook through the Kaggle emulator with the real `kaggle` client (the emulator runs it
with nbclient + ipykernel), pulls its outputs, and compares the predictions: identical for the same seed.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from kernels.config import from_dict, to_dict
from kernels.contracts import OOF_FILE, TEST_PRED_FILE, read_manifest
from kit.cli import main as kit_main
from kit.data.synth import SynthSpec, write_synth
from kit.kaggle.emulator import Emulator, EmulatorSettings, Realism
from kit.render.kernel import render_experiment
from kit.render.notebook import STAGE_SETTINGS, render_notebook
from kit.render.source import MODULE_ORDER, STAGES, load_modules
from kit.run.local import run_kernel

OWNER = "kit-user"
DATASET = "melanoma-32x32"
KAGGLE_CLI = str(Path(sys.executable).with_name("kaggle"))
RUN_WAIT_S = 240
# kaggle.com's behaviours, minus what the real CLI (no timeouts, no retries) cannot ride out and the
# in-process status polling below would meet: stalls, rate-limit spells, the read-after-write lag.
CLI_REALISM = Realism(stall_rate=0.0, throttle_rate=0.0, lag_s=0.0)
# A tiny from-scratch experiment. parallel_calls = 1 keeps the training input order fixed, so two
# runs with the same seed give bit-identical predictions (more parallelism reorders examples).
TINY = {
    "name": "nb-parity",
    "description": "tiny parity run",
    "seed": 7,
    "backend": "tensorflow",
    "kaggle": {"accelerator": "none", "internet": False, "format": "notebook"},
    "data": {"dataset": f"kit/{DATASET}", "image_size": 32, "folds": 2, "run_folds": [0], "shuffle_buffer": 64,
             "parallel_calls": 1},
    "augment": {"ops": ["dihedral"]},
    "model": {"backbone": "scratch", "weights": "none", "scratch": {"stages": 2, "width": 8}},
    "train": {"epochs": 1, "batch_size": 16, "tta": 0, "tta_dihedral": False},
}


@pytest.fixture(scope="module")
def exp():
    return from_dict(TINY, "TINY")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / DATASET
    write_synth(out, SynthSpec(n_train=64, n_test=24, size=32, shards=4, seed=5))
    return out


def _cells(text: str) -> list:
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    return nb.cells


def _settings_rows(markdown: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| `"):
            key, value, default = (c.strip() for c in line.strip("|").split(" | "))
            rows[key.strip("`")] = (value, default)
    return rows


def test_notebook_is_valid_and_holds_exactly_the_kernel_modules(tmp_path: Path, exp) -> None:
    kernel = render_experiment(exp, owner=OWNER, out_root=tmp_path)
    assert kernel.code_file.name == "kernel.ipynb" and not (kernel.directory / "kernel.py").exists()
    meta = json.loads((kernel.directory / "kernel-metadata.json").read_text())
    assert meta["kernel_type"] == "notebook" and meta["code_file"] == "kernel.ipynb"
    assert meta["dataset_sources"] == [f"kit/{DATASET}"]
    text = kernel.code_file.read_text()
    cells = _cells(text)
    assert len({c.id for c in cells}) == len(cells), "cell ids are unique (nbformat would rewrite duplicates)"
    codes = [c.source for c in cells if c.cell_type == "code"]
    sources = load_modules()
    for source in sources:  # every module verbatim, once, in the inline order
        assert sum(source.code.rstrip("\n") in code for code in codes) == 1, source.name
    at = [next(i for i, code in enumerate(codes) if s.code.rstrip("\n") in code) for s in sources]
    assert at == sorted(at) and [s.name for s in sources] == list(MODULE_ORDER)
    for code in codes:  # self-contained: never imports the toolkit
        tree = ast.parse(code)
        imported = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"kit", "kernels"}
    # CONFIG comes first, from a readable JSON text, and equals the experiment
    namespace: dict = {}
    exec(compile(codes[0], "config-cell", "exec"), namespace)  # noqa: S102 - our own rendered cell
    assert namespace["CONFIG"] == to_dict(exp) and from_dict(namespace["CONFIG"]) == exp
    assert codes[0].startswith("from __future__ import annotations")
    assert "select_backend(CONFIG)" in codes[1] and "kernels/bootstrap.py" in codes[1]
    assert codes[-2].strip() == "RUN_MANIFEST = kernel_main(CONFIG)"
    # a markdown cell before each stage's code, with the settings that matter to it
    stage_cells = [c for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [c.source.splitlines()[0] for c in stage_cells] == [f"## {i}. {t}" for i, (t, _, _) in
                                                                enumerate(STAGES, start=1)]
    assert set(STAGE_SETTINGS) == {t for t, _, _ in STAGES}
    for cell, (_, description, modules) in zip(stage_cells, STAGES, strict=True):
        assert description in cell.source and all(f"`kernels/{m}.py`" in cell.source for m in modules)
        nxt = cells[cells.index(cell) + 1]
        assert nxt.cell_type == "code"
    data_rows = _settings_rows(stage_cells[3].source)
    assert data_rows["data.image_size"] == ("`32`", "`256`")  # changed: the default is shown
    assert data_rows["data.fold_seed"] == ("`42`", "")  # unchanged: no default column
    model_rows = _settings_rows(stage_cells[4].source)
    assert model_rows["model.scratch.width"][0] == "`8`" and "model.metadata_units" not in model_rows
    assert render_notebook(exp) == text, "rendering is deterministic"


def test_hostile_strings_stay_data(exp) -> None:
    nasty = 'x\'\'\'"""\n); import os; os.system("echo pwned") #\\ | `tick` \u00e9'
    exp2 = dataclasses.replace(exp, description=nasty, tags=(nasty, '"""'))
    cells = _cells(render_notebook(exp2))
    code = next(c.source for c in cells if c.cell_type == "code")
    namespace: dict = {}
    exec(compile(code, "config-cell", "exec"), namespace)  # noqa: S102 - our own rendered cell
    assert namespace["CONFIG"] == to_dict(exp2)
    title = cells[0].source
    assert "\n); import os" not in title  # the description is shown on one line


def test_render_cli_notebook_format(tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('name = "cli-notebook"\n[model]\nbackbone = "scratch"\nweights = "none"\n')
    assert kit_main(["render", str(toml), "--format", "notebook", "--out", str(tmp_path / "b"), "--owner", "a"]) == 0
    kernel = tmp_path / "b" / "kit-cli-notebook"
    assert json.loads((kernel / "kernel-metadata.json").read_text())["kernel_type"] == "notebook"
    _cells((kernel / "kernel.ipynb").read_text())


def _write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_runner_streams_output_and_blocks_the_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "not-for-kernels")
    good = _write_notebook(
        tmp_path / "good.ipynb",
        "import os, sys\nprint('first', os.getcwd())\nprint('to stderr', file=sys.stderr)",
        "import json\nsecrets = sorted(k for k in os.environ if k.startswith('KAGGLE_'))\n"
        "open('done.json', 'w').write(json.dumps([os.environ['KIT_OUTPUT_DIR'], secrets]))\n6 * 7",
    )
    lines: list[str] = []
    result = run_kernel(good, tmp_path / "out", on_line=lines.append)
    assert result.returncode == 0, result.log_path.read_text()
    assert f"first {tmp_path / 'out'}" in lines and "to stderr" in lines and "42" in lines
    assert lines[-1] == "[kit] notebook finished: every cell ran"
    out_dir, secrets = json.loads((tmp_path / "out" / "done.json").read_text())
    assert out_dir == str(tmp_path / "out") and secrets == []
    bad = _write_notebook(tmp_path / "bad.ipynb", "print('before')", "import kit", "print('never')")
    executed = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, "-m", "kit.run.notebook_runner", str(bad), "--executed", str(executed)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "before" in proc.stdout and "never" not in proc.stdout and "a kernel must be self-contained" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("[kit] notebook failed in cell 1 (")
    cells = nbformat.read(str(executed), as_version=4).cells  # the executed notebook keeps what ran
    assert cells[0].outputs[0].text == "before\n" and cells[1].outputs[0].ename == "ModuleNotFoundError"
    assert cells[2].outputs == []
    proc = subprocess.run([sys.executable, "-m", "kit.run.notebook_runner", str(tmp_path / "missing.ipynb")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'missing.ipynb'}: notebook not found"


def _cli(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([KAGGLE_CLI, *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_script_and_notebook_give_the_same_predictions_and_the_emulator_runs_notebooks(
    tmp_path: Path, exp, synth_dir: Path
) -> None:
    """Script: local backend. Notebook: pushed to the emulator with the real kaggle client, run there
    (at the same time as the script), pulled back. Same seed, same predictions."""
    script = render_experiment(exp, owner=OWNER, out_root=tmp_path / "build", fmt="script")
    notebook = render_experiment(exp, owner=OWNER, out_root=tmp_path / "build-nb", fmt="notebook")
    settings = EmulatorSettings(state_dir=tmp_path / "emu", competition_dir=synth_dir,
                                datasets_root=synth_dir.parent, workers=1)
    config = tmp_path / "kaggle-config"
    config.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    with Emulator(settings, realism=CLI_REALISM) as emulator:
        env.update(emulator.client_env(), KAGGLE_CONFIG_DIR=str(config), KAGGLE_USERNAME=OWNER, KAGGLE_KEY="k")
        pushed = _cli(["kernels", "push", "-p", str(notebook.directory)], env)
        assert "error" not in pushed.lower(), pushed
        input_root = tmp_path / "input"  # the script sees the dataset where Kaggle would mount it
        input_root.mkdir()
        (input_root / DATASET).symlink_to(synth_dir, target_is_directory=True)
        local = run_kernel(script.code_file, tmp_path / "script-out", input_root=str(input_root))
        assert local.returncode == 0, local.log_path.read_text()[-3000:]
        slug = notebook.slug
        deadline = time.monotonic() + RUN_WAIT_S
        while (status := emulator.kernel_status({"userName": OWNER, "kernelSlug": slug})["status"]) in (
            "QUEUED", "RUNNING") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "COMPLETE" in _cli(["kernels", "status", f"{OWNER}/{slug}"], env), status
        pulled = tmp_path / "pulled"
        _cli(["kernels", "output", f"{OWNER}/{slug}", "-p", str(pulled)], env)
    log = (pulled / f"{slug}.log").read_text()
    assert "[kit] running notebook" in log and "[kit] notebook finished: every cell ran" in log
    assert read_manifest(pulled / "manifest.json")["config"] == to_dict(exp)
    for name in (OOF_FILE, TEST_PRED_FILE):
        a = pd.read_csv(tmp_path / "script-out" / name)
        b = pd.read_csv(pulled / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(pd.read_csv(pulled / TEST_PRED_FILE)) == 24
