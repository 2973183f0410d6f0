"""Synthetic competition data: patients, metadata and dermoscopy-like images with a learnable malignant signal.

In:  a `SynthSpec` (image counts, image size, shard counts, seed, malignant rate).
Out: train and test record frames (the columns `kit.data.tfrecords.RECORD_COLUMNS` needs, plus `synth_index`)
     and, per record, an RGB image; `write_synth` writes them as a competition-format folder. Same spec and
     seed -> byte-identical files.

The data, in brief: several images per patient (a geometric count >= 1, mean `MEAN_IMAGES_PER_PATIENT`);
sex and age per patient, site per image, with roughly the competition's frequencies; malignant images chosen
at the given rate (older patients a little more likely), diagnosis "melanoma" for them and a benign diagnosis
with the competition's frequencies for the rest. Images: skin with shading, a pigmented lesion, hairs, an
occasional dark vignette and pixel noise. The planted signal, in distributions that overlap: malignant lesions
are darker, larger, more elongated, with an irregular, asymmetric border, variegated pigment and (in most of
them) a blue-grey blotch; benign lesions are lighter, round, smooth-bordered and uniform (a few have a blotch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernels import schema
from kit.data.shards import assign_shards, count_test_shards
from kit.data.tfrecords import DatasetSummary, encode_jpeg, write_dataset
from kit.errors import KitError

META_STREAM = 0  # rng stream for names, patients and metadata
IMAGE_STREAM = 1  # rng stream family for pixels (one child per image)
NAME_BASE = 1_000_000  # names look like ISIC_2637011 / IP_7279968 (7 digits)
NAME_SPAN = 9_000_000
MEAN_IMAGES_PER_PATIENT = 4.0
MAX_IMAGES_PER_PATIENT = 24
SEX_PROBS = {"male": 0.51, "female": 0.47, "missing": 0.02}
AGE_MEAN, AGE_SD, AGE_STEP, AGE_MAX = 49.0, 14.0, 5, 90
AGE_MISSING_RATE = 0.01
AGE_RISK_PER_YEAR = 0.03  # malignant odds grow exp(0.03) per year of age (a mild metadata signal)
SITE_PROBS = {
    "torso": 0.51, "lower extremity": 0.25, "upper extremity": 0.15, "head/neck": 0.055,
    "palms/soles": 0.011, "oral/genital": 0.004, "missing": 0.025,
}
BENIGN_DIAGNOSIS_COUNTS = {  # the competition's train.csv, benign rows
    "unknown": 27124, "nevus": 5193, "seborrheic keratosis": 135, "lentigo NOS": 44,
    "lichenoid keratosis": 37, "solar lentigo": 7, "cafe-au-lait macule": 1, "atypical melanocytic proliferation": 1,
}
MIN_SIZE = 16


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. `test_shards` 0 = as many as keep test files about the size of train files."""

    n_train: int = 1000
    n_test: int = 400
    size: int = 128
    shards: int = 10
    test_shards: int = 0
    seed: int = 42
    malignant_rate: float = 0.1


@dataclass(frozen=True)
class LesionLook:
    """Ranges (low, high) that one class draws its lesion from; colours are RGB 0-255."""

    radius: tuple[float, float]  # in units of the half image width
    axis_ratio: tuple[float, float]  # minor/major axis
    border_wobble: tuple[float, float]  # amplitude of each boundary harmonic (relative to the radius)
    darkness: tuple[float, float]  # multiplies LESION_BROWN
    variegation: tuple[float, float]  # amplitude of the internal pigment pattern
    blotch_prob: float  # chance of a blue-grey blotch


