"""Real images + a labels CSV -> a competition-format dataset folder.

In:  LABELS_CSV with columns `image_name` and `target` (0/1), and optionally `patient_id`, `duplicate_of`,
     `diagnosis`, `sex`, `age_approx`, `anatom_site_general_challenge` (other columns are ignored); IMAGES_DIR
     holding one image per row, named `<image_name>` or `<image_name>.<ext>` (JPEG, PNG, TIFF, BMP, WebP);
     the output size, test fraction, shard counts and seed.
Out: the folder `kit.data.tfrecords.write_dataset` writes: a patient-isolated, stratified held-out test split
     (with solution.csv) and "triple stratified" train shards (`kit.data.shards`).

Rules:
- Patients: `patient_id` when given; a row without one is its own patient, except that rows linked by
  `duplicate_of` (a copy of another row's image) always share a patient, so copies never straddle folds or
  train/test. Rows without a patient id get `IP_<first image_name of the group>`.
- Values: sex/site are matched case-insensitively (a few aliases, e.g. "anterior torso" -> torso, "m" -> male);
  anything else, or empty, becomes "missing". Ages become ints (empty or unreadable -> `schema.MISSING_AGE`).
  Diagnosis defaults to "melanoma" for target 1 and "unknown" for target 0 (also for names outside the
  competition's list); a listed benign diagnosis with target 1, or melanoma with target 0, is an error.
- Images: EXIF orientation applied; grayscale, 16-bit, palette, CMYK -> RGB; transparency composited onto
  black (the colour of a dermoscope's vignette). Square by CENTRE CROP to the shorter side (dermoscopy
  centres the lesion; padding would waste pixels), then a Lanczos resize to `size`; JPEG quality 95.
- Bad input (a missing column, a missing or unreadable image, a target not 0/1, ...) stops with one line
  naming the file and row and what was expected; nothing is left in or beside OUT.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kernels import schema
from kit.data.images import to_rgb_array
from kit.data.shards import assign_bins, assign_shards, count_test_shards
from kit.data.tfrecords import JPEG_QUALITY, MISSING, DatasetSummary, write_dataset
from kit.errors import KitError

if TYPE_CHECKING:
    pass

REQUIRED_COLUMNS = ("image_name", "target")
OPTIONAL_COLUMNS = ("patient_id", "duplicate_of", "diagnosis", "sex", "age_approx", "anatom_site_general_challenge")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SEX_ALIASES = {"m": "male", "f": "female", "man": "male", "woman": "female"}
SITE_ALIASES = {
    "anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso", "trunk": "torso",
    "head": "head/neck", "neck": "head/neck", "face": "head/neck", "scalp": "head/neck",
    "upper limb": "upper extremity", "arm": "upper extremity",
    "lower limb": "lower extremity", "leg": "lower extremity",
    "palms": "palms/soles", "soles": "palms/soles", "acral": "palms/soles", "genital": "oral/genital",
}
MIN_SIZE = 16
DRAFT_MARGIN = 2  # JPEGs are decoded at a reduced DCT scale, but at least this many times the output size
HEADER_ROWS = 1  # CSV row numbers in messages count the header as row 1


@dataclass(frozen=True)
class ImportSpec:
    """How to import. `test_shards` 0 = as many as keep test files about the size of train files."""

    size: int
    test_fraction: float = 0.2
    shards: int = 10
    test_shards: int = 0
    seed: int = 42


def _row(i: int) -> int:
    return i + HEADER_ROWS + 1


def _stem(name: str) -> str:
    root, ext = os.path.splitext(name)
    return root if ext.lower() in IMAGE_EXTENSIONS else name


def _category(values: pd.Series, allowed: tuple[str, ...], aliases: dict[str, str]) -> pd.Series:
    lookup = {a.lower(): a for a in allowed} | aliases
    return values.str.strip().str.lower().map(lambda v: lookup.get(v, MISSING)).astype(object)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise KitError(f"{path}: file not found (expected a labels CSV with columns image_name,target)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for broken CSVs
        raise KitError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise KitError(f"{path}: missing column(s) {', '.join(missing)} (expected image_name and target; "
                       f"optional: {', '.join(OPTIONAL_COLUMNS)})")
    if frame.empty:
        raise KitError(f"{path}: no rows (expected one row per image)")
    return frame


def _targets(frame: pd.DataFrame, where: Path) -> np.ndarray:
    values = pd.to_numeric(frame["target"].str.strip(), errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise KitError(f"{where}: row {_row(i)}: target is {frame['target'].iloc[i]!r}, expected 0 or 1")
    return values.to_numpy().astype(int)


def _names(frame: pd.DataFrame, where: Path) -> pd.Series:
    names = frame["image_name"].str.strip().map(_stem)
    for i in np.flatnonzero((names == "").to_numpy()):
        raise KitError(f"{where}: row {_row(int(i))}: empty image_name (expected a file name)")
    for i in np.flatnonzero(names.duplicated().to_numpy()):
        raise KitError(f"{where}: row {_row(int(i))}: image_name {names.iloc[i]!r} repeats an earlier row "
                       "(expected one row per image)")
    return names


def _diagnoses(frame: pd.DataFrame, target: np.ndarray, where: Path) -> np.ndarray:
    given = frame["diagnosis"].str.strip() if "diagnosis" in frame else pd.Series([""] * len(frame))
    lookup = {d.lower(): d for d in schema.DIAGNOSES}
    out = np.where(target == 1, "melanoma", "unknown").astype(object)
    for i, raw in enumerate(given):
        dx = lookup.get(raw.lower())
        if dx is None or dx == "unknown":
            continue
        if (dx == "melanoma") != (target[i] == 1):
            expected = "melanoma (or empty)" if target[i] == 1 else "a benign diagnosis (melanoma means target 1)"
            raise KitError(f"{where}: row {_row(i)}: diagnosis {raw!r} with target {target[i]}, expected {expected}")
        out[i] = dx
    return out


def _ages(frame: pd.DataFrame) -> np.ndarray:
    if "age_approx" not in frame:
        return np.full(len(frame), schema.MISSING_AGE, dtype=int)
    ages = pd.to_numeric(frame["age_approx"].str.strip(), errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(ages) & (ages >= 0)
    return np.where(ok, np.rint(np.where(ok, ages, 0)), schema.MISSING_AGE).astype(int)


def _patients(frame: pd.DataFrame, names: pd.Series, where: Path) -> np.ndarray:
    """Patient id per row: given ids, one patient per image otherwise, duplicates merged (union-find)."""
    given = frame["patient_id"].str.strip() if "patient_id" in frame else pd.Series([""] * len(frame))
    keys = [f"p:{p}" if p else f"i:{n}" for p, n in zip(given, names, strict=True)]
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    if "duplicate_of" in frame:
        index = {n: i for i, n in enumerate(names)}
        for i, dup in enumerate(frame["duplicate_of"].str.strip().map(_stem)):
            if not dup:
                continue
            if dup not in index:
                raise KitError(f"{where}: row {_row(i)}: duplicate_of {dup!r} is not an image_name in this file")
            a, b = sorted((root(keys[i]), root(keys[index[dup]])))
            parent[b] = a
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(root(k), []).append(k)
    labels = {}
    for r, members in groups.items():
        real = sorted(k[2:] for k in members if k.startswith("p:"))
        labels[r] = real[0] if real else f"IP_{min(k[2:] for k in members)}"
    return np.array([labels[root(k)] for k in keys], dtype=object)


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The labels CSV as records (`tfrecords.RECORD_COLUMNS` less `shard`); one-line KitError when bad."""
    where = Path(path)
    frame = _read_csv(where)
    names = _names(frame, where)
    target = _targets(frame, where)
    empty = pd.Series([""] * len(frame), index=frame.index)
    return pd.DataFrame({
        "image_name": names.to_numpy(dtype=object),
        "patient_id": _patients(frame, names, where),
        "sex": _category(frame.get("sex", empty), schema.SEXES, SEX_ALIASES).to_numpy(),
        "age_approx": _ages(frame),
        "anatom_site_general_challenge": _category(
            frame.get("anatom_site_general_challenge", empty), schema.SITES, SITE_ALIASES
        ).to_numpy(),
        "diagnosis": _diagnoses(frame, target, where),
        "target": target,
        "source_row": [_row(i) for i in range(len(frame))],
    })


