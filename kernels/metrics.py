"""The one AUC engine (numpy only, so kernels and the toolkit share it).

In:  binary labels and scores (array-likes of equal length); optionally group ids (patients,
     folds, subgroups) and a second score vector for paired comparisons.
Out:
- `auc`: exact ROC AUC, rank based (Mann-Whitney U), ties counted as one half as scikit-learn
  does; NaN when a class is absent. Labels must be 0/1 (bool, int or float) and scores free of
  NaN: anything else raises a one-line ValueError (no silent NaN, no NaN counted as positive). `auc_split` scores many candidates at
  once from positive/negative score rows; `auc_columns` every column of a matrix.
- `bootstrap_auc_ci`: percentile bootstrap interval resampling *groups* (patients; images when
  no groups are given), so the images of one patient enter or leave a replicate together.
- `bootstrap_auc_matrix` / `paired_bootstrap_test`: the same patient replicates for several
  score vectors at once (vectorised), and the paired test of two AUCs built on it: the test to
  use when a patient holds several images.
- `delong_test`: DeLong et al. (1988) test for the difference of two correlated AUCs on the same
  cases (fast midrank algorithm of Sun & Xu, 2014); `delong_ci` the matching interval of one AUC.
- `auc_by_group`: AUC per fold or per subgroup; `age_bands` turns ages into subgroup labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

CI_LEVEL = 0.95
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
DEFAULT_N_BOOT = 2000
DEFAULT_BOOT_SEED = 0
BOOT_BLOCK_CELLS = 4_000_000  # replicate x case cells held at once by the vectorised bootstrap
GROUP_BATCH_CELLS = 4_000_000  # replicate x group cells per matrix product of the group engine
FLOAT32_EXACT_INTEGERS = float(2**24)  # float32 holds every integer up to this exactly
GROUP_ENGINE_MAX_RATIO = 64  # group engine while (minority groups x groups) <= this x cases (bench/blend.py)
AGE_BAND_EDGES = (30, 45, 60, 75)  # bands: <30, 30-44, 45-59, 60-74, 75+
AGE_BAND_LABELS = ("<30", "30-44", "45-59", "60-74", "75+")
AGE_MISSING_LABEL = "missing"


@dataclass(frozen=True)
class AucInterval:
    """An AUC with its interval: `low`/`high` at `level`; `n_boot` replicates that had both classes."""

    auc: float
    low: float
    high: float
    level: float
    n_boot: int
    n_groups: int
    mc_error: float = float("nan")  # Monte Carlo standard error of the interval ends (the larger one)


@dataclass(frozen=True)
class DelongResult:
    """DeLong comparison of two AUCs on the same cases: diff = auc1 - auc2, two-sided p-value."""

    auc1: float
    auc2: float
    diff: float
    se: float
    z: float
    p: float


@dataclass(frozen=True)
class GroupAuc:
    """AUC of one group (fold or subgroup) with its size and number of positives."""

    n: int
    n_pos: int
    auc: float


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` with ties given their average rank."""
    order = np.argsort(x)  # stability is not needed: ties are averaged below
    xs = x[order]
    n = xs.size
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(n, dtype=float)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _metrics_labels(y_true: ArrayLike, name: str) -> np.ndarray:
    """Labels as booleans; anything but 0/1 (or True/False), NaN included, -> one-line ValueError."""
    raw = np.asarray(y_true).ravel()
    if raw.dtype == bool:
        return raw
    try:
        values = raw.astype(float)
    except (TypeError, ValueError):
        values = None
    if values is None or not np.isin(values, (0.0, 1.0)).all():
        bad = raw[0] if values is None else raw[~np.isin(values, (0.0, 1.0))][0]
        raise ValueError(f"{name}: labels must be 0 or 1, got {bad.item() if isinstance(bad, np.generic) else bad!r}")
    return values == 1.0


def _metrics_check_finite(s: np.ndarray, name: str) -> None:
    if np.isnan(s).any():
        raise ValueError(f"{name}: {int(np.isnan(s).sum())} NaN score(s) (at index {int(np.flatnonzero(np.isnan(s).ravel())[0])})")