@dataclass(frozen=True)
class Scene:
    """Ranges (low, high) both classes draw from; lengths in units of the half image width, colours RGB 0-255."""

    skin_tone: tuple[float, float] = (2.0, 3.0)  # Beta(a, b) mix of SKIN_LIGHT (0) .. SKIN_DARK (1)
    tint_sd: float = 0.03  # per-channel colour jitter of skin (and twice that for the lesion)
    shading: tuple[float, float] = (0.0, 0.08)  # amplitude of slow illumination waves
    centre_sd: float = 0.1  # lesion centre offset
    centre_max: float = 0.25
    edge: tuple[float, float] = (0.01, 0.04)  # border softness
    blotch_offset: tuple[float, float] = (0.0, 0.5)  # blotch centre from the lesion centre, x radius
    blotch_sigma: tuple[float, float] = (0.35, 0.6)  # blotch size, x radius
    blotch_opacity: tuple[float, float] = (0.75, 0.95)
    blotch_shade: tuple[float, float] = (0.8, 1.1)  # multiplies BLUE_GREY
    hairs: float = 1.0  # Poisson mean per image
    hair_width: tuple[float, float] = (0.006, 0.015)
    hair_opacity: float = 0.8
    vignette_prob: float = 0.25  # chance of the dark circular rim of a dermoscope
    vignette_radius: tuple[float, float] = (0.95, 1.3)
    vignette_edge: float = 0.1
    brightness: tuple[float, float] = (0.9, 1.1)
    noise_sd: tuple[float, float] = (2.0, 6.0)  # uniform pixel noise with this standard deviation


BENIGN_LOOK = LesionLook((0.2, 0.42), (0.8, 1.0), (0.0, 0.03), (0.8, 1.1), (0.0, 0.06), 0.03)
MALIGNANT_LOOK = LesionLook((0.3, 0.55), (0.6, 0.95), (0.04, 0.12), (0.35, 0.7), (0.12, 0.3), 0.9)
SCENE = Scene()
SKIN_LIGHT = np.array([236.0, 200.0, 178.0], dtype=np.float32)
SKIN_DARK = np.array([180.0, 128.0, 98.0], dtype=np.float32)
LESION_BROWN = np.array([150.0, 95.0, 65.0], dtype=np.float32)
BLUE_GREY = np.array([95.0, 112.0, 150.0], dtype=np.float32)
HAIR = np.array([40.0, 30.0, 25.0], dtype=np.float32)
BORDER_HARMONICS = np.arange(2, 8)  # cos(k * angle) terms of the lesion border
SHADING_FREQ, SHADING_WAVES = 3.0, 2
PIGMENT_FREQ, PIGMENT_WAVES = 12.0, 3
UNIFORM_TO_SD = 12**0.5  # a uniform on [-0.5, 0.5] times this has standard deviation 1
LOGIT_CLIP = 30.0  # keeps exp() in the soft border mask finite


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x, y in [-1, 1] (read-only, shared by every image of this size)."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _waves(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n: int, freq: float) -> np.ndarray:
    """Mean of `n` random plane waves sin(fx*x + fy*y + phase), |fx|, |fy| <= `freq` (values in [-1, 1]).

    Separable: sin(a + b) = sin(a)cos(b) + cos(a)sin(b) with a along x and b along y, so only 1-D sines."""
    out = np.zeros_like(x)
    for fx, fy, phase in _f32(rng.uniform(-1.0, 1.0, (n, 3)) * (freq, freq, np.pi)):
        a, b = fx * x[0], fy * y[:, 0] + phase
        out += np.outer(np.cos(b), np.sin(a)) + np.outer(np.sin(b), np.cos(a))
    return out / np.float32(n)


