"""train.feature_cache (kernels/features.py): the head trained on a frozen backbone's cached features is the
model's own head (same predictions as the uncached passes, before and after training), the config refuses
augmentations that cannot be cached, and the kernel runs its folds on the cache. Real TensorFlow, 32 px."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernels.config import ConfigError, feature_cache_on, from_dict, to_dict
from kernels.contracts import MANIFEST_FILE, read_manifest, read_oof
from kernels.data import META_DIM, discover_files, eval_full_batches, fold_splits
from kernels.features import bank_inputs, bank_predict_tta, bank_train_dataset, feature_bank
from kernels.main import fold_files, kernel_main
from kernels.models import build_model, feature_model, head_model
from kernels.strategy import detect_hardware
from kernels.train import compile_model, predict_tta
from kit.data.synth import SynthSpec, write_synth

TINY = SynthSpec(n_train=64, n_test=16, size=32, shards=4, seed=5, malignant_rate=0.25)
SAME = 1e-5  # float32 round-off between one model and its two halves


def cached_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A frozen EfficientNet-Lite0 (random weights: nothing to convert) at 32 px, dihedral views only."""
    config: dict[str, Any] = {
        "name": "cached",
        "seed": 3,
        "data": {"dataset": "synthetic", "image_size": 32, "folds": 2, "metadata": True, "shades_of_gray": 6},
        "augment": {"ops": ["dihedral"]},
        "model": {"backbone": "efficientnet_lite0", "weights": "none", "freeze_backbone": True, "dropout": 0.2},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_factor": 3, "lr": 1e-2, "verbose": 0, "tta_dihedral": True,
                  "feature_cache": "on"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synth(out, TINY)
    return out


def test_the_head_on_cached_features_predicts_as_the_model(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_DATA_DIR", str(tiny_data))
    exp = from_dict(cached_config())
    hw = detect_hardware(exp)
    files = discover_files(exp)
    train_files, val_files, _ = fold_files(files, *fold_splits(len(files.train), 2, exp.data.fold_seed)[0])
    model = build_model(exp, hw, META_DIM)
    bank = feature_bank(feature_model(model), [(files.train, True), (files.test, False)], exp, hw)
    assert bank.features.shape[:2] == (8, TINY.n_train + TINY.n_test)
    head = head_model(model, exp, META_DIM)
    assert not model.get_layer("core").get_layer("efficientnet_lite0").trainable
    assert {w.path for w in head.trainable_weights} == {w.path for w in model.trainable_weights}

    padding = dataclasses.replace(hw, jit_compile=True)  # evaluation pads its last batch (as on TPU/GPU)
    assert eval_full_batches(padding) and not eval_full_batches(hw)

    def check() -> None:  # plain pass and the 8-view TTA mean, validation and test files, both paths
        for some in (val_files, files.test):
            plain, cached = predict_tta(model, some, exp, hw), bank_predict_tta(head, bank, some, exp, hw)
            assert cached.views == plain.views == 8
            np.testing.assert_allclose(cached.plain, plain.plain, atol=SAME)
            np.testing.assert_allclose(cached.tta, plain.tta, atol=SAME)
            np.testing.assert_allclose(bank_predict_tta(head, bank, some, exp, padding).tta, plain.tta, atol=SAME)
        n, batch = len(bank.indices(val_files)), exp.train.batch_size * exp.train.eval_batch_factor
        weight = np.concatenate([w for *_, w in bank_inputs(bank, val_files, exp, padding, labelled=True)])
        assert n % batch and len(weight) == -(-n // batch) * batch and weight.tolist() == [1.0] * n + [0.0] * (len(weight) - n)

    check()
    compile_model(head, exp, hw, peak_lr=1e-2, steps_per_epoch=4)
    before = [np.array(w) for w in model.get_layer("core").get_layer("head").get_weights()]
    head.fit(bank_train_dataset(bank, train_files, exp, hw), epochs=1, steps_per_epoch=4, verbose=0, shuffle=False)
    after = model.get_layer("core").get_layer("head").get_weights()
    assert not np.allclose(before[0], after[0])  # training the head trained the model's own layer
    check()


@pytest.mark.parametrize(("section", "value", "named"), [
    ("augment", {"ops": ["dihedral", "affine"]}, "affine"),
    ("augment", {"mix": "mixup"}, "augment.mix"),
    ("train", {"tta": 2}, "train.tta"),
    ("model", {"pooling": "gem"}, "model.pooling"),
    ("model", {"freeze_backbone": False}, "model.freeze_backbone"),
])
def test_feature_cache_on_refuses_what_cannot_be_cached(section: str, value: dict, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(cached_config(**{section: value}), "exp.toml")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("exp.toml: train.feature_cache: got 'on'") and named in text
    config = cached_config(**{section: value})
    config["train"]["feature_cache"] = "auto"
    assert not feature_cache_on(from_dict(config))  # "auto" trains uncached instead


def test_feature_cache_auto_and_off() -> None:
    assert feature_cache_on(from_dict(cached_config(train={"feature_cache": "auto"})))
    assert feature_cache_on(from_dict(cached_config(augment={"ops": []}, train={"feature_cache": "auto"})))
    assert not feature_cache_on(from_dict(cached_config(train={"feature_cache": "off"})))
    assert from_dict({"name": "x"}).train.feature_cache == "auto" and not feature_cache_on(from_dict({"name": "x"}))


def test_kernel_trains_its_folds_on_the_cache(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KIT_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path))
    manifest = kernel_main(to_dict(from_dict(cached_config(data={"upsample_malignant": 2}))))
    assert "feature cache: backbone features of 80 images x 8 view(s)" in capsys.readouterr().out
    assert manifest == read_manifest(tmp_path / MANIFEST_FILE) and manifest["complete"]
    assert [f["feature_cache"] for f in manifest["folds"]] == [True, True]
    assert [f["tta_views"] for f in manifest["folds"]] == [8, 8]
    assert len(read_oof(tmp_path / "oof.csv")) == TINY.n_train and (tmp_path / "fold1.weights.h5").exists()
