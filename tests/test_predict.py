"""`kit predict`: reproduces the kernel's own test predictions; reads images as users have them; bad files.

One real local run is made for the module (synthetic data from `kit.data.synth`, a tiny from-scratch config
rendered by `kit.render.kernel` and run by `kit.run.local`, one fold, one epoch); every test predicts with its
real fold weights through the real CLI or `kit.predict`.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from kernels.config import Experiment, from_dict
from kernels.contracts import TEST_PRED_FILE, file_digest, read_test_pred
from kernels.schema import feature_spec
from kit.blend.calibrate import Calibration
from kit.blend.methods import METHODS
from kit.blend.saved import BLEND_FILE, BLEND_SCHEMA, apply_saved, reference_quantiles
from kit.cli import main
from kit.data.images import ROUTE_KERNEL, ROUTE_PILLOW, ImageError, decode_route, find_images, read_image
from kit.data.synth import SynthSpec, write_synth
from kit.predict import latest_run, resolve_run, resolve_source
from kit.render.kernel import render_experiment
from kit.run.folders import write_run_record
from kit.run.local import run_kernel

TOLERANCE = 1e-5  # the bound between kit predict and the kernel's test_pred.csv
STORED_SIZE = 64  # synthetic JPEGs are 64 px; the model sees 32 px, so the kernel decodes at DCT ratio 2
MODEL_SIZE = 32
EXPERIMENT = "predict-tiny"
CONFIG = {
    "name": EXPERIMENT,
    "seed": 7,
    "data": {"image_size": MODEL_SIZE, "folds": 2, "run_folds": [1], "shuffle_buffer": 64},
    "augment": {"ops": []},
    "model": {"backbone": "scratch", "weights": "none", "scratch": {"stages": 2, "width": 8}},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.01, "tta": 0, "tta_dihedral": True, "verbose": 0},
    "kaggle": {"accelerator": "none"},
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real local run: synthetic data -> rendered kernel -> runs/<exp>/v1 with run.json."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    write_synth(data, SynthSpec(n_train=64, n_test=24, size=STORED_SIZE, shards=4, seed=5))
    exp = from_dict({**CONFIG, "data": {**CONFIG["data"], "dataset": str(data)}})
    kernel = render_experiment(exp, owner="tester", out_root=root / "build")
    run_dir = root / "runs" / EXPERIMENT / "v1"
    result = run_kernel(kernel.code_file, run_dir, data_dir=str(data))
    assert result.returncode == 0, result.log_path.read_text()[-3000:]
    write_run_record(run_dir, experiment=EXPERIMENT, version=1, source="local", kernel=None,
                     content_hash=kernel.content_hash, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    images = root / "test_images"
    images.mkdir()
    for path in sorted(data.glob("test*.tfrec")):
        for record in tf.data.TFRecordDataset(str(path)):
            example = tf.io.parse_single_example(record, feature_spec(False))
            name = example["image_name"].numpy().decode()
            (images / f"{name}.jpg").write_bytes(example["image"].numpy())
    return {"root": root, "data": data, "run": run_dir, "runs": root / "runs", "images": images}


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return from_dict(CONFIG)


def _predict_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["predict", *args])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- reproducing the kernel


def test_predict_run_reproduces_kernel_test_predictions(tiny_run, tmp_path, capsys):
    out_csv, out_json = tmp_path / "pred.csv", tmp_path / "pred.json"
    code, err = _predict_cli([str(tiny_run["images"]), "--run", str(tiny_run["run"]), "--csv", str(out_csv),
                              "--json", str(out_json)], capsys)
    assert code == 0, err
    kernel = read_test_pred(tiny_run["run"] / TEST_PRED_FILE)
    ours = pd.read_csv(out_csv, dtype={"image_name": str}).merge(kernel, on="image_name", validate="1:1")
    assert len(ours) == len(kernel) == 24
    assert np.abs(ours["probability"] - ours["target"]).max() <= TOLERANCE
    assert ours["target"].std() > 100 * TOLERANCE  # the images really differ, so the match means something
    assert (ours["models"] == 1).all() and (ours["fold_min"] <= ours["fold_max"]).all()
    doc = json.loads(out_json.read_text())
    assert doc["source"] == f"run {EXPERIMENT}/v1" and doc["runs"][0]["folds"] == [1]
    assert len(doc["predictions"]) == 24 and all(p["error"] is None for p in doc["predictions"])


def test_kernel_decode_route_matters(tiny_run, tmp_path, capsys):
    """The same test images re-saved as PNG from Pillow's JPEG decode (the other route) do NOT match the
    kernel to 1e-5: the exact match above comes from decoding plain JPEGs with the kernel's TF path."""
    pngs = tmp_path / "png"
    pngs.mkdir()
    for jpg in sorted(tiny_run["images"].glob("*.jpg"))[:8]:
        Image.open(jpg).convert("RGB").save(pngs / f"{jpg.stem}.png")
    out = tmp_path / "png.csv"
    code, err = _predict_cli([str(pngs), "--run", EXPERIMENT, "--runs", str(tiny_run["runs"]), "--csv", str(out)],
                             capsys)
    assert code == 0, err
    kernel = read_test_pred(tiny_run["run"] / TEST_PRED_FILE)
    merged = pd.read_csv(out, dtype={"image_name": str}).merge(kernel, on="image_name")
    assert len(merged) == 8
    assert np.abs(merged["probability"] - merged["target"]).max() > TOLERANCE


