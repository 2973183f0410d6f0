"""`kit data import`: real JPEGs + labels CSV -> competition format, read back with tf.data.

Uses the vendored real sample data/isic-uda1 (never ../shared) and small images built here for the awkward
cases (EXIF rotation, grayscale, 16-bit, CMYK, alpha, palette). The shared read-back checks live in
test_data_synth.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import check_dataset, kit, read_records
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "isic-uda1"
IMAGES = SAMPLE / "images"
DUPLICATES = {"ISIC_0000280": "ISIC_0000279", "ISIC_0000512": "ISIC_0000477"}
SIZE = 32
MAX_SAMPLE_BYTES = 15_000_000
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF: the stored image must be turned 90 degrees clockwise for display


def labels() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "labels.csv", dtype=str, keep_default_na=False)


def subset(n_benign: int, n_malignant: int) -> pd.DataFrame:
    """The duplicate pairs plus the first benign and malignant rows of the sample."""
    frame = labels()
    dup_rows = frame["image_name"].isin(list(DUPLICATES) + list(DUPLICATES.values()))
    rest = frame[~dup_rows]
    return pd.concat([
        frame[dup_rows], rest[rest["target"] == "0"].head(n_benign), rest[rest["target"] == "1"].head(n_malignant),
    ])


def write_labels(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():  # a failure found while writing: the staging folder beside OUT is gone too
        assert [p.name for p in out.parent.iterdir()] == []


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("import")
    frame = subset(40, 20)
    csv = write_labels(frame, root / "labels.csv")
    out = root / "ds"
    args = ["data", "import", csv, IMAGES, out, "--size", SIZE, "--shards", 4, "--test-fraction", 0.25, "--seed", 3]
    assert kit(*args) == 0
    return out, frame


def test_import_reads_back_with_the_competition_schema(small: tuple[Path, pd.DataFrame]) -> None:
    out, frame = small
    train, test = check_dataset(out, SIZE, 4)
    assert len(train) + len(test) == len(frame)
    assert 0.15 < len(test) / len(frame) < 0.35
    truth = dict(zip(frame["image_name"], frame["target"].astype(int), strict=True))
    assert all(truth[n] == t for n, t in zip(train["image_name"], train["target"], strict=True))
    solution = pd.read_csv(out / "solution.csv")
    assert all(truth[n] == t for n, t in zip(solution["image_name"], solution["target"], strict=True))
    csv = pd.read_csv(out / "train.csv").set_index("image_name")
    source = frame.set_index("image_name")
    for name in csv.index:  # metadata carried over; missing values stay missing
        assert str(csv.loc[name, "sex"]) == (source.loc[name, "sex"] or "nan")
        age = source.loc[name, "age_approx"]
        assert (csv.loc[name, "age_approx"] == int(float(age))) if age else np.isnan(csv.loc[name, "age_approx"])
    assert csv["anatom_site_general_challenge"].isna().all()  # the sample has no site column


def test_import_keeps_duplicates_and_patients_together(small: tuple[Path, pd.DataFrame]) -> None:
    out, _ = small
    train, test = check_dataset(out, SIZE, 4)
    both = pd.concat([train.assign(split="train"), test.assign(split="test")]).set_index("image_name")
    for copy, original in DUPLICATES.items():
        assert both.loc[copy, "patient_id"] == both.loc[original, "patient_id"]
        assert both.loc[copy, "file"] == both.loc[original, "file"]
    balance = train.groupby("file")["target"].agg(["sum", "size"])
    assert balance["sum"].max() - balance["sum"].min() <= 1
    assert balance["size"].max() - balance["size"].min() <= 2


def test_import_is_deterministic_by_seed(small: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, frame = small
    csv = write_labels(frame, tmp_path / "labels.csv")
    again = tmp_path / "again"
    assert kit("data", "import", csv, IMAGES, again, "--size", SIZE, "--shards", 4, "--test-fraction", 0.25,
               "--seed", 3) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_the_whole_vendored_sample_imports_as_the_demo_does(tmp_path: Path) -> None:
    frame = labels()
    assert len(frame) == 557 and (frame["target"] == "1").sum() == 159
    assert {"image_name", "target", "duplicate_of"} <= set(frame.columns)
    assert sorted(p.stem for p in IMAGES.iterdir()) == sorted(frame["image_name"])
    for name in ("LICENSE.txt", "ATTRIBUTION.txt", "README.md"):
        assert (SAMPLE / name).stat().st_size > 0
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < MAX_SAMPLE_BYTES
    with Image.open(IMAGES / "ISIC_0000000.jpg") as im:
        assert min(im.size) == 256

    out = tmp_path / "uda"
    assert kit("data", "import", SAMPLE / "labels.csv", IMAGES, out, "--size", SIZE, "--shards", 8) == 0
    train, test = check_dataset(out, SIZE, 8)
    assert len(train) + len(test) == 557 and 0.18 < len(test) / 557 < 0.22
    balance = train.groupby("file")["target"].agg(["sum", "size"])
    assert balance["sum"].max() - balance["sum"].min() <= 2  # folds = pairs of files stay balanced
    assert balance["size"].max() - balance["size"].min() <= 2
    malignant_share = test["image_name"].map(dict(zip(frame["image_name"], frame["target"] == "1", strict=True))).mean()
    assert abs(malignant_share - 159 / 557) < 0.03


def test_patient_ids_and_duplicates_across_patients(tmp_path: Path) -> None:
    frame = subset(44, 12).drop(columns=["duplicate_of"]).reset_index(drop=True)
    sizes = [1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 14]  # 60 images, 13 patients
    frame["patient_id"] = np.repeat([f"IP_{i:03d}" for i in range(len(sizes))], sizes)
    frame = frame.sample(frac=1.0, random_state=0)  # a patient's rows need not be adjacent
    frame["duplicate_of"] = ""
    frame.loc[frame["patient_id"] == "IP_000", "duplicate_of"] = frame.loc[frame["patient_id"] == "IP_012",
                                                                           "image_name"].iloc[0]
    out = tmp_path / "ds"
    assert kit("data", "import", write_labels(frame, tmp_path / "l.csv"), IMAGES, out, "--size", 16,
               "--shards", 3, "--test-fraction", 0.3) == 0
    train, test = read_records(out, "train"), read_records(out, "test")
    csv = pd.concat([pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")])
    given = dict(zip(frame["image_name"], frame["patient_id"], strict=True))
    got = dict(zip(csv["image_name"], csv["patient_id"], strict=True))
    merged = {n for n, p in given.items() if p in ("IP_000", "IP_012")}
    assert {got[n] for n in merged} == {"IP_000"}  # the duplicate joined two patients into one
    assert all(got[n] == p for n, p in given.items() if n not in merged)
    where = pd.concat([train, test]).set_index("image_name")["file"]
    assert len({where[n] for n in merged}) == 1
    for patient in set(given.values()):
        assert len({where[n] for n, p in given.items() if p == patient}) == 1


def _awkward_images(folder: Path) -> dict[str, str]:
    """Images as users have them; returns image_name (as written in the labels) -> what to check."""
    folder.mkdir()
    halves = np.zeros((32, 64, 3), np.uint8)
    halves[:, :32] = (255, 0, 0)
    halves[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    Image.fromarray(halves).save(folder / "exif.jpg", quality=95, exif=exif)
    Image.new("L", (40, 48), 128).save(folder / "gray.png")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(folder / "gray16.png")
    Image.new("CMYK", (40, 40), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (0, 255, 0, 255)
    rgba[:, 20:] = (255, 255, 255, 0)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.new("RGB", (40, 40), (255, 255, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "pal.png")
    Image.new("RGB", (40, 40), (200, 100, 50)).save(folder / "UPPER.JPG")
    Image.new("RGB", (40, 40), (10, 20, 30)).save(folder / "named.png")
    for i in range(6):
        Image.new("RGB", (48, 40), (i * 40, 90, 90)).save(folder / f"plain{i}.jpg")
    return {"exif": "exif", "gray": "gray", "gray16": "gray16", "cmyk": "cmyk", "alpha": "alpha", "pal": "pal",
            "UPPER": "upper", "named.png": "named", **{f"plain{i}": "plain" for i in range(6)}}


def test_awkward_images_become_square_rgb(tmp_path: Path) -> None:
    names = _awkward_images(tmp_path / "img")
    frame = pd.DataFrame({"image_name": list(names), "target": [i % 2 for i in range(len(names))]})
    out = tmp_path / "ds"
    assert kit("data", "import", write_labels(frame, tmp_path / "l.csv"), tmp_path / "img", out, "--size", SIZE,
               "--shards", 2, "--test-fraction", 0.25) == 0
    records = pd.concat([read_records(out, "train"), read_records(out, "test")]).set_index("image_name")
    assert set(records["shape"]) == {(SIZE, SIZE, 3)}
    px = records["pixels"]

    def near(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 24) -> bool:
        return bool(np.all(np.abs(pixel.astype(int) - rgb) <= tol))

    assert near(px["exif"][4, 16], (255, 0, 0)) and near(px["exif"][28, 16], (0, 0, 255))  # turned upright
    assert near(px["gray"][16, 16], (128, 128, 128))
    assert near(px["gray16"][16, 16], (156, 156, 156))
    assert near(px["cmyk"][16, 16], (0, 255, 255), tol=40)
    assert near(px["alpha"][16, 4], (0, 255, 0)) and near(px["alpha"][16, 28], (0, 0, 0))
    assert near(px["pal"][16, 16], (255, 255, 0))
    assert near(px["UPPER"][16, 16], (200, 100, 50))
    assert near(px["named"][16, 16], (10, 20, 30))  # "named.png" in the labels -> image_name "named"


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """A copy of 16 sample images and their labels, to break in one way per test."""
    images = tmp_path / "images"
    images.mkdir()
    frame = subset(10, 6).drop(columns=["duplicate_of"]).tail(16).reset_index(drop=True)
    for name in frame["image_name"]:
        shutil.copyfile(IMAGES / f"{name}.jpg", images / f"{name}.jpg")
    return tmp_path, images, frame


def _import(root: Path, images: Path, frame: pd.DataFrame) -> tuple[int, Path, Path]:
    csv = write_labels(frame, root / "labels.csv")
    out = root / "out" / "ds"
    code = kit("data", "import", csv, images, out, "--size", 16, "--shards", 2)
    return code, csv, out


def test_a_missing_column_fails_in_one_line(workdir, capsys) -> None:
    root, images, frame = workdir
    code, csv, out = _import(root, images, frame.drop(columns=["target"]))
    assert code == 2
    assert_one_line_error(capsys, str(csv), "missing column(s) target")
    assert_nothing_written(out)


@pytest.mark.parametrize("bad", ["2", "yes", ""])
def test_a_target_not_0_or_1_fails_in_one_line(workdir, capsys, bad: str) -> None:
    root, images, frame = workdir
    frame["target"] = frame["target"].astype(str)
    frame.loc[5, "target"] = bad
    code, csv, out = _import(root, images, frame)
    assert code == 2
    assert_one_line_error(capsys, str(csv), "row 7:", f"target is {bad!r}, expected 0 or 1")
    assert_nothing_written(out)


def test_a_missing_image_fails_in_one_line(workdir, capsys) -> None:
    root, images, frame = workdir
    (images / f"{frame['image_name'][3]}.jpg").unlink()
    code, csv, out = _import(root, images, frame)
    assert code == 2
    assert_one_line_error(capsys, str(csv), "row 5:", f"image {frame['image_name'][3]!r} not found in {images}")
    assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_image_fails_in_one_line_and_leaves_nothing(workdir, capsys, damage: str) -> None:
    root, images, frame = workdir
    victim = images / f"{frame['image_name'].iloc[-1]}.jpg"  # sorted last: found while writing, after others
    data = victim.read_bytes()
    victim.write_bytes({"garbage": b"not an image at all" * 50, "truncated": data[: len(data) // 3],
                        "empty": b""}[damage])
    code, _, out = _import(root, images, frame)
    assert code == 2
    assert_one_line_error(capsys, str(victim), "not a readable image", "expected a JPEG or PNG")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("duplicate_of", "ISIC_9999999", "duplicate_of 'ISIC_9999999' is not an image_name in this file"),
        ("diagnosis", "melanoma", "diagnosis 'melanoma' with target 0"),
        ("image_name", "", "empty image_name"),
    ],
)
def test_inconsistent_labels_fail_in_one_line(workdir, capsys, column: str, value: str, fragment: str) -> None:
    root, images, frame = workdir
    row = int(np.flatnonzero(frame["target"].astype(int) == 0)[0])
    frame[column] = frame.get(column, "")
    frame.loc[row, column] = value
    code, csv, out = _import(root, images, frame)
    assert code == 2
    assert_one_line_error(capsys, str(csv), f"row {row + 2}:", fragment)
    assert_nothing_written(out)


def test_bad_paths_and_sizes_fail_in_one_line(workdir, capsys) -> None:
    root, images, frame = workdir
    csv = write_labels(frame, root / "labels.csv")
    out = root / "out" / "ds"
    assert kit("data", "import", root / "nope.csv", images, out, "--size", 16) == 2
    assert_one_line_error(capsys, "nope.csv: file not found")
    assert kit("data", "import", csv, root / "nowhere", out, "--size", 16) == 2
    assert_one_line_error(capsys, "nowhere: not a folder")
    assert kit("data", "import", csv, images, out, "--size", 8) == 2
    assert_one_line_error(capsys, "--size 8: expected at least 16 pixels")
    assert kit("data", "import", csv, images, out, "--size", 16, "--shards", 15) == 2
    assert_one_line_error(capsys, "expected at least 15 train patients")
    assert not out.parent.exists()
