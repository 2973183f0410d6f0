"""The blend-method registry: learn a weighting of runs on OOF predictions, apply it to test.

In:  a prediction matrix P (n cases x m runs, probabilities), labels y and fold ids (for
     methods that cross-validate inside), a method name and its params.
Out: a `FittedBlend` (weights, bias, the transform and link it uses) and `apply_blend`, which
     maps any P with the same m columns (OOF, test, new images) to blended scores.

Every method is: transform each column (``prob`` as is, ``rank`` = normalised midrank in (0, 1)
within the set being blended, ``logit``, ``power``), take the weighted sum ``X @ w + bias``, then
the link (``identity``, ``sigmoid``, ``root`` for the power mean). Ranks are taken within the set
being blended (OOF within OOF, test within test), so runs on different scales are comparable.

Adding a method is one function and one line in `METHODS`: ``def fit_x(X, y, folds, params) ->
Weights`` where X is already transformed; declare its transform, link and default params.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kernels.metrics import auc, auc_split
from kernels.metrics import midranks as column_midranks
from kit.errors import KitError

LOGIT_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit
NM_SIMPLEX_STEP = 1.0  # Nelder-Mead: first simplex moves each weight by this share of the mean
IMPROVE_TOL = 1e-12  # an AUC change smaller than this is no improvement
CHANCE_AUC = 0.5  # cv_weighted's floor when no baseline run is blended
STACK_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths tried by stacking
LOGREG_SOLVER = "newton-cholesky"  # few features (runs), many rows: exact Newton steps, ~10x faster than lbfgs here
LOGREG_MAX_ITER = 1_000  # Newton iterations allowed (about ten are used)
LOGREG_TOL = 1e-8  # stopping tolerance
MAX_RANK_ROWS = 1 << 26  # ranks read back by counting (`_rank_keys`) for sets of at most this many rows
GREEDY_PARALLEL_MIN_CELLS = 1_000_000  # candidates x majority rows from which greedy scores on every core
COUNT_BIN_BITS = 14  # greedy's exact AUC by counting: about 2^14 coarse bins of the blended scores


@dataclass(frozen=True)
class Weights:
    """What a fit function returns: one weight per run, a bias, and notes for the report."""

    weights: np.ndarray
    bias: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)


FitFn = Callable[[np.ndarray, np.ndarray, np.ndarray, Mapping[str, Any]], Weights]


@dataclass(frozen=True)
class BlendMethod:
    """A registered method: its fit function, transform, link, default params and a one-line summary."""

    fit: FitFn
    transform: str
    link: str
    defaults: Mapping[str, Any]
    summary: str


@dataclass(frozen=True)
class FittedBlend:
    """A learned blend; `apply_blend` uses it on any matrix with the same runs (columns)."""

    method: str
    params: Mapping[str, Any]
    transform: str
    link: str
    weights: tuple[float, ...]
    bias: float
    info: Mapping[str, Any] = field(default_factory=dict)


# ---- transforms and links -------------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def midranks(P: np.ndarray) -> np.ndarray:
    """Each column's 1-based midranks, ties sharing their mean rank (`kernels.metrics.midranks` column by
    column: equal to scipy.stats.rankdata, at a third of pandas' ``rank`` time here, without SciPy's import)."""
    columns = np.ascontiguousarray(np.asarray(P, dtype=float).T)
    return np.stack([column_midranks(c) for c in columns], axis=1) if columns.size else columns.T.copy()


def rank01(P: np.ndarray) -> np.ndarray:
    """Each column's midranks mapped into (0, 1): (rank - 0.5) / n."""
    P = np.asarray(P, dtype=float)
    return np.ascontiguousarray((midranks(P) - 0.5) / P.shape[0])