def find_images(
    records: pd.DataFrame, images_dir: str | os.PathLike[str], labels: str | os.PathLike[str]
) -> list[Path]:
    """The image file of every record, in order; a one-line KitError for the first one missing."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise KitError(f"{folder}: not a folder (expected the folder holding the images)")
    by_stem: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        root, ext = os.path.splitext(entry.name)
        if ext.lower() in rank and entry.is_file():
            known = by_stem.get(root)
            if known is None or rank[ext.lower()] < rank[known.suffix.lower()]:
                by_stem[root] = Path(entry.path)
    paths = []
    for name, row in zip(records["image_name"], records["source_row"], strict=True):
        path = by_stem.get(name)
        if path is None and (folder / name).is_file():
            path = folder / name
        if path is None:
            raise KitError(f"{labels}: row {row}: image {name!r} not found in {folder} "
                           f"(expected {name}.jpg, .jpeg or .png)")
        paths.append(path)
    return paths


def square_jpeg(path: Path, size: int) -> bytes:
    """One image file -> centre-cropped, resized, RGB JPEG bytes; a one-line KitError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft(None, (DRAFT_MARGIN * size, DRAFT_MARGIN * size))
            rgb = Image.fromarray(to_rgb_array(im))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise KitError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); expected a JPEG or PNG file"
                       .replace("\n", " ")) from None
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    out = rgb.resize((size, size), Image.Resampling.LANCZOS, box=box)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def check_spec(spec: ImportSpec) -> None:
    """One-line KitError for an impossible spec."""
    checks = (
        (spec.size >= MIN_SIZE, f"--size {spec.size}: expected at least {MIN_SIZE} pixels"),
        (0.0 < spec.test_fraction < 1.0, f"--test-fraction {spec.test_fraction}: expected a number in (0, 1)"),
        (spec.shards >= 1, f"--shards {spec.shards}: expected at least 1"),
        (spec.test_shards >= 0, f"--test-shards {spec.test_shards}: expected 0 (auto) or more"),
        (spec.seed >= 0, f"--seed {spec.seed}: expected an integer >= 0"),
    )
    for ok, message in checks:
        if not ok:
            raise KitError(message)