# ---------------------------------------------------------------- images as users have them


def _lesion(height: int = 60, width: int = 80) -> np.ndarray:
    """A smooth, asymmetric RGB test image (so rotations and flips are visible)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 200 - 120 * np.exp(-((x - width * 0.4) ** 2 + (y - height * 0.45) ** 2) / (2 * (width / 6) ** 2))
    g = 150 + 60 * np.sin(x / 9.0)
    b = 120 + 0.8 * y
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _save(array_or_image, path: Path, **kwargs) -> Path:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path, **kwargs)
    return path


def read_image_whole(path: Path, exp: Experiment) -> np.ndarray:
    """read_image without the square crop, to compare whole non-square images."""
    return read_image(path, exp, fit="squash")


def test_non_square_images_are_centre_cropped_by_default(tmp_path, exp):
    rgb = _lesion(60, 81)
    path = _save(rgb, tmp_path / "wide.png")
    np.testing.assert_array_equal(read_image(path, exp), rgb[:, 10:70])  # as `kit data import` crops
    np.testing.assert_array_equal(read_image(_save(rgb.transpose(1, 0, 2), tmp_path / "tall.png"), exp),
                                  rgb.transpose(1, 0, 2)[10:70])
    np.testing.assert_array_equal(read_image(path, exp, fit="squash"), rgb)


def test_plain_rgb_jpeg_uses_the_kernel_decoder(tmp_path, exp):
    path = _save(_lesion(), tmp_path / "plain.jpg", quality=90)
    assert decode_route(Image.open(path)) == ROUTE_KERNEL
    ours = read_image_whole(path, exp)
    kernel = tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy()  # 60 px < 2 x 32: ratio 1
    np.testing.assert_array_equal(ours, kernel)
    pillow = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(pillow.astype(int) - kernel.astype(int)).max() > 0  # the decoders differ: the route matters


def test_odd_image_kinds_read_upright_rgb(tmp_path, exp):
    rgb = _lesion()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)

    np.testing.assert_array_equal(read_image_whole(_save(rgb, tmp_path / "rgb.png"), exp), rgb)
    np.testing.assert_array_equal(read_image_whole(_save(gray, tmp_path / "gray.png"), exp), gray3)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image_whole(_save(sixteen, tmp_path / "gray16.png"), exp), gray3)

    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], axis=0)
    rgba = np.dstack([rgb, alpha])
    composited = np.rint(rgb.astype(np.float64) * alpha[:, :, None] / 255.0)
    got = read_image_whole(_save(rgba, tmp_path / "alpha.png"), exp).astype(np.float64)
    assert np.abs(got - composited).max() <= 1.0  # over black, up to Pillow's rounding
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(read_image_whole(_save(opaque, tmp_path / "opaque.png"), exp), rgb)

    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(read_image_whole(_save(palette, tmp_path / "palette.png"), exp),
                                  np.asarray(palette.convert("RGB")))

    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": store the image turned the other way
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = np.ascontiguousarray(np.rot90(rgb, k=1))
    rotated_png = _save(turned, tmp_path / "exif.png", exif=exif.tobytes())
    np.testing.assert_array_equal(read_image_whole(rotated_png, exp), rgb)
    rotated_jpg = _save(turned, tmp_path / "exif.jpg", exif=exif.tobytes(), quality=95)
    assert decode_route(Image.open(rotated_jpg)) == ROUTE_PILLOW
    upright = read_image_whole(rotated_jpg, exp)
    assert upright.shape == rgb.shape and np.abs(upright.astype(int) - rgb.astype(int)).mean() < 3

    cmyk = _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert decode_route(Image.open(cmyk)) == ROUTE_PILLOW
    got = read_image_whole(cmyk, exp)
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb.astype(int)).mean() < 3

    gray_jpg = _save(gray, tmp_path / "gray.jpg", quality=95)
    got = read_image_whole(gray_jpg, exp)
    assert got.shape == rgb.shape and (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_odd_images_predict_like_their_plain_twins(tiny_run, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    rgb = _lesion(300, 420)  # any size: resized by the kernel's prepare_image
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(rgb, folder / "a_rgb.png")
    _save(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), folder / "b_opaque_alpha.png")
    _save(np.ascontiguousarray(np.rot90(rgb, k=1)), folder / "c_exif_rotated.PNG", exif=exif.tobytes())
    _save(np.repeat(gray[:, :, None], 3, axis=2), folder / "d_gray_as_rgb.png")
    _save(gray, folder / "e_gray.png")
    _save(Image.fromarray(gray.astype(np.uint16) * 257), folder / "f_gray16.png")
    _save(Image.fromarray(rgb).convert("CMYK"), folder / "g_cmyk.jpg", quality=95)
    _save(_lesion(1000, 700), folder / "h_large.JPEG", quality=90)
    _save(np.ascontiguousarray(rgb[:, 60:360]), folder / "i_cropped_twin.png")  # what the default crop sees
    out = tmp_path / "odd.csv"
    code, err = _predict_cli([str(folder), "--run", str(tiny_run["run"]), "--csv", str(out)], capsys)
    assert code == 0, err
    frame = pd.read_csv(out, dtype={"image_name": str}).set_index("image_name")
    assert len(frame) == 9 and frame["probability"].between(0, 1).all()
    p = frame["probability"]
    assert p["a_rgb"] == p["b_opaque_alpha"] == p["c_exif_rotated"] == p["i_cropped_twin"]
    assert p["d_gray_as_rgb"] == p["e_gray"] == p["f_gray16"]


def test_find_images_expands_folders_and_reports_missing(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "A.PNG", "sub/c.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = find_images([tmp_path, tmp_path / "b.jpg", tmp_path / "nope.jpg", tmp_path / "empty"])
    assert [f.path.name for f in files] == ["A.PNG", "b.jpg", "c.jpeg"]  # sorted, recursive, no duplicates
    assert len(problems) == 2 and "nope.jpg" in problems[0] and "empty" in problems[1]


# ---------------------------------------------------------------- bad files


def test_bad_files_get_one_line_errors_and_the_rest_is_predicted(tiny_run, tmp_path, capsys, exp):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(tiny_run["images"].glob("*.jpg"))[:2]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    jpeg = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    mid = len(jpeg) // 2
    (folder / "corrupt.jpg").write_bytes(jpeg[:mid] + b"\xff\x31" + jpeg[mid + 2:])  # an unknown marker: fatal
    buf = io.BytesIO()
    Image.fromarray(_lesion()).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[:200])
    missing = tmp_path / "missing.jpg"
    for bad in ("truncated.jpg", "corrupt.jpg", "text.jpg", "empty.png", "truncated.png"):
        with pytest.raises(ImageError, match=bad.replace(".", r"\.")):
            read_image(folder / bad, exp)

    out = tmp_path / "mixed.csv"
    code, err = _predict_cli([str(folder), str(missing), "--run", str(tiny_run["run"]), "--csv", str(out)], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 6
    for bad in ("truncated.jpg", "corrupt.jpg", "text.jpg", "empty.png", "truncated.png", "missing.jpg"):
        assert sum(bad in line for line in lines) == 1
    frame = pd.read_csv(out, dtype={"image_name": str}, keep_default_na=False)
    assert len(frame) == 7
    ok = frame[frame["error"] == ""]
    assert sorted(ok["image_name"]) == sorted(p.stem for p in good)
    assert pd.to_numeric(ok["probability"]).between(0, 1).all()
    kernel = read_test_pred(tiny_run["run"] / TEST_PRED_FILE).set_index("image_name")["target"]
    for row in ok.itertuples():
        assert abs(float(row.probability) - kernel[row.image_name]) <= TOLERANCE


def test_nothing_to_predict_and_unknown_run_are_usage_errors(tiny_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _predict_cli([str(tmp_path / "empty"), "--runs", str(tiny_run["runs"])], capsys)
    assert code == 2 and "no images to predict" in err
    image = next(tiny_run["images"].glob("*.jpg"))
    code, err = _predict_cli([str(image), "--run", "no-such-experiment", "--runs", str(tiny_run["runs"])], capsys)
    assert code == 2 and "no-such-experiment" in err


# ---------------------------------------------------------------- sources: ensemble, default


def _write_blend(root: Path, run_dir: Path, name: str = "demo") -> dict:
    """A saved two-member rank-mean blend with Platt calibration, in kit.blend.saved's format."""
    test = read_test_pred(run_dir / TEST_PRED_FILE)["target"].to_numpy()
    entry = {"run_id": f"{EXPERIMENT}/v1", "experiment": EXPERIMENT, "version": 1, "folder": str(run_dir),
             "weight": 0.5, "test_sha256": file_digest(run_dir / TEST_PRED_FILE)["sha256"],
             "reference": {"quantiles": reference_quantiles(test), "n": len(test)}}
    method = METHODS["rank_mean"]
    blend = {
        "schema": BLEND_SCHEMA, "name": name, "recipe": f"ensembles/{name}.toml", "recipe_hash": "0" * 64,
        "method": "rank_mean", "params": dict(method.defaults), "transform": method.transform, "link": method.link,
        "weights": [0.5, 0.5], "bias": 0.0, "runs": [entry, dict(entry)],
        "calibration": Calibration("platt", {"a": 3.0, "b": -2.5}).to_json(),
    }
    folder = root / name
    folder.mkdir(parents=True)
    (folder / BLEND_FILE).write_text(json.dumps(blend))
    return blend


