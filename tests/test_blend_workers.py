"""A blend after a run lands, in seconds (issue #27): the work split over processes, threads and stored parses
must never change a figure or a file.

- Plots drawn in forked worker processes (`kit.blend.painter`) are byte for byte the plots drawn in the blend's
  own process; a plot that fails in a worker fails the blend with its own error; a plot a worker never
  delivers (dead or hung) is drawn in the blend's process; drawn plots are stored in and copied from kit's
  cache as before.
- Parsed run CSVs stored by content (`load_run(frames=...)`) give the frame a fresh parse gives; a changed file
  is parsed again; an unreadable stored entry is parsed again.
- Greedy's AUC by counting equals the AUC a sort gives, to the last bit, on any integer scores with ties.
- Greedy's ranks of a nested fold's rows, read back by counting from the ranks over all rows, equal the ranks a
  sort gives, ties included; the fits of `score_method` run in threads and give what a sequential loop gives.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.blend_fixtures import PathsInMemory, make_cohort, make_run, signal_preds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.contracts import MANIFEST_FILE, OOF_FILE, file_digest, read_oof, write_csv
from kernels.metrics import AucInterval, auc, auc_presorted
from kit.blend import plots
from kit.blend.analysis import SubgroupRow
from kit.blend.memo import Memo
from kit.blend.methods import (
    GREEDY_PATHS,
    _int_ranks,
    _rank_keys,
    counted_auc,
    fit_blend,
    method_params,
    midranks,
    rank01,
    transform,
)
from kit.blend.nested import nested_scores, score_method
from kit.blend.painter import Painter, painter_count
from kit.run.folders import FRAME_NAMESPACE, load_run

needs_fork = pytest.mark.skipif(painter_count() == 0, reason="plot workers are forked on Linux with 2+ cores only")


def _plot_jobs() -> list[tuple]:
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.2).astype(int)
    scores = rng.random(400) + 0.5 * y
    labels = [f"run-{j:02d}" for j in range(12)]
    matrix = np.corrcoef(rng.normal(size=(12, 50)))
    groups: dict[str, list[SubgroupRow]] = {"sex": [("male", 200, 40, AucInterval(0.7, 0.6, 0.8, 0.95, 1000, 50)),
                                                    ("female", 200, 40, AucInterval(0.65, 0.55, 0.75, 0.95, 1000, 50))]}
    return [
        ("correlation", "correlation.png", plots.plot_correlation, (labels, matrix), {}),
        ("roc", "roc.png", plots.plot_roc, (y, {"a": (scores, 0.7), "b": (scores[::-1], 0.5)}), {"highlight": "a"}),
        ("histogram", "histogram.png", plots.plot_histogram, (y, scores, "scores by class"), {}),
        ("weights", "weights.png", plots.plot_weights, (labels, {"greedy": list(rng.dirichlet(np.ones(12)))}), {}),
        ("subgroups", "subgroups.png", plots.plot_subgroups, (groups,), {}),
    ]


def _paint(folder: Path, memo: Memo, workers: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    paint = Painter(folder, memo, workers)
    try:
        for key, name, plot, args, kwargs in _plot_jobs():
            paint.draw(key, name, plot, *args, **kwargs)
        return paint.finish()
    finally:
        paint.close()


@needs_fork
def test_plots_drawn_in_worker_processes_equal_plots_drawn_here(tmp_path: Path) -> None:
    off = Memo(None)
    here = _paint(tmp_path / "here", off, 0)
    there = _paint(tmp_path / "workers", off, 2)
    assert here == there and len(here) == len(_plot_jobs())
    for name in here.values():
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


@needs_fork
def test_plots_drawn_in_workers_are_cached_and_copied_back(tmp_path: Path) -> None:
    memo = Memo(tmp_path / "cache")
    _paint(tmp_path / "first", memo, 2)
    assert memo.misses.get("plot") == len(_plot_jobs()) and not memo.hits
    again = Memo(tmp_path / "cache")
    _paint(tmp_path / "second", again, 2)
    assert again.hits.get("plot") == len(_plot_jobs()) and not again.misses
    for path in (tmp_path / "first").iterdir():
        assert (tmp_path / "second" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_plot_that_fails_fails_with_its_own_error_wherever_it_is_drawn(tmp_path: Path, workers: int) -> None:
    if workers and painter_count() == 0:
        pytest.skip("no plot workers on this machine")
    paint = Painter(tmp_path, Memo(None), workers)
    try:
        with pytest.raises(IndexError):  # three labels, a 2 x 2 matrix
            paint.draw("correlation", "c.png", plots.plot_correlation, ["a", "b", "c"], np.eye(2))
            paint.finish()
    finally:
        paint.close()


PARENT = os.getpid()


def _hangs_in_a_worker(path: str, text: str) -> None:
    """A plot that never finishes in a worker process (as one killed or deadlocked would) but draws here."""
    if os.getpid() != PARENT:
        time.sleep(3600)
    Path(path).write_text(text)


@needs_fork
def test_plots_a_worker_never_delivers_are_drawn_here(tmp_path: Path) -> None:
    paint = Painter(tmp_path, Memo(None), 2)
    try:
        paint.draw("histogram", "h.png", _hangs_in_a_worker, "drawn")
        paint.draw("correlation", "c.png", plots.plot_correlation, ["a", "b"], np.eye(2))
        assert paint.finish(wait_s=1.0) == {"histogram": "h.png", "correlation": "c.png"}
    finally:
        paint.close()
    assert (tmp_path / "h.png").read_text() == "drawn" and (tmp_path / "c.png").stat().st_size > 0


def _run(tmp_path: Path) -> Path:
    cohort = make_cohort(n=200, n_test=40, prevalence=0.2, images_per_patient=4)
    return make_run(tmp_path / "runs", "exp-a", cohort, *signal_preds(cohort, 0.8, seed=1))


def _rewrite_oof(folder: Path, frame: pd.DataFrame) -> None:
    """A new oof.csv and the manifest's record of it (as a rerun of the run would leave them)."""
    write_csv(frame, folder / OOF_FILE)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][OOF_FILE] = file_digest(folder / OOF_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_parsed_run_files_are_reused_by_content_and_never_stale(tmp_path: Path) -> None:
    folder = _run(tmp_path)
    memo = Memo(tmp_path / "cache")
    first = load_run(folder, frames=memo)
    assert not memo.hits and len(list((tmp_path / "cache" / FRAME_NAMESPACE).iterdir())) == 2  # oof + test stored
    again = load_run(folder, frames=memo)
    assert memo.hits.get(FRAME_NAMESPACE) == 2
    plain = load_run(folder)
    for run in (first, again):
        pd.testing.assert_frame_equal(run.oof, plain.oof)
        pd.testing.assert_frame_equal(run.test, plain.test)

    changed = plain.oof.assign(pred=plain.oof["pred"][::-1].to_numpy())  # same size and names, new predictions
    _rewrite_oof(folder, changed)
    after = load_run(folder, frames=memo)
    pd.testing.assert_frame_equal(after.oof, read_oof(folder / OOF_FILE))
    assert not np.array_equal(after.oof["pred"].to_numpy(), plain.oof["pred"].to_numpy())

    for entry in (tmp_path / "cache" / FRAME_NAMESPACE).iterdir():
        entry.write_bytes(b"not a pickle")
    pd.testing.assert_frame_equal(load_run(folder, frames=memo).oof, after.oof)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_min=st.integers(0, 60), n_maj=st.integers(0, 600),
       top=st.sampled_from([2, 7, 300, 70_000, 5_000_000, 2**40]), wide=st.booleans())