def _border(theta: np.ndarray, radius: np.float32, wobble: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Lesion border radius at each pixel's angle: radius * (1 + sum_k wobble_k cos(k*theta + phase_k))."""
    out = np.ones_like(theta)
    for k, amp, phase in zip(BORDER_HARMONICS, _f32(wobble), _f32(phases), strict=True):
        out += amp * np.cos(np.float32(k) * theta + phase)
    return radius * out


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Paint `colour` (an (H, W, 3) image or an RGB triple) over `img` with per-pixel opacity `alpha` (in place)."""
    img += (colour - img) * alpha[..., None]
    return img


def synth_image(size: int, malignant: bool, rng: np.random.Generator, scene: Scene = SCENE) -> np.ndarray:
    """One (size, size, 3) uint8 lesion image; see the module docstring for what differs by class."""
    look = MALIGNANT_LOOK if malignant else BENIGN_LOOK
    x, y = _grid(size)
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * _f32(rng.beta(*scene.skin_tone))
    skin = skin * _f32(1.0 + rng.normal(0.0, scene.tint_sd, 3))
    shading = 1.0 + _f32(rng.uniform(*scene.shading)) * _waves(x, y, rng, SHADING_WAVES, SHADING_FREQ)
    img = skin * shading[..., None]

    cx, cy = _f32(np.clip(rng.normal(0.0, scene.centre_sd, 2), -scene.centre_max, scene.centre_max))
    angle = rng.uniform(0.0, np.pi)
    cos_a, sin_a, ratio = _f32([np.cos(angle), np.sin(angle), rng.uniform(*look.axis_ratio)])
    dx, dy = x - cx, y - cy
    u = dx * cos_a + dy * sin_a
    v = (dy * cos_a - dx * sin_a) / ratio
    radius = _f32(rng.uniform(*look.radius))
    wobble = rng.uniform(*look.border_wobble, BORDER_HARMONICS.size)
    phases = rng.uniform(0.0, 2 * np.pi, BORDER_HARMONICS.size)
    border = _border(np.arctan2(v, u), radius, wobble, phases)
    edge = _f32(rng.uniform(*scene.edge))
    mask = 1.0 / (1.0 + np.exp(np.clip((np.hypot(u, v) - border) / edge, -LOGIT_CLIP, LOGIT_CLIP)))

    texture = 1.0 + _f32(rng.uniform(*look.variegation)) * _waves(x, y, rng, PIGMENT_WAVES, PIGMENT_FREQ)
    lesion = LESION_BROWN * _f32(rng.uniform(*look.darkness)) * _f32(1.0 + rng.normal(0.0, 2 * scene.tint_sd, 3))
    img = _blend(img, lesion * texture[..., None], mask)

    if rng.random() < look.blotch_prob:
        t, r = rng.uniform(0.0, 2 * np.pi), rng.uniform(*scene.blotch_offset) * radius
        bx, by = _f32([cx + r * np.cos(t), cy + r * np.sin(t)])
        sigma = _f32(rng.uniform(*scene.blotch_sigma)) * radius
        blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma**2)) * mask
        blob *= _f32(rng.uniform(*scene.blotch_opacity))
        img = _blend(img, BLUE_GREY * _f32(rng.uniform(*scene.blotch_shade)), blob)

    for _ in range(rng.poisson(scene.hairs)):
        px, py, a, width = _f32([*rng.uniform(-1.0, 1.0, 2), rng.uniform(0.0, np.pi), rng.uniform(*scene.hair_width)])
        dist = (x - px) * np.sin(a) - (y - py) * np.cos(a)
        img = _blend(img, HAIR, scene.hair_opacity * np.exp(-((dist / width) ** 2)))

    if rng.random() < scene.vignette_prob:
        rim = (np.hypot(x, y) - _f32(rng.uniform(*scene.vignette_radius))) / scene.vignette_edge
        img *= 1.0 - np.clip(rim, 0.0, 1.0)[..., None]

    img *= _f32(rng.uniform(*scene.brightness))
    img += (rng.random(img.shape, dtype=np.float32) - 0.5) * _f32(rng.uniform(*scene.noise_sd) * UNIFORM_TO_SD)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _choice(rng: np.random.Generator, probs: dict[str, float], n: int) -> np.ndarray:
    p = np.array(list(probs.values()), dtype=float)
    return rng.choice(np.array(list(probs), dtype=object), size=n, p=p / p.sum())


def _patients(rng: np.random.Generator, n_images: int) -> np.ndarray:
    """Patient index per image (patients numbered 0.., sizes 1 + geometric, capped)."""
    sizes: list[int] = []
    while sum(sizes) < n_images:
        sizes.append(min(int(rng.geometric(1.0 / MEAN_IMAGES_PER_PATIENT)), MAX_IMAGES_PER_PATIENT))
    sizes[-1] -= sum(sizes) - n_images
    return np.repeat(np.arange(len(sizes)), sizes)


def _split_records(rng: np.random.Generator, n: int, rate: float, names: np.ndarray, patient_ids: np.ndarray,
                   first_index: int) -> pd.DataFrame:
    patient = _patients(rng, n)
    n_patients = int(patient.max()) + 1
    sex = _choice(rng, SEX_PROBS, n_patients)
    age = np.clip(np.rint(rng.normal(AGE_MEAN, AGE_SD, n_patients) / AGE_STEP) * AGE_STEP, 0, AGE_MAX).astype(int)
    age[rng.random(n_patients) < AGE_MISSING_RATE] = schema.MISSING_AGE
    image_age = age[patient]
    risk = np.exp(AGE_RISK_PER_YEAR * (np.where(image_age < 0, AGE_MEAN, image_age) - AGE_MEAN))
    n_malignant = int(np.clip(round(rate * n), 1, n - 1))
    target = np.zeros(n, dtype=int)
    target[rng.choice(n, n_malignant, replace=False, p=risk / risk.sum())] = 1
    benign_dx = _choice(rng, BENIGN_DIAGNOSIS_COUNTS, n)
    return pd.DataFrame({
        "image_name": names,
        "patient_id": patient_ids[patient],
        "sex": sex[patient],
        "age_approx": image_age,
        "anatom_site_general_challenge": _choice(rng, SITE_PROBS, n),
        "diagnosis": np.where(target == 1, "melanoma", benign_dx),
        "target": target,
        "synth_index": np.arange(first_index, first_index + n),
    })


def check_spec(spec: SynthSpec) -> None:
    """One-line KitError for an impossible spec (counts, size, rate)."""
    checks = (
        (spec.n_train >= 2, f"--train {spec.n_train}: expected at least 2 images"),
        (spec.n_test >= 2, f"--test {spec.n_test}: expected at least 2 images"),
        (spec.size >= MIN_SIZE, f"--size {spec.size}: expected at least {MIN_SIZE} pixels"),
        (spec.shards >= 1, f"--shards {spec.shards}: expected at least 1"),
        (spec.test_shards >= 0, f"--test-shards {spec.test_shards}: expected 0 (auto) or more"),
        (spec.seed >= 0, f"--seed {spec.seed}: expected an integer >= 0"),
        (0.0 < spec.malignant_rate < 1.0, f"--malignant-rate {spec.malignant_rate}: expected a number in (0, 1)"),
    )
    for ok, message in checks:
        if not ok:
            raise KitError(message)


def synth_records(spec: SynthSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test records (with `shard`) for `spec`; pure and deterministic."""
    check_spec(spec)
    rng = np.random.default_rng([spec.seed, META_STREAM])
    total = spec.n_train + spec.n_test
    names = np.array([f"ISIC_{NAME_BASE + i:07d}" for i in rng.choice(NAME_SPAN, total, replace=False)], dtype=object)
    pids = np.array([f"IP_{NAME_BASE + i:07d}" for i in rng.choice(NAME_SPAN, total, replace=False)], dtype=object)
    train = _split_records(rng, spec.n_train, spec.malignant_rate, names[: spec.n_train], pids[: spec.n_train], 0)
    test = _split_records(rng, spec.n_test, spec.malignant_rate, names[spec.n_train :], pids[spec.n_train :],
                          spec.n_train)
    n_train_patients = train["patient_id"].nunique()
    if n_train_patients < spec.shards:
        raise KitError(f"--train {spec.n_train}: gives {n_train_patients} patients, fewer than --shards "
                       f"{spec.shards} (expected more images or fewer shards)")
    test_shards = count_test_shards(spec.test_shards, spec.n_train, spec.shards, test, f"in --test {spec.n_test}")
    train["shard"] = assign_shards(train["patient_id"].tolist(), train["target"].tolist(), spec.shards, spec.seed)
    test["shard"] = assign_shards(test["patient_id"].tolist(), test["target"].tolist(), test_shards, spec.seed)
    return train, test


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The pixel rng of image number `index` (independent of every other image's)."""
    return np.random.default_rng([seed, IMAGE_STREAM, index])


def synth_jpeg(spec: SynthSpec) -> Callable[[pd.Series], bytes]:
    """The image source for `write_dataset`: a record -> its JPEG bytes."""

    def source(row: pd.Series) -> bytes:
        rng = image_rng(spec.seed, int(row["synth_index"]))
        return encode_jpeg(synth_image(spec.size, int(row["target"]) == 1, rng))

    return source


SYNTHETIC_MARKER = "SYNTHETIC.txt"  # in every synthetic dataset folder: `kit predict` warns about models trained on it


def write_synth(out: Path, spec: SynthSpec, force: bool = False,
                on_image: Callable[[], None] = lambda: None) -> DatasetSummary:
    """Generate and write the dataset folder `out` (see `kit.data.tfrecords` for its layout), marked
    synthetic by a `SYNTHETIC_MARKER` file."""
    train, test = synth_records(spec)
    summary = write_dataset(out, train, test, synth_jpeg(spec), spec.seed, force, on_image)
    (out / SYNTHETIC_MARKER).write_text(f"synthetic data from `kit data synth` (seed {spec.seed}): a planted "
                                        "signal, not real lesions\n")
    return summary


# ISIC 2019 training ground truth, images per class (ISIC_2019_Training_GroundTruth.csv, 25,331 images).
ISIC2019_CLASS_COUNTS = {"NV": 12875, "MEL": 4522, "BCC": 3323, "BKL": 2624, "AK": 867, "SCC": 628, "VASC": 253,
                         "DF": 239}
ISIC2019_TORSO = ("anterior torso", "posterior torso", "lateral torso")  # 2019 splits the 2020 "torso"
EXTERNAL_NAMED_PATIENT_RATE = 0.3  # share of external rows whose CSV names a patient (the rest: blank)
EXTERNAL_STREAM = 2  # rng stream for the external CSV's labels and blanks


def external_labels_frame(spec: SynthSpec) -> pd.DataFrame:
    """An external dataset's own CSV for the train records of ``spec``, in the ISIC 2019 style: diagnosis as
    the 2019 ground-truth abbreviations (MEL for every malignant image; every benign 2019 class in each shard
    that has 7+ benign images, the rest by the 2019 frequencies), sites with the torso split into anterior /
    posterior / lateral, and a patient_id only for about `EXTERNAL_NAMED_PATIENT_RATE` of the rows (blank
    otherwise, as in the 2019 data)."""
    train, _ = synth_records(spec)
    rng = np.random.default_rng([spec.seed, EXTERNAL_STREAM])
    benign = {k: v for k, v in ISIC2019_CLASS_COUNTS.items() if k != "MEL"}
    drawn = _choice(rng, benign, len(train))
    for shard in sorted(set(train["shard"])):  # every benign class in every shard that has room for it
        rows = np.flatnonzero((train["target"].to_numpy() == 0) & (train["shard"].to_numpy() == shard))[: len(benign)]
        drawn[rows] = list(benign)[: len(rows)]
    torso = rng.choice(np.array(ISIC2019_TORSO, dtype=object), len(train))
    site = train["anatom_site_general_challenge"].to_numpy(dtype=object)
    named = rng.random(len(train)) < EXTERNAL_NAMED_PATIENT_RATE
    return pd.DataFrame({
        "image_name": train["image_name"],
        "patient_id": np.where(named, train["patient_id"], ""),
        "sex": train["sex"].replace("missing", ""),
        "age_approx": [str(a) if a >= 0 else "" for a in train["age_approx"]],
        "anatom_site_general_challenge": np.where(site == "torso", torso, np.where(site == "missing", "", site)),
        "diagnosis": np.where(train["target"] == 1, "MEL", drawn),
        "target": train["target"],
    })


def write_external_labels(path: Path, spec: SynthSpec) -> Path:
    """Write `external_labels_frame` of ``spec`` to ``path`` (temp file + rename)."""
    from kernels.contracts import write_csv

    write_csv(external_labels_frame(spec), path)
    return path