def test_ensemble_applies_the_saved_blend_and_calibration(tiny_run, tmp_path, capsys):
    ensembles = tmp_path / "ensembles"
    blend = _write_blend(ensembles, tiny_run["run"])
    images = sorted(tiny_run["images"].glob("*.jpg"))[:6]
    out = tmp_path / "ens.csv"
    code, err = _predict_cli([*map(str, images), "--ensemble", "demo", "--ensembles", str(ensembles),
                              "--runs", str(tiny_run["runs"]), "--csv", str(out)], capsys)
    assert code == 0, err
    frame = pd.read_csv(out, dtype={"image_name": str}).set_index("image_name")
    run_pred = read_test_pred(tiny_run["run"] / TEST_PRED_FILE).set_index("image_name")["target"]
    names = [p.stem for p in images]
    raw = run_pred[names].to_numpy()
    expected = apply_saved(blend, np.column_stack([raw, raw]))
    np.testing.assert_allclose(frame.loc[names, "probability"].to_numpy(), expected, atol=TOLERANCE)
    assert not np.allclose(expected, raw, atol=1e-3)  # blending + calibration really changed the numbers
    assert (frame["models"] == 2).all()


def test_default_source_is_demo_ensemble_else_latest_run(tiny_run, tmp_path):
    ensembles = tmp_path / "ensembles"
    assert resolve_source(runs_root=tiny_run["runs"], ensembles_root=ensembles).label == f"run {EXPERIMENT}/v1"
    assert latest_run(tiny_run["runs"]).folder == tiny_run["run"]
    assert resolve_run(str(tiny_run["runs"] / EXPERIMENT)).folder == tiny_run["run"]  # experiment folder: latest
    assert resolve_run(f"{EXPERIMENT}/v1", tiny_run["runs"]).folder == tiny_run["run"]
    _write_blend(ensembles, tiny_run["run"])
    source = resolve_source(runs_root=tiny_run["runs"], ensembles_root=ensembles)
    assert source.blend is not None and source.label.startswith("ensemble demo")
    assert len(source.members) == 2