def _logit(P: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    p = np.clip(P, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _power(P: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    return np.clip(P, 0.0, None) ** float(params["power"])


TRANSFORMS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "prob": lambda P, params: np.asarray(P, dtype=float),
    "rank": lambda P, params: rank01(P),
    "logit": _logit,
    "power": _power,
}

LINKS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "identity": lambda z, params: z,
    "sigmoid": lambda z, params: sigmoid(z),
    "root": lambda z, params: np.clip(z, 0.0, None) ** (1.0 / float(params["power"])),
}


# ---- fit functions ------------------------------------------------------------------------------


def fit_equal(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Equal weights (mean, rank mean, power mean, mean of logits): nothing is learned."""
    m = X.shape[1]
    return Weights(np.full(m, 1.0 / m))


def _normalise(w: np.ndarray) -> np.ndarray:
    total = np.abs(w).sum()
    return w / total if total > 0 else np.full(w.size, 1.0 / w.size)


def fit_auc_weights(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Non-negative weights maximising the OOF AUC of X @ w (Nelder-Mead from equal weights)."""
    from scipy.optimize import minimize

    m = X.shape[1]
    x0 = np.full(m, 1.0 / m)
    if m == 1:
        return Weights(x0, info={"evaluations": 0})

    def loss(theta: np.ndarray) -> float:
        return -auc(y, X @ np.abs(theta))

    simplex = np.vstack([x0] + [x0 + NM_SIMPLEX_STEP / m * np.eye(m)[i] for i in range(m)])
    res = minimize(
        loss, x0, method="Nelder-Mead",
        options={"initial_simplex": simplex, "maxfev": int(params["max_evals"]), "xatol": float(params["xatol"]),
                 "fatol": IMPROVE_TOL},
    )
    best = np.abs(res.x) if -res.fun >= -loss(x0) else x0
    return Weights(_normalise(best), info={"evaluations": int(res.nfev)})


def _int_ranks(X: np.ndarray, headroom: int) -> np.ndarray:
    """Twice the midranks of each column as integers, rows = runs (exact sums, fast sorts).

    Fast path: when X holds ``rank01`` values, of these rows (the submitted fit) or of a larger set that
    holds them (a nested fold's training rows), each value is read back as an exact integer key and the
    rows are ranked by counting instead of sorting (`_rank_keys`); any other X is ranked by sorting.
    """
    n = X.shape[0]
    dtype = np.uint32 if headroom * 2 * (n + 1) < np.iinfo(np.uint32).max else np.uint64  # unsigned sorts fastest
    keys = _rank_keys(X)
    if keys is not None:
        return _twice_midranks(keys).astype(dtype)
    return np.rint(2.0 * midranks(X).T).astype(dtype)


def _rank_keys(X: np.ndarray) -> np.ndarray | None:
    """Integer keys k (columns as rows) with X == (k / 2 - 0.5) / N exactly, when X holds ``rank01`` values of
    N rows (these rows, or a larger set that holds them); else None.

    N is tried as the number of rows, then as read off the smallest value (0.5 / N, the first rank, present in
    practice among 50 runs' columns). A key is accepted only when every value is *exactly* what ``rank01``
    computes from it, and (k / 2 - 0.5) / N is strictly increasing in k, so the keys order and tie the rows
    exactly as X does: ranks counted from them are X's ranks, whether or not X was ranked over these rows."""
    if X.size == 0:
        return None
    low = float(X.min())
    if not low > 0:
        return None
    for big in dict.fromkeys((X.shape[0], round(0.5 / low))):
        if big < X.shape[0] or big > MAX_RANK_ROWS:
            continue
        keys = np.rint(2.0 * big * X.T + 1.0)
        if np.array_equal((keys / 2.0 - 0.5) / big, X.T):
            return keys.astype(np.int64)
    return None


def _twice_midranks(keys: np.ndarray) -> np.ndarray:
    """Twice the midranks, within each row of `keys` (small non-negative integers), by counting: a value's
    midrank is (values below it) + (its ties + 1) / 2, so twice that is an integer (no sort, O(n + range))."""
    out = np.empty_like(keys)
    for c, key in enumerate(keys):
        counts = np.bincount(key)
        below = np.cumsum(counts) - counts
        out[c] = 2 * below[key] + counts[key] + 1
    return out


def counted_auc(minority: np.ndarray, majority: np.ndarray, minority_positive: bool) -> float:
    """Exact AUC of integer scores (greedy's blended twice-ranks) by counting, without sorting the majority.

    The majority class's scores are counted into about 2^COUNT_BIN_BITS coarse bins (a bin is a run of
    2^shift consecutive values): every majority score in a lower bin than a minority score is below it.
    Only the majority scores that share a bin with some minority score (a few per cent: the minority is
    small) are sorted and searched exactly; the width of the bins changes the work, never the count. Twice the pairs the minority case wins, ties once, is an exact
    integer, so the AUC equals a sort's (`kernels.metrics.auc_presorted`) to the last bit, at about a
    third of its time on 50 runs x 33,126 rows.
    """
    n_min, n_maj = minority.size, majority.size
    if n_min == 0 or n_maj == 0:
        return np.nan
    shift = max(0, int(majority.max()).bit_length() - COUNT_BIN_BITS)  # the bin width: speed only, never the count
    coarse = majority >> shift
    hist = np.bincount(coarse)
    below = np.cumsum(hist)
    below -= hist
    queries = np.sort(minority)  # sorted queries: the searches below stay in cache
    bins = np.minimum(queries >> shift, hist.size - 1)  # past the top bin: counted in it (all its scores are below)
    shared = np.zeros(hist.size, dtype=bool)
    shared[bins] = True
    near = np.sort(majority[shared[coarse]])
    start = np.searchsorted(near, bins.astype(majority.dtype) << shift)
    twice_u = (2 * int(below[bins].sum()) + int(np.searchsorted(near, queries).sum())
               + int(np.searchsorted(near, queries, side="right").sum()) - 2 * int(start.sum()))
    pairs = 2 * n_min * n_maj
    return (twice_u if minority_positive else pairs - twice_u) / pairs


class PathStore(Protocol):
    """Where greedy keeps the paths it walked (`kit.blend.memo.Memo` is one): load/save by key parts."""

    def load(self, namespace: str, parts: Any) -> Any: ...

    def save(self, namespace: str, parts: Any, value: Any) -> None: ...


GREEDY_PATHS: ContextVar[PathStore | None] = ContextVar("greedy_paths", default=None)  # set by a blend while it runs
GREEDY_PATH_NAMESPACE = "greedy-path"


def _column_keys(R: np.ndarray) -> list[bytes]:
    """sha256 of each candidate's integer ranks: a column's identity in a stored path, whatever its position."""
    return [hashlib.sha256(row.tobytes()).digest() for row in R]


def fit_greedy(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Caruana et al. (2004) forward selection with replacement on ranks.

    Start from the `init` best single runs, then repeatedly add (again) the run whose addition
    gives the best AUC; stop after `max_steps` additions or `patience` additions without a new
    best; keep the best prefix. Weights = how often each run was picked / total picks.

    Replay (exact): when a blend has set `GREEDY_PATHS`, the AUC of every candidate at every step of an
    earlier fit on the same rows is stored by the candidate's content (its ranks' sha256). While this fit
    walks the same picks as that one, a candidate seen there is not scored again: only new candidates are
    (a run that landed since). From the first step where the picks differ, every candidate is scored.
    The AUCs are the same numbers a fresh fit computes, so the result is identical; only the work differs.
    """
    m = X.shape[1]
    max_steps, patience, init = int(params["max_steps"]), int(params["patience"]), int(params["init"])
    R = _int_ranks(X, max_steps + init + 1)
    y = np.asarray(y, dtype=bool)
    minority_positive = bool(y.sum() <= (~y).sum())
    Rmin = np.ascontiguousarray(R[:, y] if minority_positive else R[:, ~y])
    Rmaj = np.ascontiguousarray(R[:, ~y] if minority_positive else R[:, y])

    store = GREEDY_PATHS.get()
    keys = _column_keys(R) if store is not None else []
    path_key = ("greedy", hashlib.sha256(np.packbits(y).tobytes()).hexdigest(), int(y.size), max_steps, patience, init)
    prior = store.load(GREEDY_PATH_NAMESPACE, path_key) if store is not None else None
    # scores by the number of picks made before them (the state is the picks so far: same picks, same AUCs)
    usable = isinstance(prior, dict) and isinstance(prior.get("steps"), dict) and isinstance(prior.get("picks"), list)
    prior_steps: dict[int, dict[bytes, float]] = prior["steps"] if usable else {}
    prior_picks: list[bytes] = prior["picks"] if usable else []
    walked: dict[int, dict[bytes, float]] = {}
    picked: list[bytes] = []

    parts = min((os.cpu_count() or 1) if Rmaj.size >= GREEDY_PARALLEL_MIN_CELLS else 1, m)

    def scores_of(s_min: np.ndarray, s_maj: np.ndarray) -> np.ndarray:
        """Every candidate's AUC now: stored ones (after the same picks) reused, the others computed."""
        done = len(picked)
        known = prior_steps.get(done, {}) if picked == prior_picks[:done] and len(prior_picks) >= done else {}
        out = np.array([known.get(k, np.nan) for k in keys]) if known else np.full(m, np.nan)
        todo = np.flatnonzero(np.array([k not in known for k in keys])) if known else np.arange(m)

        def block_scores(index: np.ndarray) -> np.ndarray:  # NumPy's counting, sorting and searching release the GIL
            return np.array([counted_auc(Rmin[j] + s_min, Rmaj[j] + s_maj, minority_positive) for j in index])

        if todo.size:
            chunks = [c for c in np.array_split(todo, min(parts, todo.size)) if c.size]
            out[todo] = np.concatenate(list(pool.map(block_scores, chunks)) if len(chunks) > 1
                                       else [block_scores(chunks[0])])
        if store is not None:
            walked[done] = dict(zip(keys, out.tolist(), strict=True))
        return out

    with ThreadPoolExecutor(max_workers=parts) as pool:
        singles = scores_of(np.zeros(Rmin.shape[1], R.dtype), np.zeros(Rmaj.shape[1], R.dtype))
        counts = np.zeros(m, dtype=int)
        for j in np.argsort(-singles, kind="stable")[: max(1, min(init, m))]:
            counts[j] += 1
            picked.append(keys[j] if keys else b"")
        s_min, s_maj = (counts @ Rmin).astype(R.dtype), (counts @ Rmaj).astype(R.dtype)
        best_auc = counted_auc(s_min, s_maj, minority_positive)
        best_counts, since_best = counts.copy(), 0
        history = [best_auc]
        for _ in range(max_steps):
            scores = scores_of(s_min, s_maj)
            j = int(np.nanargmax(scores))
            counts[j] += 1
            picked.append(keys[j] if keys else b"")
            s_min, s_maj = s_min + Rmin[j], s_maj + Rmaj[j]
            history.append(float(scores[j]))
            if scores[j] > best_auc + IMPROVE_TOL:
                best_auc, best_counts, since_best = float(scores[j]), counts.copy(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
    if store is not None:
        store.save(GREEDY_PATH_NAMESPACE, path_key, {"steps": walked, "picks": picked})
    return Weights(best_counts / best_counts.sum(), info={"picks": best_counts.tolist(), "auc_path": history})


def fit_cv_weighted(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Weights proportional to each run's OOF AUC above a floor: the baseline run's AUC on the
    same rows (column `params["baseline"]`), or chance (0.5) when there is none (-1). Runs at or
    below the floor get weight 0 (the baseline itself among them); all at or below -> equal weights."""
    m = X.shape[1]
    aucs = np.nan_to_num(np.asarray(auc_split(X[y].T, X[~y].T), dtype=float), nan=CHANCE_AUC)
    column = int(params["baseline"])
    if column >= m:
        raise KitError(f"cv_weighted: baseline column {column} but only {m} runs")
    floor = float(aucs[column]) if column >= 0 else CHANCE_AUC
    lift = np.clip(aucs - floor, 0.0, None)
    w = lift / lift.sum() if lift.sum() > 0 else np.full(m, 1.0 / m)
    return Weights(w, info={"floor": floor, "oof_auc": aucs.tolist()})


def fit_hill_climb(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Coordinate hill climbing on OOF AUC from equal weights.

    Each round tries w_j +/- step for every run and takes the best move that raises the AUC;
    when none does, the step halves, down to `min_step`. `negative` allows weights below zero.
    """
    m = X.shape[1]
    y = np.asarray(y, dtype=bool)
    Xp, Xn = np.ascontiguousarray(X[y].T), np.ascontiguousarray(X[~y].T)
    w = np.full(m, 1.0 / m)
    step, min_step, negative = float(params["step"]), float(params["min_step"]), bool(params["negative"])
    current = float(auc_split(w @ Xp, w @ Xn))
    moves = np.vstack([np.eye(m), -np.eye(m)])
    rounds = 0
    while step >= min_step and rounds < int(params["max_rounds"]):
        rounds += 1
        cands = w + step * moves
        ok = np.abs(cands).sum(axis=1) > 0
        if not negative:
            ok &= (cands >= 0).all(axis=1)
        scores = np.full(len(cands), -np.inf)
        idx = np.flatnonzero(ok)
        if idx.size:
            scores[idx] = auc_split(cands[idx] @ Xp, cands[idx] @ Xn)
        best = int(np.argmax(scores))
        if scores[best] > current + IMPROVE_TOL:
            w, current = cands[best], float(scores[best])
        else:
            step /= 2.0
    return Weights(_normalise(w), info={"rounds": rounds, "auc": current})


def _cv_folds(y: np.ndarray, folds: np.ndarray) -> np.ndarray | None:
    """PredefinedSplit test folds for choosing C: a fold without both classes is never held out
    (-1, always trained on), as its AUC is undefined; None when fewer than two folds remain."""
    out = np.asarray(folds).copy()
    for k in np.unique(folds):
        if np.unique(y[folds == k]).size < 2:
            out[folds == k] = -1
    return out if np.unique(out[out >= 0]).size >= 2 else None


def logistic(C: float) -> Any:
    """scikit-learn's L2 logistic regression (unpenalised intercept) at inverse strength C."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, tol=LOGREG_TOL, max_iter=LOGREG_MAX_ITER, solver=LOGREG_SOLVER)


def fit_stacking(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]) -> Weights:
    """Logistic regression on rank features (scikit-learn's LogisticRegressionCV): C from
    `c_grid` by fold-aware CV (PredefinedSplit on the OOF folds, mean held-out-fold AUC; ties go
    to the smaller C), then refitted on all rows. `default_c` when no two folds hold both classes."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    y = np.asarray(y, dtype=int)
    grid = sorted(float(c) for c in params["c_grid"])
    test_folds = _cv_folds(y, np.asarray(folds))
    if test_folds is None:
        c = float(params["default_c"])
        model = logistic(c).fit(X, y)
        return Weights(model.coef_[0], float(model.intercept_[0]), {"C": c, "cv_auc_by_C": {}})
    model = LogisticRegressionCV(Cs=grid, cv=PredefinedSplit(test_folds), scoring="roc_auc", l1_ratios=(0.0,),
                                 tol=LOGREG_TOL, max_iter=LOGREG_MAX_ITER, solver=LOGREG_SOLVER,
                                 use_legacy_attributes=False).fit(X, y)
    by_c = np.asarray(model.scores_).mean(axis=0).reshape(-1)
    return Weights(model.coef_[0], float(model.intercept_[0]),
                   {"C": float(model.C_), "cv_auc_by_C": {str(c): float(a) for c, a in zip(grid, by_c, strict=True)}})


# ---- the registry: one line per method ------------------------------------------------------------

METHODS: dict[str, BlendMethod] = {
    "mean": BlendMethod(fit_equal, "prob", "identity", {}, "mean of probabilities"),
    "rank_mean": BlendMethod(fit_equal, "rank", "identity", {}, "mean of ranks, the 2020 winners' blend"),
    "power_mean": BlendMethod(fit_equal, "power", "root", {"power": 2.0}, "power mean of probabilities"),
    "logit_mean": BlendMethod(fit_equal, "logit", "sigmoid", {}, "mean of logits"),
    "auc_weights": BlendMethod(fit_auc_weights, "rank", "identity", {"max_evals": 2000, "xatol": 1e-4},
                               "weights on ranks maximising OOF AUC (Nelder-Mead)"),
    "greedy": BlendMethod(fit_greedy, "rank", "identity", {"max_steps": 50, "patience": 10, "init": 1},
                          "forward selection with replacement (Caruana 2004)"),
    "hill_climb": BlendMethod(fit_hill_climb, "rank", "identity",
                              {"step": 0.1, "min_step": 0.005, "negative": False, "max_rounds": 500},
                              "hill climbing on rank weights"),
    "cv_weighted": BlendMethod(fit_cv_weighted, "rank", "identity", {"baseline": -1},
                               "ranks weighted by each run's OOF AUC above the baseline run's"),
    "stacking": BlendMethod(fit_stacking, "rank", "sigmoid", {"c_grid": list(STACK_C_GRID), "default_c": 1.0},
                            "logistic regression on ranks, C by fold-aware CV"),
}


# ---- fit / apply ---------------------------------------------------------------------------------


def learns_from_labels(name: str) -> bool:
    """Whether method `name` learns from the OOF labels (then only nested CV scores it honestly)."""
    return METHODS[name].fit is not fit_equal


def method_params(name: str, params: Mapping[str, Any] | None = None, where: str = "method") -> dict[str, Any]:
    """The method's defaults overridden by `params`; unknown methods, keys or wrong types -> KitError."""
    if name not in METHODS:
        raise KitError(f"{where}: unknown blend method {name!r} (expected one of {', '.join(METHODS)})")
    defaults = METHODS[name].defaults
    merged = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            allowed = ", ".join(defaults) or "(none)"
            raise KitError(f"{where}.params.{key}: unknown parameter of {name} (expected one of {allowed})")
        default = defaults[key]
        ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
        if isinstance(value, bool) != isinstance(default, bool) or not ok:
            raise KitError(f"{where}.params.{key}: got {value!r}, expected a value like {default!r}")
        merged[key] = value
    if name == "power_mean" and not merged["power"] > 0:
        raise KitError(f"{where}.params.power: got {merged['power']!r}, expected a number > 0")
    return merged


def transform(name: str, P: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Method `name`'s column transform of P (n, m), taken within P (ranks within this set)."""
    return TRANSFORMS[METHODS[name].transform](np.asarray(P, dtype=float), params)


def fit_transformed(
    name: str, X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any]
) -> FittedBlend:
    """Learn method `name` on already transformed features X (see `transform`); params merged."""
    spec = METHODS[name]
    fitted = spec.fit(np.asarray(X, dtype=float), np.asarray(y, dtype=bool), np.asarray(folds), params)
    weights = tuple(float(w) for w in np.asarray(fitted.weights, dtype=float).ravel())
    if len(weights) != X.shape[1]:
        raise ValueError(f"blend method {name}: {len(weights)} weights for {X.shape[1]} runs")
    return FittedBlend(name, dict(params), spec.transform, spec.link, weights, float(fitted.bias), dict(fitted.info))


def combine(fitted: FittedBlend, X: np.ndarray) -> np.ndarray:
    """Weighted sum of transformed features plus bias, through the link."""
    z = np.asarray(X, dtype=float) @ np.asarray(fitted.weights) + fitted.bias
    return LINKS[fitted.link](z, fitted.params)


def fit_blend(
    name: str,
    P: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    params: Mapping[str, Any] | None = None,
) -> FittedBlend:
    """Learn method `name` on OOF matrix P (n, m) with labels y and fold ids."""
    merged = method_params(name, params)
    return fit_transformed(name, transform(name, P, merged), y, folds, merged)


def apply_blend(fitted: FittedBlend, P: np.ndarray) -> np.ndarray:
    """Blend P (n, m) with the learned weights: transform within P, weighted sum, link."""
    P = np.asarray(P, dtype=float)
    if P.ndim != 2 or P.shape[1] != len(fitted.weights):
        raise ValueError(f"apply_blend: predictions of shape {P.shape} for {len(fitted.weights)} runs")
    return combine(fitted, TRANSFORMS[fitted.transform](P, fitted.params))
