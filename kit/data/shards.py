"""Patient-isolated, "triple stratified" assignment of images to bins (train shards, or a train/test split).

In:  one patient id and one 0/1 target per image, the bins' weights (equal for shards; e.g. 0.8/0.2 for a
     train/test split) and a seed.
Out: a bin index per image such that
     1. every patient's images share one bin (no patient leaks across folds or into the test set),
     2. each bin holds close to its weight's share of malignant images and of images, and
     3. each bin holds close to its weight's share of the patients of every stratum, where a stratum is
        (has a malignant image, images-per-patient size class), so the spread of images per patient is alike.

How: patients are dealt largest first (malignant patients first, then by size class, then by image count; ties
in a seeded random order). Each goes to the bin with the lowest (patients of its stratum + 0.5) / weight
(Sainte-Lague apportionment); ties go to the bin with the lowest malignant images / weight after taking it
(malignant patients only), then the lowest images / weight, then a seeded coin. Same inputs and seed, same bins.

Also here: how many test files a split gets (`count_test_shards`) and the per-bin balance table (`bin_balance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kit.errors import KitError

SIZE_CLASS_CAP = 7  # patients with 2**7 = 128 or more images share the top size class
SAINTE_LAGUE = 0.5  # stratum seats go to the bin with the lowest (count + 0.5) / weight: fair to small bins


def size_class(n_images: np.ndarray) -> np.ndarray:
    """Images-per-patient size class: floor(log2(n)) capped, so 1 | 2-3 | 4-7 | 8-15 | ..."""
    return np.minimum(np.floor(np.log2(np.maximum(n_images, 1))).astype(int), SIZE_CLASS_CAP)


def patient_table(patient_ids: Sequence[str], targets: Sequence[int]) -> pd.DataFrame:
    """One row per patient: `n_images`, `n_malignant`, `stratum` (index = patient id, sorted)."""
    frame = pd.DataFrame({"patient_id": np.asarray(patient_ids, dtype=object), "target": np.asarray(targets, int)})
    table = frame.groupby("patient_id", sort=True)["target"].agg(n_images="size", n_malignant="sum")
    has_malignant = (table["n_malignant"] > 0).astype(int)
    table["stratum"] = has_malignant * (SIZE_CLASS_CAP + 1) + size_class(table["n_images"].to_numpy())
    return table


def _deal(table: pd.DataFrame, weights: np.ndarray, rng: np.random.Generator) -> dict[str, int]:
    n_bins = weights.size
    n_strata = 2 * (SIZE_CLASS_CAP + 1)
    stratum_count = np.zeros((n_bins, n_strata))
    malignant = np.zeros(n_bins)
    images = np.zeros(n_bins)
    order = table.assign(coin=rng.permutation(len(table))).sort_values(
        ["stratum", "n_malignant", "n_images", "coin"], ascending=False, kind="mergesort"
    )
    out: dict[str, int] = {}
    for patient, row in zip(order.index, order.itertuples(index=False), strict=True):
        s, n, m = int(row.stratum), int(row.n_images), int(row.n_malignant)
        keys = (
            rng.random(n_bins),  # last key: a seeded coin
            (images + n) / weights,
            (malignant + m) / weights if m else np.zeros(n_bins),
            (stratum_count[:, s] + SAINTE_LAGUE) / weights,  # first key
        )
        b = int(np.lexsort(keys)[0])
        out[patient] = b
        stratum_count[b, s] += 1
        malignant[b] += m
        images[b] += n
    return out


def assign_bins(patient_ids: Sequence[str], targets: Sequence[int], weights: Sequence[float], seed: int) -> np.ndarray:
    """Bin index (0..len(weights)-1) for every image; see the module docstring for the guarantees."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or w.size == 0 or not np.all(w > 0):
        raise ValueError(f"assign_bins: weights must be a non-empty list of positive numbers, got {list(weights)}")
    table = patient_table(patient_ids, targets)
    bins = _deal(table, w / w.sum(), np.random.default_rng(seed))
    return np.array([bins[p] for p in patient_ids], dtype=int)


def assign_shards(patient_ids: Sequence[str], targets: Sequence[int], n_shards: int, seed: int) -> np.ndarray:
    """Equal-weight bins: the shard index of every image."""
    return assign_bins(patient_ids, targets, [1.0] * n_shards, seed)


def count_test_shards(requested: int, n_train: int, train_shards: int, test: pd.DataFrame, flag: str) -> int:
    """Test files: as requested, or (0) about as large as train files and at most one per test patient."""
    n_patients = test["patient_id"].nunique()
    if requested == 0:
        return max(1, min(n_patients, round(len(test) * train_shards / n_train)))
    if n_patients < requested:
        raise KitError(f"--test-shards {requested}: only {n_patients} test patients {flag} "
                       "(expected fewer test shards)")
    return requested


def bin_balance(frame: pd.DataFrame, column: str = "shard") -> pd.DataFrame:
    """Per bin of `frame[column]`: images, patients, malignant images and malignant share (for reports and tests)."""
    grouped = frame.groupby(column, sort=True)
    table = pd.DataFrame({
        "images": grouped.size(),
        "patients": grouped["patient_id"].nunique(),
        "malignant": grouped["target"].sum().astype(int),
    })
    table["malignant_share"] = table["malignant"] / table["images"]
    return table
