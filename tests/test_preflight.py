"""`kit preflight` and the gate in `kit push`: the exact kernel rehearsed on the target's simulated topology
with tiny data in the experiment's schema; a diverging recipe is refused before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.cli import main
from kit.console import console
from kit.run.preflight import preflight_batch

TINY_TOML = """
name = "pf-tiny"
[kaggle]
accelerator = "NvidiaTeslaT4"
format = "{fmt}"
[data]
dataset = "someone/melanoma-32"
external = "someone/external-32"
external_labels = "train.csv"
image_size = 64
folds = 3
metadata = true
[augment]
ops = ["dihedral", "affine", "color"]
[model]
backbone = "scratch"
weights = "imagenet"
head = "diagnosis"
[model.scratch]
stages = 2
width = 8
[train]
epochs = 3
batch_size = 8
lr = {lr}
warmup_epochs = 0.0
tta = 1
tta_dihedral = false
"""


def experiment(tmp_path: Path, lr: float = 1e-3, fmt: str = "script") -> Path:
    path = tmp_path / f"pf-{fmt}-{lr:g}.toml"
    path.write_text(TINY_TOML.format(lr=lr, fmt=fmt))
    return path


def _one_result(capsys: pytest.CaptureFixture[str]) -> str:
    """The one result printed, its wrapped lines joined; it is wrapped at spaces within the console's width."""
    out = capsys.readouterr().out
    assert all(len(line) <= console.width for line in out.splitlines()), out
    text = " ".join(out.split())
    assert text.count("preflight ") == 1 and text.startswith("preflight pf-tiny passed"), text
    return text


def test_preflight_passes_on_the_gpu_rehearsal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preflight", str(experiment(tmp_path))]) == 0
    out = _one_result(capsys)
    assert ("2-device MirroredStrategy (gpu x2, mixed_float16), folds 0, 1 of 3 (--all-folds for every fold), "
            "every output valid") in out


def test_all_folds_rehearses_every_fold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preflight", str(experiment(tmp_path)), "--all-folds"]) == 0
    assert "(gpu x2, mixed_float16), 3 folds, every output valid" in _one_result(capsys)


def test_preflight_passes_on_the_cpu_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One device: the rehearsal trains 2 images a step (at 1, TensorFlow's oneDNN backward of the scratch CNN's
    strided 1x1 shortcut conv crashes the kernel with a segfault)."""
    assert preflight_batch("") == 2 and preflight_batch("gpu") == preflight_batch("tpu") == 1
    assert main(["preflight", str(experiment(tmp_path)), "--accelerator", "none"]) == 0
    assert "every output valid" in _one_result(capsys)


def test_preflight_folds_are_the_first_two_of_the_run() -> None:
    """Fold 0 compiles, fold 1 restarts; the rest repeat fold 1's code, so only --all-folds runs them."""
    from kernels.config import from_dict
    from kit.run.preflight import preflight_folds, preflight_overrides

    five = from_dict({"name": "five", "data": {"folds": 5}})
    assert preflight_folds(five) == [0, 1] and preflight_folds(five, all_folds=True) == [0, 1, 2, 3, 4]
    chosen = from_dict({"name": "chosen", "data": {"folds": 5, "run_folds": [3, 4, 1]}})
    assert preflight_folds(chosen) == [3, 4] and preflight_folds(chosen, all_folds=True) == [3, 4, 1]
    assert preflight_overrides(chosen, "tpu")["data"]["run_folds"] == [3, 4]


def test_push_refuses_a_diverging_recipe_before_sending(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The gate runs after push's cheap checks (credentials, sources, ledger) pass, so this push has an emulator
    with the experiment's datasets to talk to; the preflight still stops it before anything is sent."""
    make, ledger = world
    emulator = make()
    for name in ("melanoma-32", "external-32"):  # someone/<name> resolves to <datasets root>/<name>
        (tmp_path / "datasets" / name).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("KIT_PREFLIGHT", "1")  # the suite turns the gate off; this test is about the gate
    code = main(["push", str(experiment(tmp_path, lr=1000.0)), "--accelerator", "NvidiaTeslaT4",
                 "--ledger", str(ledger.path), "--build", str(tmp_path / "build")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "preflight pf-tiny (NvidiaTeslaT4, 2-device MirroredStrategy)" in err[0] and "loss" in err[0]
    assert "fold 0, epoch 1, step" in err[0]
    assert emulator.stats()["versions"] == 0  # nothing was sent
    assert not ledger.read()["experiments"]  # nothing recorded


def test_preflight_cache_dir_order() -> None:
    """KIT_CACHE_DIR, else $XDG_CACHE_HOME/kit, else ~/.cache/kit; the JAX cache is its jax/ folder."""
    from kit.run.preflight import preflight_cache_dir

    assert preflight_cache_dir({"KIT_CACHE_DIR": "/a", "XDG_CACHE_HOME": "/b"}) == Path("/a/jax")
    assert preflight_cache_dir({"XDG_CACHE_HOME": "/b"}) == Path("/b/kit/jax")
    assert preflight_cache_dir({}) == Path("~/.cache/kit/jax").expanduser()


def test_preflight_loads_package_weights_where_they_are_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """EfficientNet-Lite0's ImageNet weights are an installed package: the rehearsal converts and loads them
    in the kernel (the cache file appears) instead of falling back to weights = none."""
    from kernels.config import from_dict
    from kit.run.preflight import preflight_weights

    assert preflight_weights(from_dict({"name": "b0", "model": {"backbone": "efficientnet_b0"}})) == "none"
    assert preflight_weights(from_dict({"name": "l0", "model": {"backbone": "efficientnet_lite0",
                                                                 "weights": "none"}})) == "none"
    monkeypatch.setenv("KIT_WEIGHTS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "lite.toml"
    path.write_text(TINY_TOML.format(lr=1e-3, fmt="script").replace('backbone = "scratch"',
                                                                     'backbone = "efficientnet_lite0"'))
    assert main(["preflight", str(path), "--accelerator", "none"]) == 0
    out = capsys.readouterr().out
    assert "preflight pf-tiny passed" in out and "weights imagenet)" in out, out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["efficientnet-lite0-57934424-notop-v1.weights.h5"]
