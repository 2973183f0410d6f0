"""Experiment configs: TOML -> frozen dataclasses, one-line errors naming file, key and expectation."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.config import ConfigError, Experiment, from_dict, to_dict
from kit.config import expand_sweep, load_experiment, load_experiments

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_frozen(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, 'name = "b0"\n[data]\nimage_size = 384\n'))
    assert isinstance(exp, Experiment)
    assert exp.data.image_size == 384 and exp.data.folds == 5 and exp.train.epochs == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.data.image_size = 256  # type: ignore[misc]
    assert from_dict(to_dict(exp)) == exp  # round trip through the rendered literal


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('name = "x"\nepochs = 3\n', "epochs: unknown key"),
        ('name = "x"\n[train]\nepoch = 3\n', "train.epoch: unknown key"),
        ('name = "x"\n[train]\nepochs = "3"\n', "train.epochs: got '3', expected an integer"),
        ('name = "x"\n[train]\nepochs = -1\n', "train.epochs: got -1, expected an integer >= 1"),
        # issue 14, case 2: values that used to pass and waste a training run
        ('name = "x"\n[train]\nepochs = 0\n', "train.epochs: got 0, expected an integer >= 1"),
        ('name = "x"\n[train]\nlr = inf\n', "train.lr: got inf, expected a finite number"),
        ('name = "x"\n[train]\nlr = nan\n', "train.lr: got nan, expected a finite number"),
        ('name = "x"\n[train]\nweight_decay = -0.1\n', "train.weight_decay: got -0.1, expected a number >= 0"),
        ('name = "x"\n[train]\nfocal_gamma = -2\n', "train.focal_gamma: got -2.0, expected a number >= 0"),
        ('name = "x"\n[train]\nmomentum = 7\n', "train.momentum: got 7.0, expected a number in [0, 1)"),
        ('name = "x"\n[model.scratch]\nse_ratio = -0.25\n', "model.scratch.se_ratio: got -0.25, expected a number in (0, 1]"),
        ('name = "x"\n[model.scratch]\nexpand = 0\n', "model.scratch.expand: got 0, expected an integer >= 1"),
        ('name = "x"\n[augment]\nmix_alpha = inf\n', "augment.mix_alpha: got inf, expected a finite number"),
        ('name = "x"\n[augment]\nops = ["affine"]\n[augment.params.affine]\nrotation = inf\n',
         "augment.params.affine.rotation: got inf, expected a finite number"),
        ('name = "x"\n[data]\nimage_size = 100\n', "data.image_size: got 100, expected a positive multiple of 32"),
        ('name = "x"\n[data]\nfolds = 1\n', "data.folds: got 1, expected at least 2"),
        ('name = "x"\n[model]\nbackbone = "resnet9000"\n', "model.backbone: got 'resnet9000', expected one of"),
        ('name = "x"\n[augment]\nops = ["dihedral", "sparkles"]\n', "augment.ops[1]: got 'sparkles', expected one of"),
        ('name = "x"\n[model]\nhead = "softmax"\n', "model.head: got 'softmax', expected 'sigmoid' | 'diagnosis'"),
        ('name = "x"\n[train]\nlr = 0\n', "train.lr: got 0.0, expected a number > 0"),
        ('name = "x"\n[train]\neval_batch_factor = 0\n', "train.eval_batch_factor: got 0, expected an integer >= 1"),
        ('[train]\nepochs = 1\n', "name: missing"),
        ('name = "x"\n[data]\nrun_folds = [0, 7]\n', "data.run_folds[1]: got 7, expected a fold index in 0..4"),
        ('name = "x"\n[augment]\nops = ["affine"]\n[augment.params.affine]\nspin = 1.0\n', "augment.params.affine.spin"),
        ('name = "x"\n[model.scratch]\nstages = 3\ndepth = [1, 2]\n', "model.scratch.depth"),
        ('name = "x"\n[data\n', "not valid TOML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_experiments(path)
    message = str(err.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_experiments(tmp_path / "nope.toml")


def test_sweep_expands_to_grid(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "sw"\n[sweep]\n"model.backbone" = ["scratch", "efficientnet_b0"]\n"data.image_size" = [128, 256]\n',
    )
    exps = load_experiments(path)
    assert len(exps) == 4
    assert {(e.model.backbone, e.data.image_size) for e in exps} == {
        ("scratch", 128), ("scratch", 256), ("efficientnet_b0", 128), ("efficientnet_b0", 256)
    }
    assert len({e.name for e in exps}) == 4 and all(e.name.startswith("sw--") for e in exps)
    with pytest.raises(ConfigError, match="sweep.model.backbone: expected a non-empty list"):
        expand_sweep({"name": "x", "sweep": {"model.backbone": "scratch"}}, "s.toml")
    with pytest.raises(ConfigError, match="takes one experiment"):
        load_experiment(path)


def test_every_shipped_experiment_is_valid() -> None:
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert files, "the project ships example experiments"
    for path in files:
        assert load_experiments(path)


def test_cli_reports_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n[data]\nimage_size = 100\n')
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "render", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}: data.image_size: got 100, expected a positive multiple of 32"]
    assert not (tmp_path / "out").exists()


def test_unreadable_config_files_are_one_line(tmp_path: Path) -> None:
    """Issue 14, case 8: non-UTF-8 TOML and a folder given as the config."""
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    for path, needle in ((latin, "not UTF-8 text (byte 11"), (tmp_path, "is a folder, expected an experiment TOML")):
        with pytest.raises(ConfigError) as err:
            load_experiments(path)
        assert str(err.value).startswith(str(path)) and needle in str(err.value) and "\n" not in str(err.value)