def test_greedys_counted_auc_equals_a_sorts_to_the_last_bit(seed: int, n_min: int, n_maj: int, top: int,
                                                              wide: bool) -> None:
    """Coarse bins, shared bins, the minority above every majority score, ties in and across bins."""
    rng = np.random.default_rng(seed)
    dtype = np.uint64 if wide or top > 2**31 else np.uint32
    minority, majority = (rng.integers(0, top, size).astype(dtype) for size in (n_min, n_maj))
    for minority_positive in (True, False):
        got = counted_auc(minority, majority, minority_positive)
        if n_min == 0 or n_maj == 0:
            assert np.isnan(got)
            continue
        want = auc_presorted(minority[None].astype(float), np.sort(majority)[None].astype(float), minority_positive)
        assert got == want[0]
        labels = np.r_[np.full(n_min, minority_positive), np.full(n_maj, not minority_positive)]
        assert got == auc(labels, np.r_[minority, majority].astype(float))


def _twice_sorted_midranks(X: np.ndarray) -> np.ndarray:
    return np.rint(2.0 * midranks(X).T).astype(np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(4, 300), m=st.integers(1, 6), levels=st.sampled_from([2, 5, 0]),
       share=st.floats(0.3, 0.95))
def test_ranks_of_a_folds_rows_read_back_by_counting_equal_a_sort(seed: int, n: int, m: int, levels: int,
                                                                   share: float) -> None:
    """The ranks over all rows (`rank01`, ties as midranks) restricted to a nested fold's training rows:
    ranked again within those rows by counting, they equal a sort's midranks, whatever the ties."""
    rng = np.random.default_rng(seed)
    P = rng.integers(0, levels, size=(n, m)).astype(float) if levels else rng.random((n, m))
    X = rank01(P)
    rows = rng.random(n) < share
    rows[int(np.argmin(X[:, 0]))] = True  # the first rank among the rows, as among 50 runs' columns in practice
    subset = X[rows]
    got = _int_ranks(subset, headroom=4).astype(np.int64)
    assert np.array_equal(got, _twice_sorted_midranks(subset))
    if levels == 0:
        assert _rank_keys(subset) is not None  # untied ranks of a larger set: the counting path was taken


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(1, 4), edge=st.sampled_from(["sum", "margin"]), step=st.integers(-3, 3))
def test_greedys_integer_ranks_hold_every_sum_of_picks(n: int, m: int, edge: str, step: int) -> None:
    """Twice a midrank is at most 2n, and greedy sums at most `headroom` of them: 64 bits whenever such a sum
    could pass 2^32 - 1 (a uint32 sum would wrap around and reorder the blend), 32 bits (faster sorts and
    counts) whenever it fits with a rank to spare. Headrooms are drawn at both edges."""
    limit = int(np.iinfo(np.uint32).max)
    headroom = max(1, limit // (2 * n if edge == "sum" else 2 * (n + 1)) + step)
    X = rank01(np.arange(n * m, dtype=float).reshape(n, m))
    got = _int_ranks(X, headroom)
    if headroom * 2 * n > limit:
        assert got.dtype == np.uint64
    if headroom * 2 * (n + 1) < limit:
        assert got.dtype == np.uint32
    assert np.array_equal(got.astype(np.int64), _twice_sorted_midranks(X))


def _greedy_as_documented(P: np.ndarray, y: np.ndarray, max_steps: int, patience: int, init: int) -> list[int]:
    """Caruana's selection as `fit_greedy` documents it, on ranks: the `init` best single runs (the first listed on
    equal AUCs), then the run whose addition scores best (the first listed on equal AUCs); the best prefix."""
    R = midranks(P)
    m = P.shape[1]
    singles = [auc(y, R[:, j]) for j in range(m)]
    counts = [0] * m
    for j in sorted(range(m), key=lambda j: -singles[j])[: max(1, min(init, m))]:
        counts[j] += 1
    best, best_counts, since = auc(y, R @ np.array(counts)), list(counts), 0
    for _ in range(max_steps):
        scores = [auc(y, R @ (np.array(counts) + np.eye(m, dtype=int)[j])) for j in range(m)]
        j = int(np.argmax(scores))
        counts[j] += 1
        if scores[j] > best + 1e-12:
            best, best_counts, since = scores[j], list(counts), 0
        else:
            since += 1
            if since >= patience:
                break
    return best_counts


@pytest.mark.parametrize("init", [3, 7])
def test_greedy_gives_equal_runs_picks_in_their_listed_order(init: int) -> None:
    """Many runs with the same predictions (a run pulled twice, seeds that agree): their single AUCs tie, and
    the picks go to the first listed, as documented, also among 24 runs where an unstable sort would not;
    picks are counted in integers (blend.json's `info.picks`)."""
    rng = np.random.default_rng(init)
    n = 400
    y = (rng.random(n) < 0.2).astype(int)
    y[:2] = [0, 1]
    distinct = [np.round(rng.normal(size=n) + s * y, 1) for s in (0.4, 0.8, 0.8, 1.2)]
    P = np.column_stack([distinct[i] for i in rng.integers(0, 4, 24)])
    params = {"max_steps": 6, "patience": 3, "init": init}
    fitted = fit_blend("greedy", P, y, np.arange(n) % 4, params)
    assert fitted.info["picks"] == _greedy_as_documented(P, y, **params)
    assert all(type(p) is int for p in fitted.info["picks"])


def test_greedy_replays_a_stored_path_without_scoring_a_candidate_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fit again, with its path stored, scores no candidate (only the starting blend's AUC is taken);
    with one run added, only that run is scored until the path changes. The result is the fresh fit's."""
    import kit.blend.methods as methods

    scored: list[int] = []
    real = methods.counted_auc
    monkeypatch.setattr(methods, "counted_auc", lambda *a: scored.append(1) or real(*a))
    rng = np.random.default_rng(2)
    n, m = 500, 6
    y = (rng.random(n) < 0.2).astype(int)
    P = np.column_stack([rng.normal(size=n) + (0.2 + 0.15 * j) * y for j in range(m + 1)])
    folds, params = np.arange(n) % 4, {"max_steps": 8, "patience": 8, "init": 1}
    fresh = fit_blend("greedy", P[:, :m], y, folds, params)
    scored.clear()
    store = PathsInMemory()
    token = GREEDY_PATHS.set(store)
    try:
        first = fit_blend("greedy", P[:, :m], y, folds, params)
        walked = len(scored)
        scored.clear()
        again = fit_blend("greedy", P[:, :m], y, folds, params)
        assert len(scored) == 1 and again == first == fresh
        scored.clear()
        plus = fit_blend("greedy", P, y, folds, params)
    finally:
        GREEDY_PATHS.reset(token)
    steps = len(first.info["auc_path"]) - 1  # the path holds the starting blend, then one AUC per step
    assert walked == m + 1 + m * steps  # every single run, the starting blend, every candidate at every step
    assert len(scored) < walked  # the stored steps were replayed: only the new run (and changed steps) scored
    assert plus == fit_blend("greedy", P, y, folds, params)


def test_ranks_of_anything_else_are_sorted() -> None:
    rng = np.random.default_rng(0)
    for X in (rng.random((50, 3)), np.zeros((5, 2)), rank01(rng.random((40, 2)))[::2] + 1e-9):
        assert _rank_keys(X) is None or np.array_equal(_int_ranks(X, 4).astype(np.int64), _twice_sorted_midranks(X))
        assert np.array_equal(_int_ranks(X, 4).astype(np.int64), _twice_sorted_midranks(X))


class _Store:
    """A greedy path store in memory that records what each thread saved."""

    def __init__(self) -> None:
        self.saved: list[object] = []

    def load(self, namespace: str, parts: object) -> object:
        return None

    def save(self, namespace: str, parts: object, value: object) -> None:
        self.saved.append(parts)


def test_threaded_fits_equal_sequential_fits_and_keep_the_blends_context() -> None:
    rng = np.random.default_rng(5)
    n, m = 900, 6
    y = (rng.random(n) < 0.15).astype(bool)
    P = np.column_stack([rng.normal(size=n) + (0.3 + 0.2 * j) * y for j in range(m)])
    folds = rng.integers(0, 5, n)
    params = method_params("greedy", None)
    X = transform("greedy", P, params)
    store = _Store()
    token = GREEDY_PATHS.set(store)
    try:
        threaded = score_method("greedy", P, y, folds)
    finally:
        GREEDY_PATHS.reset(token)
    assert len(store.saved) == 1 + 5  # the submitted fit and each fold's, though fitted in worker threads
    sequential = nested_scores("greedy", X, y, folds, params)
    assert np.array_equal(threaded.nested, sequential)