def _metrics_labels_scores(y_true: ArrayLike, y_score: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked 0/1 labels (bool) and NaN-free float scores of equal length."""
    y = _metrics_labels(y_true, name)
    s = np.asarray(y_score, dtype=float).ravel()
    if y.size != s.size:
        raise ValueError(f"{name}: {y.size} labels but {s.size} scores")
    _metrics_check_finite(s, name)
    return y, s


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Exact ROC AUC; NaN when only one class is present. Labels other than 0/1 and NaN scores
    raise a one-line ValueError.

    Sorts the larger class and locates each case of the smaller class in it by binary search
    (ties count one half): integer pair counts and one division, so it equals scikit-learn's
    `roc_auc_score` to rounding while skipping its full argsort and curve construction.
    """
    y, s = _metrics_labels_scores(y_true, y_score, "auc")
    return float(auc_split(s[y], s[~y]))


def auc_split(pos_scores: ArrayLike, neg_scores: ArrayLike) -> float | np.ndarray:
    """AUC from the scores of the positive and of the negative cases.

    1-D inputs give one AUC; 2-D inputs (k, n_pos) and (k, n_neg) give k AUCs, one per row
    (blend candidates scored side by side). NaN for an empty class or a row holding a NaN.
    """
    pos = np.asarray(pos_scores)
    neg = np.asarray(neg_scores)
    single = pos.ndim == 1
    pos, neg = np.atleast_2d(pos), np.atleast_2d(neg)
    if pos.shape[1] <= neg.shape[1]:
        out = auc_presorted(pos, np.sort(neg, axis=1), minority_positive=True)
    else:
        out = auc_presorted(neg, np.sort(pos, axis=1), minority_positive=False)
    return float(out[0]) if single else out


def auc_presorted(minority: np.ndarray, majority_sorted: np.ndarray, minority_positive: bool) -> np.ndarray:
    """Row-wise AUCs when the larger class's scores are already sorted along each row.

    `minority` (k, a) holds the other class; `minority_positive` says which class that is.
    Callers that keep the majority sorted themselves (greedy selection) skip a copy and a sort.
    """
    k, n_min = minority.shape
    n_maj = majority_sorted.shape[1]
    out = np.full(k, np.nan)
    if n_min == 0 or n_maj == 0:
        return out
    queries = np.sort(minority, axis=1)  # sorted queries make the binary searches cache friendly
    bad = np.isnan(queries[:, -1]) | np.isnan(majority_sorted[:, -1])
    pairs = 2 * n_min * n_maj
    for r in np.flatnonzero(~bad):
        left = np.searchsorted(majority_sorted[r], queries[r], side="left")
        right = np.searchsorted(majority_sorted[r], queries[r], side="right")
        twice_u = int(left.sum()) + int(right.sum())  # twice the pairs the minority case wins, ties once
        out[r] = (twice_u if minority_positive else pairs - twice_u) / pairs
    return out


def roc_points(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve's corners (fpr, tpr), one per distinct score from the highest down, starting at (0, 0):
    scikit-learn's ``roc_curve(..., drop_intermediate=False)`` without its thresholds (and without
    importing scikit-learn, whose metrics load SciPy's statistics: a second a blend need not spend)."""
    y, s = _metrics_labels_scores(y_true, y_score, "roc_points")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # the end of each run of ties
    tps = np.cumsum(y_sorted)[last_of_value]
    fps = (last_of_value + 1) - tps
    n_pos, n_neg = (tps[-1], fps[-1]) if tps.size else (0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(tps.size + 1, np.nan)
        fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(fps.size + 1, np.nan)
    return fpr, tpr


def auc_columns(y_true: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """AUC of every column of `scores` (n, k) against the same labels (runs side by side)."""
    y = _metrics_labels(y_true, "auc_columns")
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise ValueError(f"auc_columns: scores of shape {s.shape} for {y.size} labels")
    _metrics_check_finite(s, "auc_columns")
    rows = np.ascontiguousarray(s.T)
    return np.asarray(auc_split(rows[:, y], rows[:, ~y]))


def weighted_auc(y_true: ArrayLike, y_score: ArrayLike, weights: ArrayLike) -> float:
    """AUC where case i counts `weights[i]` times (a bootstrap replicate given by its counts)."""
    y, s = _metrics_labels_scores(y_true, y_score, "weighted_auc")
    uniq_inv = np.unique(s, return_inverse=True)[1]
    return _metrics_weighted_auc_prepared(y, uniq_inv, int(uniq_inv.max()) + 1, np.asarray(weights, dtype=float))


def _metrics_weighted_auc_prepared(y: np.ndarray, inv: np.ndarray, n_unique: int, w: np.ndarray) -> float:
    """Weighted AUC given each score's index `inv` among the sorted distinct scores."""
    pos_w = np.bincount(inv, weights=np.where(y, w, 0.0), minlength=n_unique)
    neg_w = np.bincount(inv, weights=np.where(y, 0.0, w), minlength=n_unique)
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = np.cumsum(neg_w) - neg_w
    return float(np.dot(pos_w, below + 0.5 * neg_w) / (total_pos * total_neg))


def _metrics_group_index(groups: ArrayLike | None, n: int) -> tuple[np.ndarray, int]:
    """Dense 0..G-1 index of each case's group; every case its own group when `groups` is None."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"groups: {g.size} group ids for {n} cases")
    _, index = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return index.ravel(), (int(index.max()) + 1 if n else 0)


def bootstrap_counts(n_groups: int, n_boot: int, seed: int = DEFAULT_BOOT_SEED) -> Iterator[np.ndarray]:
    """Yield, per replicate, how many times each of `n_groups` groups is drawn (sum = n_groups).

    The same replicates, in the same order, as `bootstrap_count_blocks` (public so a test can
    rebuild them by explicit resampling).
    """
    for block in bootstrap_count_blocks(n_groups, n_boot, seed):
        yield from block


def bootstrap_count_blocks(n_groups: int, n_boot: int, seed: int = DEFAULT_BOOT_SEED,
                           cells: int = BOOT_BLOCK_CELLS) -> Iterator[np.ndarray]:
    """Yield (b, n_groups) blocks of replicate counts, `n_boot` rows in all, about `cells` per block.

    Replicate r draws `n_groups` group indices uniformly with replacement from one random stream.
    """
    rng = np.random.default_rng(seed)
    per_block = max(1, cells // max(n_groups, 1))
    done = 0
    while done < n_boot:
        b = min(per_block, n_boot - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups)) + (np.arange(b) * n_groups)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n_groups).reshape(b, n_groups)
        done += b


@dataclass(frozen=True)
class _MetricsPrepared:
    """One score vector made ready for weighted AUCs of many replicates at once (the row engine)."""

    group_sorted: np.ndarray  # group index of each case, cases sorted by score
    starts: np.ndarray  # first sorted position of each distinct score
    pos: np.ndarray  # label of each sorted case (float 0/1)


def _metrics_prepare(y: np.ndarray, s: np.ndarray, group_index: np.ndarray) -> _MetricsPrepared:
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1] if s.size else np.zeros(0, dtype=int)
    return _MetricsPrepared(group_index[order], starts, y[order].astype(float))


def _metrics_block_aucs(prep: _MetricsPrepared, counts_t: np.ndarray) -> np.ndarray:
    """Weighted AUC for each column of group counts `counts_t` (n_groups, b): a case weighs its
    group's count. NaN where a class has no weight. Cases run along axis 0 (contiguous sums)."""
    ws = counts_t[prep.group_sorted]
    all_w = np.add.reduceat(ws, prep.starts, axis=0)
    pos_w = np.add.reduceat(ws * prep.pos[:, None], prep.starts, axis=0)
    neg_w = all_w - pos_w
    total = pos_w.sum(axis=0) * neg_w.sum(axis=0)
    below = np.cumsum(neg_w, axis=0) - 0.5 * neg_w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos_w * below).sum(axis=0) / np.where(total > 0, total, 1.0), np.nan)


@dataclass(frozen=True)
class GroupPairs:
    """Patient-level sufficient statistics of one score vector for the cluster bootstrap.

    A replicate that draws group g `c[g]` times scores AUC = c[rows] . (wins @ c) / ((c . n_pos)
    (c . n_neg)): `wins[r, g]` sums, over the pairs (positive, negative) with one case in group
    `rows[r]` and the other in group g, 1 when the positive scores higher and 1/2 on a tie. `rows`
    are the groups holding the smaller class, so `wins` is (groups of the smaller class, groups).
    Every entry is a multiple of 1/2, so each replicate's numerator and denominator are exact.
    """

    rows: np.ndarray
    wins: np.ndarray
    n_pos: np.ndarray
    n_neg: np.ndarray


def group_pairs(y: np.ndarray, s: np.ndarray, group_index: np.ndarray, n_groups: int) -> GroupPairs:
    """`GroupPairs` of boolean labels `y`, scores `s` and dense group ids (0..n_groups-1).

    Cost O(n log n + m * n_groups) for m cases of the smaller class: each of its cases meets the
    other class through per-group running counts (left and right binary searches for ties).
    """
    minority_positive = int(y.sum()) <= int((~y).sum())
    mino, majo = (y, ~y) if minority_positive else (~y, y)
    maj_order = np.argsort(s[majo], kind="stable")
    maj_sorted, maj_groups = s[majo][maj_order], group_index[majo][maj_order]
    q, q_groups = s[mino], group_index[mino]
    cuts = np.concatenate([np.searchsorted(maj_sorted, q, side="left"), np.searchsorted(maj_sorted, q, side="right")])
    uniq_cuts, cut_of = np.unique(cuts, return_inverse=True)
    # segment k holds the majority cases at sorted positions [uniq_cuts[k-1], uniq_cuts[k]); running
    # sums of per-segment group histograms give, at each cut, each group's majority cases below it
    segment = np.searchsorted(uniq_cuts, np.arange(maj_sorted.size), side="right")
    hist = np.bincount(segment * n_groups + maj_groups, minlength=(uniq_cuts.size + 1) * n_groups)
    below = np.cumsum(hist.reshape(uniq_cuts.size + 1, n_groups)[:-1], axis=0, dtype=float)
    half = 0.5 * (below[cut_of[:q.size]] + below[cut_of[q.size:]])  # majority below each query, ties 1/2
    n_pos = np.bincount(group_index[y], minlength=n_groups).astype(float)
    n_neg = np.bincount(group_index[~y], minlength=n_groups).astype(float)
    per_case = half if minority_positive else (n_pos - half)  # pairs each minority case wins as the positive
    order = np.argsort(q_groups, kind="stable")
    rows, starts = np.unique(q_groups[order], return_index=True)
    wins = np.add.reduceat(per_case[order], starts, axis=0) if q.size else np.zeros((0, n_groups))
    return GroupPairs(rows, wins, n_pos, n_neg)


def group_pairs_block_aucs(pairs: Sequence[GroupPairs], counts: np.ndarray) -> np.ndarray:
    """Replicate AUCs (b, k) of k score vectors on the same labels and groups, for a block of group
    counts (b, n_groups); NaN where a class has no weight. One matrix product serves all k."""
    c = np.asarray(counts, dtype=float)
    first = pairs[0]
    wins = np.vstack([gp.wins for gp in pairs])  # (k * minority groups, n_groups)
    # every entry of c @ wins.T is a sum of non-negative multiples of 1/2 no larger than the bound below:
    # under 2^24 / 2 each partial sum is exact in float32 too (whatever order BLAS adds in), at twice the speed
    bound = 2.0 * float(c.max(initial=0.0)) * float(wins.sum(axis=1).max(initial=0.0))
    if bound < FLOAT32_EXACT_INTEGERS:
        per_row = (c.astype(np.float32) @ wins.T.astype(np.float32)).astype(float)
    else:
        per_row = c @ wins.T
    per_row = per_row.reshape(c.shape[0], len(pairs), first.rows.size)
    numerator = np.einsum("bkr,br->bk", per_row, c[:, first.rows])
    total = ((c @ first.n_pos) * (c @ first.n_neg))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, numerator / np.where(total > 0, total, 1.0), np.nan)


def _metrics_use_group_pairs(n_cases: int, n_minority_groups: int, n_groups: int) -> bool:
    """Whether the group-level engine is cheaper than the row engine: its per-replicate work is a
    (minority groups x groups) product; the row engine's several passes over the cases (the ratio is measured in bench/blend.py)."""
    return n_minority_groups * n_groups <= GROUP_ENGINE_MAX_RATIO * n_cases


def bootstrap_auc_matrix(
    y_true: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
) -> np.ndarray:
    """AUCs (n_boot, k) of k score vectors (rows of `scores`, shape (k, n)) on the *same* replicates
    (groups resampled with replacement, vectorised): the paired bootstrap. NaN where a class is absent.

    Each replicate's AUC is exact (integer pair counts). With patients the work runs on `GroupPairs`
    (per-patient pair counts, a matrix product per block of replicates); where groups are about
    as many as cases (no patient ids) a pass over the cases per replicate is cheaper and is used.
    """
    y = _metrics_labels(y_true, "bootstrap")
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.size:
        raise ValueError(f"bootstrap: {y.size} labels but scores of length {s.shape[1]}")
    _metrics_check_finite(s, "bootstrap")
    group_index, n_groups = _metrics_group_index(groups, y.size)
    minority = y if int(y.sum()) <= int((~y).sum()) else ~y
    grouped = _metrics_use_group_pairs(y.size, np.unique(group_index[minority]).size, n_groups)
    cells = max(BOOT_BLOCK_CELLS * n_groups // max(y.size, 1), 1)  # the replicate stream of every version
    out = np.empty((n_boot, s.shape[0]), dtype=float)
    if grouped:
        pairs = [group_pairs(y, row, group_index, n_groups) for row in s]
        batch = max(1, GROUP_BATCH_CELLS // max(n_groups, 1))  # replicates per matrix product
        blocks = bootstrap_count_blocks(n_groups, n_boot, seed, cells)
        pending: list[np.ndarray] = []
        done = 0
        for counts in itertools.chain(blocks, [None]):
            if counts is not None:
                pending.append(counts)
            if pending and (counts is None or sum(len(p) for p in pending) >= batch):
                stacked = np.vstack(pending)
                out[done:done + len(stacked)] = group_pairs_block_aucs(pairs, stacked)
                done += len(stacked)
                pending = []
        return out
    preps = [_metrics_prepare(y, row, group_index) for row in s]
    done = 0
    for counts in bootstrap_count_blocks(n_groups, n_boot, seed, cells):
        counts_t = np.ascontiguousarray(counts.T, dtype=float)
        for j, prep in enumerate(preps):
            out[done:done + len(counts), j] = _metrics_block_aucs(prep, counts_t)
        done += len(counts)
    return out


def bootstrap_aucs(
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
) -> np.ndarray:
    """AUC of each bootstrap replicate (groups resampled with replacement); NaN where a class is absent."""
    return bootstrap_auc_matrix(y_true, np.ravel(np.asarray(y_score, dtype=float))[None, :], groups, n_boot, seed)[:, 0]


@dataclass(frozen=True)
class PairedResult:
    """Paired patient-bootstrap comparison of two AUCs on the same cases: diff = auc1 - auc2,
    its percentile interval [low, high], bootstrap standard error and two-sided p-value."""

    auc1: float
    auc2: float
    diff: float
    low: float
    high: float
    se: float
    p: float
    n_boot: int
    n_groups: int


def paired_bootstrap_test(
    y_true: ArrayLike,
    score1: ArrayLike,
    score2: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = CI_LEVEL,
    seed: int = DEFAULT_BOOT_SEED,
) -> PairedResult:
    """Two-sided test of AUC(score1) = AUC(score2), resampling groups (patients) with both scores.

    z = diff / sd(bootstrap diffs), p = P(|N(0, 1)| > |z|) (as pROC's bootstrap test); identical
    scores give p = 1. Resampling patients keeps each patient's images (and their correlated
    labels and errors) together, which an image-level test (DeLong) does not.
    """
    y = _metrics_labels(y_true, "paired_bootstrap_test")
    s = np.vstack([np.ravel(np.asarray(score1, dtype=float)), np.ravel(np.asarray(score2, dtype=float))])
    n_groups = _metrics_group_index(groups, y.size)[1]
    reps = bootstrap_auc_matrix(y, s, groups, n_boot, seed)
    return paired_from_replicates(auc(y, s[0]), auc(y, s[1]), reps[:, 0], reps[:, 1], n_groups, level)


def paired_from_replicates(auc1: float, auc2: float, reps1: np.ndarray, reps2: np.ndarray, n_groups: int,
                           level: float = CI_LEVEL) -> PairedResult:
    """The paired test from two score vectors' AUCs on the *same* bootstrap replicates (NaN where a
    replicate held one class): what `paired_bootstrap_test` computes, for replicates kept from before."""
    diffs = np.asarray(reps1, dtype=float) - np.asarray(reps2, dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    diff = auc1 - auc2
    if diffs.size < 2:
        return PairedResult(auc1, auc2, diff, float("nan"), float("nan"), float("nan"), float("nan"), 0, n_groups)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    se = float(np.std(diffs, ddof=1))
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
    else:
        p = math.erfc(abs(diff / se) / math.sqrt(2.0))
    return PairedResult(auc1, auc2, diff, float(low), float(high), se, p, int(diffs.size), n_groups)


def interval_from_replicates(point: float, reps: np.ndarray, n_groups: int, level: float = CI_LEVEL) -> AucInterval:
    """Percentile interval of an AUC from its bootstrap replicates (NaN ones left out)."""
    reps = np.asarray(reps, dtype=float)
    reps = reps[~np.isnan(reps)]
    if math.isnan(point) or reps.size == 0:
        return AucInterval(point, float("nan"), float("nan"), level, 0, n_groups)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [tail, 1.0 - tail])
    return AucInterval(point, float(low), float(high), level, int(reps.size), n_groups,
                       max(quantile_mc_error(reps, tail), quantile_mc_error(reps, 1.0 - tail)))


def quantile_mc_error(reps: np.ndarray, q: float) -> float:
    """Monte Carlo standard error of the q-quantile of `reps` due to the finite replicate count B.

    The count of replicates below the true quantile is Binomial(B, q): the order statistics
    B q +- z sqrt(B q (1 - q)) bound a 95 % range for it, and that range over 2 z is the error.
    """
    x = np.sort(np.asarray(reps, dtype=float))
    b = x.size
    if b < 2:
        return float("nan")
    half = Z_95 * math.sqrt(b * q * (1.0 - q))
    lo, hi = int(max(math.floor(b * q - half), 0)), int(min(math.ceil(b * q + half), b - 1))
    return float((x[hi] - x[lo]) / (2.0 * Z_95))


def bootstrap_auc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = CI_LEVEL,
    seed: int = DEFAULT_BOOT_SEED,
) -> AucInterval:
    """Percentile bootstrap interval of the AUC, resampling groups (patients) rather than images."""
    y, s = _metrics_labels_scores(y_true, y_score, "bootstrap_auc_ci")
    point = auc(y, s)
    n_groups = _metrics_group_index(groups, y.size)[1]
    if math.isnan(point) or n_boot <= 0:
        return AucInterval(point, float("nan"), float("nan"), level, 0, n_groups)
    return interval_from_replicates(point, bootstrap_aucs(y, s, groups, n_boot, seed), n_groups, level)


def delong_components(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong structural components of k score vectors (rows of `scores`, shape (k, n)).

    Returns (aucs (k,), v_pos (k, m), v_neg (k, n_neg)): v_pos[i] is the share of negatives a
    positive outscores (ties 1/2), v_neg[j] the share of positives outscoring a negative.
    """
    y = _metrics_labels(y_true, "delong")
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.size:
        raise ValueError(f"delong: {y.size} labels but scores of length {s.shape[1]}")
    _metrics_check_finite(s, "delong")
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("delong: needs both positive and negative cases")
    k = s.shape[0]
    aucs = np.empty(k)
    v_pos = np.empty((k, m))
    v_neg = np.empty((k, n))
    for r in range(k):
        rank_all = midranks(s[r])
        rank_pos = midranks(s[r][y])
        rank_neg = midranks(s[r][~y])
        v_pos[r] = (rank_all[y] - rank_pos) / n
        v_neg[r] = 1.0 - (rank_all[~y] - rank_neg) / m
        aucs[r] = v_pos[r].mean()
    return aucs, v_pos, v_neg


def delong_covariance(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors and their DeLong covariance matrix (k, k)."""
    aucs, v_pos, v_neg = delong_components(y_true, scores)
    m, n = v_pos.shape[1], v_neg.shape[1]
    cov_pos = np.atleast_2d(np.cov(v_pos)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    cov_neg = np.atleast_2d(np.cov(v_neg)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, cov_pos / m + cov_neg / n


def delong_test(y_true: ArrayLike, score1: ArrayLike, score2: ArrayLike) -> DelongResult:
    """Two-sided DeLong test of AUC(score1) = AUC(score2) on the same cases.

    Identical rankings give se = 0; the p-value is then 1 (no evidence of a difference).
    """
    aucs, cov = delong_covariance(y_true, np.vstack([np.ravel(score1), np.ravel(score2)]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    p = 1.0 if se == 0.0 and diff == 0.0 else math.erfc(abs(z) / math.sqrt(2.0))
    return DelongResult(float(aucs[0]), float(aucs[1]), diff, se, z, p)


def delong_ci(y_true: ArrayLike, y_score: ArrayLike, z: float = Z_95) -> AucInterval:
    """Normal-approximation interval of one AUC from its DeLong variance (clipped to [0, 1])."""
    aucs, cov = delong_covariance(y_true, np.ravel(y_score)[None, :])
    a, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    level = math.erf(z / math.sqrt(2.0))
    return AucInterval(a, max(0.0, a - z * se), min(1.0, a + z * se), level, 0, int(np.size(y_true)))


def auc_by_group(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike) -> dict[Hashable, GroupAuc]:
    """AUC within each group (fold, sex, age band, site), keyed by the group value in sorted order."""
    y, s = _metrics_labels_scores(y_true, y_score, "auc_by_group")
    g = np.asarray(groups).ravel()
    if g.size != y.size:
        raise ValueError(f"auc_by_group: {g.size} group ids for {y.size} cases")
    keys = g.astype(str) if g.dtype == object else g
    out: dict[Hashable, GroupAuc] = {}
    for key in np.unique(keys):
        mask = keys == key
        value = key.item() if isinstance(key, np.generic) else key
        out[value] = GroupAuc(int(mask.sum()), int(y[mask].sum()), auc(y[mask], s[mask]))
    return out


def age_bands(ages: ArrayLike) -> np.ndarray:
    """Age-band label of each age (`AGE_BAND_LABELS`); missing (NaN or negative) -> "missing"."""
    a = np.asarray(ages, dtype=float).ravel()
    labels = np.asarray(AGE_BAND_LABELS, dtype=object)[np.searchsorted(AGE_BAND_EDGES, a, side="right")
                                                       .clip(0, len(AGE_BAND_LABELS) - 1)]
    labels[~np.isfinite(a) | (a < 0)] = AGE_MISSING_LABEL
    return labels