def plan_import(records: pd.DataFrame, spec: ImportSpec, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split records into train/test (patient-isolated, stratified) and give each its `shard`."""
    check_spec(spec)
    split = assign_bins(records["patient_id"].tolist(), records["target"].tolist(),
                        [1.0 - spec.test_fraction, spec.test_fraction], spec.seed)
    train, test = records[split == 0].copy(), records[split == 1].copy()
    n_train, n_test = train["patient_id"].nunique(), test["patient_id"].nunique()
    if n_train < spec.shards or n_test == 0:
        raise KitError(f"{where}: {records['patient_id'].nunique()} patients split into {n_train} train / {n_test} "
                       f"test, expected at least {spec.shards} train patients (--shards) and 1 test patient")
    test_shards = count_test_shards(spec.test_shards, len(train), spec.shards, test, f"in {where}")
    train["shard"] = assign_shards(train["patient_id"].tolist(), train["target"].tolist(), spec.shards, spec.seed)
    test["shard"] = assign_shards(test["patient_id"].tolist(), test["target"].tolist(), test_shards, spec.seed)
    return train, test


def import_dataset(
    labels_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: ImportSpec,
    force: bool = False,
    on_image: Callable[[], None] = lambda: None,
) -> DatasetSummary:
    """Validate the labels and images, then write the dataset folder `out` atomically."""
    check_spec(spec)
    records = read_labels(labels_csv)
    records["path"] = find_images(records, images_dir, labels_csv)
    train, test = plan_import(records, spec, str(labels_csv))

    def source(row: pd.Series) -> bytes:
        return square_jpeg(row["path"], spec.size)

    return write_dataset(Path(out), train, test, source, spec.seed, force, on_image)