def test_ensemble_whose_run_changed_is_refused(tiny_run, tmp_path, capsys):
    ensembles = tmp_path / "ensembles"
    blend = _write_blend(ensembles, tiny_run["run"], name="stale")
    blend["runs"][1]["test_sha256"] = "f" * 64
    (ensembles / "stale" / BLEND_FILE).write_text(json.dumps(blend))
    image = next(tiny_run["images"].glob("*.jpg"))
    code, err = _predict_cli([str(image), "--ensemble", "stale", "--ensembles", str(ensembles),
                              "--runs", str(tiny_run["runs"])], capsys)
    assert code == 2 and "changed since the blend" in err


# ---------------------------------------------------------------- metadata models, diagnosis head, augmented TTA


def _random_weights_run(root: Path, config: dict) -> Path:
    """A run folder with a valid manifest and randomly initialised fold weights (no training needed)."""
    import keras

    from kernels.config import to_dict
    from kernels.contracts import MANIFEST_SCHEMA, WEIGHTS_PATTERN
    from kernels.data import META_DIM
    from kernels.models import build_model, save_model_weights
    from kit.predict import cpu_hardware

    exp = from_dict(config)
    folder = root / exp.name / "v1"
    folder.mkdir(parents=True)
    for fold in range(exp.data.folds):
        keras.utils.set_random_seed(100 + fold)
        save_model_weights(build_model(exp, cpu_hardware(), META_DIM), str(folder / WEIGHTS_PATTERN.format(fold=fold)))
    manifest = {"schema": MANIFEST_SCHEMA, "experiment": exp.name, "config": to_dict(exp), "versions": {}, "seed": 1,
                "hardware": {"kind": "cpu"}, "folds": [{"fold": k, "auc": 0.5, "best_epoch": 1}
                                                       for k in range(exp.data.folds)],
                "oof_auc": 0.5, "timings": {}, "files": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_metadata_diagnosis_model_gets_missing_metadata_and_melanoma_column(tmp_path):
    import dataclasses

    from kernels.augment import dihedral_view
    from kernels.data import missing_metadata_vector
    from kernels.schema import MELANOMA_INDEX
    from kit.data.images import ImageFile
    from kit.predict import Source, load_member_models, member_from_run, predict, prepare, tta_inputs
    from kit.run.folders import run_from_folder

    config = {**CONFIG, "name": "meta-diag", "data": {**CONFIG["data"], "metadata": True, "run_folds": []},
              "model": {**CONFIG["model"], "head": "diagnosis", "metadata_units": [8]}}
    member = member_from_run(run_from_folder(_random_weights_run(tmp_path / "runs", config)))
    paths = [_save(_lesion(50 + 10 * i, 70), tmp_path / f"m{i}.png") for i in range(3)]
    source = Source("run meta-diag/v1", (member,))
    models = load_member_models(member)
    frame = predict([ImageFile(p) for p in paths], source, models=[models])

    images = np.stack([prepare(read_image(p, member.exp), member.exp) for p in paths])
    meta = np.repeat(missing_metadata_vector()[None, :], len(paths), axis=0)
    expected = np.mean([
        np.mean([np.asarray(m({"image": np.asarray(dihedral_view(images, k)), "meta": meta}, training=False))[:, MELANOMA_INDEX]
                 for k in range(8)], axis=0)
        for m in models
    ], axis=0)
    np.testing.assert_allclose(frame["probability"].to_numpy(), expected, atol=TOLERANCE)
    assert (frame["models"] == 2).all() and frame["fold_std"].gt(0).all()

    with_tta = dataclasses.replace(member, exp=dataclasses.replace(
        member.exp, augment=dataclasses.replace(member.exp.augment, ops=("color",)),
        train=dataclasses.replace(member.exp.train, tta=2)))
    assert len(tta_inputs(images, with_tta.exp)) == 8 + 2
    source = Source("tta", (with_tta,))
    first = predict([ImageFile(p) for p in paths], source, models=[models])["probability"].to_numpy()
    again = predict([ImageFile(p) for p in paths], source, models=[models])["probability"].to_numpy()
    np.testing.assert_array_equal(first, again)  # augmented passes are seeded: same input, same answer
    assert np.abs(first - expected).max() > 0  # and they do change the images


def test_predict_says_how_its_models_compare_with_the_baseline(tiny_run, tmp_path, capsys):
    import shutil

    from kernels.contracts import read_oof
    from kernels.metrics import auc
    from kit.predict import compare_with_baseline

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run["run"], runs / EXPERIMENT / "v1")
    assert main(["baseline", "--data", str(tiny_run["data"]), "--size", str(MODEL_SIZE), "--folds", "2",
                 "--runs", str(runs)]) == 0
    assert latest_run(runs).experiment == EXPERIMENT  # the newer baseline run has no weights to predict with
    source = resolve_source(run=EXPERIMENT, runs_root=runs)
    got = compare_with_baseline(source, runs)
    ours, base = read_oof(runs / EXPERIMENT / "v1" / "oof.csv"), read_oof(runs / "baseline" / "v1" / "oof.csv")
    both = ours.merge(base, on="image_name", suffixes=("", "_b"))
    assert got is not None and got.baseline == "baseline/v1" and got.n == len(ours) == len(both)  # fold 1 only
    assert got.source_auc == pytest.approx(auc(both["target"], both["pred"]))
    assert got.baseline_auc == pytest.approx(auc(both["target"], both["pred_b"]))
    capsys.readouterr()
    image = sorted(tiny_run["images"].glob("*.jpg"))[0]
    assert main(["predict", str(image), "--run", EXPERIMENT, "--runs", str(runs)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    verdict = "beat the baseline" if got.beats else "not separable" if got.source_auc > got.baseline_auc else "do not beat"
    assert verdict in printed and f"{got.source_auc:.3f} vs the baseline's {got.baseline_auc:.3f}" in printed
