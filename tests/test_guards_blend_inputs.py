"""Guards on how a blend lines its runs up (kit.blend.inputs), in process on small frames: rows are matched by
image name whatever order each run lists them in; the run the others are checked against is the one holding
the image set most runs share; every disagreement (images missing or added, targets, test images) stops the
blend with one line naming the run, the count and a first example; metadata columns come from the first run
that has them; the test image names come from the dataset's sample_submission.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernels.contracts import OOF_OPTIONAL_COLUMNS
from kit.blend.inputs import align_runs, read_expected_test, reference_run
from kit.errors import KitError
from kit.run.folders import Run, RunInfo

NAMES = [f"ISIC_{i:07d}" for i in range(8)]
TARGETS = [0, 1, 0, 0, 1, 0, 1, 0]
FOLDS = [0, 0, 1, 1, 2, 2, 3, 3]
TEST_NAMES = [f"ISIC_9{i:06d}" for i in range(5)]


def _run(name: str, order: list[int] | None = None, preds: list[float] | None = None,
         test_order: list[int] | None = None, **columns: list) -> Run:
    """Run `name`/v1 with OOF rows NAMES[order] (default all, in order) and test rows TEST_NAMES[test_order];
    preds given in NAMES order (default: a run-specific ramp); extra columns in NAMES order too."""
    order = list(range(len(NAMES))) if order is None else order
    preds = preds if preds is not None else [(i + len(name)) / 20 for i in range(len(NAMES))]
    oof = pd.DataFrame({"image_name": [NAMES[i] for i in order], "target": [TARGETS[i] for i in order],
                        "pred": [preds[i] for i in order], "fold": [FOLDS[i] for i in order]})
    for col, values in columns.items():
        oof[col] = [values[i] for i in order]
    test_order = list(range(len(TEST_NAMES))) if test_order is None else test_order
    test = pd.DataFrame({"image_name": [TEST_NAMES[i] for i in test_order],
                         "target": [(i + len(name)) / 10 for i in test_order]})
    return Run(RunInfo(name, 1, Path("/nowhere") / name, {}), oof, test)


def test_runs_listing_images_in_other_orders_are_lined_up_by_name() -> None:
    """Row i of every matrix is the reference run's image i: each run's prediction for that image, the
    reference's target and fold; the test matrix follows sample_submission.csv's order."""
    first = _run("a")
    shuffled = _run("bb", order=[3, 0, 7, 1, 6, 2, 5, 4], preds=[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4],
                    test_order=[4, 2, 0, 1, 3])
    expected_test = [TEST_NAMES[i] for i in (1, 0, 4, 3, 2)]
    inputs = align_runs([first, shuffled], expected_test)
    assert inputs.run_ids == ("a/v1", "bb/v1") and inputs.runs == (first, shuffled)
    assert inputs.image_names.tolist() == NAMES
    assert inputs.y.tolist() == TARGETS and inputs.folds.tolist() == FOLDS and inputs.folds.dtype.kind == "i"
    assert inputs.oof.tolist() == [[(i + 1) / 20, p] for i, p in
                                   enumerate([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])]
    assert inputs.test_names.tolist() == expected_test
    assert inputs.test.tolist() == [[(i + 1) / 10, (i + 2) / 10] for i in (1, 0, 4, 3, 2)]
    assert inputs.notes == ()
    # without a dataset, the reference run's own test rows set the order
    assert align_runs([shuffled, first]).test_names.tolist() == [TEST_NAMES[i] for i in (4, 2, 0, 1, 3)]


def test_the_reference_is_the_first_run_of_the_image_set_most_runs_share() -> None:
    """With three runs the odd one out is named, wherever it stands; between two different runs the first
    is the reference."""
    odd, good1, good2 = _run("odd", order=list(range(7))), _run("g1"), _run("g2", order=[7, 6, 5, 4, 3, 2, 1, 0])
    assert reference_run([odd, good1, good2]) is good1
    assert reference_run([good2, odd, good1]) is good2
    assert reference_run([odd, good1]) is odd
    with pytest.raises(KitError, match=r"^run odd/v1: oof.csv misses 1 image\(s\) that g1/v1 has, e.g. 'ISIC_0000007'$"):
        align_runs([odd, good1, good2])
    with pytest.raises(KitError, match=r"^run g1/v1: oof.csv adds 1 image\(s\) that odd/v1 lacks, e.g. 'ISIC_0000007'$"):
        align_runs([odd, good1])


def test_image_set_differences_are_counted_with_the_first_name_in_order() -> None:
    with pytest.raises(KitError, match=r"^run b/v1: oof.csv misses 3 image\(s\) that a/v1 has, e.g. 'ISIC_0000001'$"):
        align_runs([_run("a"), _run("b", order=[7, 0, 4, 2, 6])])
    with pytest.raises(KitError, match=r"^blend: no runs selected$"):
        align_runs([])


def test_a_target_disagreement_names_the_first_image_and_counts_them_all() -> None:
    flipped = _run("b")
    flipped.oof.loc[[4, 2], "target"] = [0, 1]  # image 2: 0 -> 1, image 4: 1 -> 0
    with pytest.raises(KitError, match=r"^run b/v1: oof.csv target of 'ISIC_0000002' is 1 but a/v1 says 0 "
                                       r"\(2 image\(s\) disagree\)$"):
        align_runs([_run("a"), flipped])


def test_other_folds_are_noted_and_the_references_folds_used() -> None:
    other = _run("b")
    other.oof["fold"] = [3, 3, 2, 2, 1, 1, 0, 0]
    inputs = align_runs([_run("a"), other, _run("c")])
    assert inputs.notes == ("b/v1 uses other folds than a/v1; nested CV uses the folds of a/v1",)
    assert inputs.folds.tolist() == FOLDS


@pytest.mark.parametrize("with_dataset", [True, False], ids=["sample-submission", "reference-run"])
def test_test_image_differences_name_the_run_and_where_the_names_come_from(with_dataset: bool) -> None:
    expected = TEST_NAMES if with_dataset else None
    source = "sample_submission.csv" if with_dataset else "a/v1's test_pred.csv"
    with pytest.raises(KitError, match=rf"^run b/v1: test_pred.csv misses 2 test image\(s\) of {source}, "
                                       r"e.g. 'ISIC_9000000'$"):
        align_runs([_run("a"), _run("b", test_order=[4, 2, 3])], expected)
    extra = _run("b")
    extra.test.loc[5] = ["ISIC_9999999", 0.5]
    with pytest.raises(KitError, match=rf"^run b/v1: test_pred.csv has 1 image\(s\) not in {source}, "
                                       r"e.g. 'ISIC_9999999'$"):
        align_runs([_run("a"), extra], expected)
    if with_dataset:
        with pytest.raises(KitError, match=r"^run a/v1: test_pred.csv misses 1 test image\(s\) of my.csv"):
            align_runs([_run("a")], [*TEST_NAMES, "ISIC_9999990"], expected_source="my.csv")


def test_each_metadata_column_comes_from_the_first_run_that_has_it() -> None:
    """Patient id, sex, age and site: from the first run whose OOF carries the column, lined up by image name;
    a column no run carries is left out."""
    sexes = ["male", "female"] * 4
    ages = [float(30 + 5 * i) for i in range(8)]
    plain = _run("a")
    with_sex = _run("b", order=[7, 6, 5, 4, 3, 2, 1, 0], sex=sexes, age_approx=ages)
    with_both = _run("c", patient_id=[f"IP_{i // 2}" for i in range(8)], sex=["x"] * 8)
    meta = align_runs([plain, with_sex, with_both]).meta
    assert meta.columns.tolist() == ["image_name", "patient_id", "sex", "age_approx"]
    assert meta["image_name"].tolist() == NAMES
    assert meta["sex"].tolist() == sexes and meta["age_approx"].tolist() == ages
    assert meta["patient_id"].tolist() == [f"IP_{i // 2}" for i in range(8)]
    assert set(OOF_OPTIONAL_COLUMNS) - set(meta.columns) == {"anatom_site_general_challenge"}
    assert align_runs([plain]).meta.columns.tolist() == ["image_name"]


def test_the_test_images_are_those_of_the_datasets_sample_submission(tmp_path: Path) -> None:
    assert read_expected_test(None) is None and read_expected_test("") is None
    with pytest.raises(KitError, match=rf"^{tmp_path}/sample_submission.csv: not found \(the dataset folder must "
                                       r"hold sample_submission.csv\)$"):
        read_expected_test(tmp_path)
    pd.DataFrame({"image_name": TEST_NAMES[::-1], "target": 0.0}).to_csv(tmp_path / "sample_submission.csv",
                                                                         index=False)
    assert read_expected_test(str(tmp_path)) == TEST_NAMES[::-1]
    assert np.array_equal(align_runs([_run("a")], read_expected_test(tmp_path)).test_names, TEST_NAMES[::-1])


def test_whole_number_predictions_give_float_matrices() -> None:
    """A run whose CSVs hold whole numbers (a 0/1 rule) still gives float OOF and test matrices."""
    rule = _run("rule", preds=[float(v) for v in TARGETS])
    rule.oof["pred"] = rule.oof["pred"].astype(int)
    rule.test["target"] = [0, 1, 0, 1, 1]
    inputs = align_runs([rule])
    assert inputs.oof.dtype == float and inputs.test.dtype == float
    assert inputs.oof[:, 0].tolist() == TARGETS and inputs.test[:, 0].tolist() == [0, 1, 0, 1, 1]
