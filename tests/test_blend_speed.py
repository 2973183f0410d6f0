"""Blending fast without changing a figure (issue #27): kit's blend cache, greedy's exact replay, and the
lighter substitutes for SciPy / scikit-learn calls on the blend path.

- A warm blend (same inputs, cache on) writes the same submission, blend.json, plots and report as a
  cold one, byte for byte (the report's creation time aside), and says what it reused.
- Greedy replay: with a stored path, every fit over any set of columns (a run added, removed,
  reordered, duplicated) picks exactly what a fresh fit picks.
- Keys: values decide, never object identity; a changed input, method parameter or source file is a
  new key; a corrupt entry or an unwritable cache folder costs only the time; the cache is bounded.
- `midranks`, `spearman` and `roc_points` equal scipy.stats.rankdata, scipy.stats.spearmanr and
  sklearn.metrics.roc_curve on tied and untied data.
- The patient bootstrap's float32 product gives the float64 replicates bit for bit, and where float32
  would round (patients winning millions of pairs) the guard keeps float64.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.blend_fixtures import PathsInMemory, make_cohort, make_run, signal_preds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kit.blend.memo as memo_module
from kernels.metrics import AucInterval, roc_points
from kit.blend import analysis
from kit.blend.build import PLOT_FILES, REPORT_HTML, REPORT_MD, run_blend
from kit.blend.memo import Memo, key_of
from kit.blend.methods import GREEDY_PATHS, fit_blend, midranks
from kit.blend.recipe import default_recipe
from kit.blend.saved import BLEND_FILE


def _runs(root: Path, n_runs: int = 4) -> None:
    cohort = make_cohort(n=320, n_test=60, prevalence=0.2, images_per_patient=4)
    for j in range(n_runs):
        make_run(root, f"exp-{j}", cohort, *signal_preds(cohort, 0.5 + 0.25 * j, seed=j))


def _recipe(root: Path, method: str = "greedy"):  # noqa: ANN202 - a kit.blend.recipe.Recipe
    return dataclasses.replace(default_recipe(root=str(root)), method=method, name="speed")


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes; in the reports and blend.json, the output folder's own path and the line
    with the time of writing (what may differ between two blends of the same runs) are left out."""
    out = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name in (REPORT_MD, REPORT_HTML, BLEND_FILE):
            data = b"\n".join(line for line in data.replace(str(folder).encode(), b"OUT").splitlines()
                               if b"UTC" not in line and b'"created_at"' not in line)
        out[path.name] = data
    return out


@pytest.fixture()
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The blend cache switched on, in a folder of this test."""
    folder = tmp_path / "kit-cache"
    monkeypatch.setenv("KIT_CACHE_DIR", str(folder))
    monkeypatch.delenv(memo_module.CACHE_SWITCH_ENV, raising=False)
    return folder / memo_module.MEMO_FOLDER


@pytest.mark.parametrize("method", ["greedy", "stacking", "rank_mean"])
def test_a_warm_blend_writes_the_cold_blends_files_byte_for_byte(tmp_path: Path, cache_on: Path, method: str) -> None:
    _runs(tmp_path / "runs")
    recipe = _recipe(tmp_path / "runs", method)
    cold = run_blend(recipe, out_dir=tmp_path / "cold")
    assert cold.reused == "" and cache_on.is_dir()
    warm = run_blend(recipe, out_dir=tmp_path / "warm")
    assert _files(tmp_path / "cold") == _files(tmp_path / "warm")
    assert "blend fit" in warm.reused and "plots" in warm.reused
    assert {PLOT_FILES["leaderboard"], PLOT_FILES["roc"]} <= set(_files(tmp_path / "warm"))
    fresh = run_blend(recipe, out_dir=tmp_path / "fresh", cache=False)  # --no-cache: computed again, same files
    assert fresh.reused == "" and _files(tmp_path / "fresh") == _files(tmp_path / "cold")


def test_a_new_run_is_blended_afresh_and_matches_an_uncached_blend(tmp_path: Path, cache_on: Path) -> None:
    root = tmp_path / "runs"
    _runs(root, 3)
    run_blend(_recipe(root), out_dir=tmp_path / "before")
    cohort = make_cohort(n=320, n_test=60, prevalence=0.2, images_per_patient=4)
    make_run(root, "exp-late", cohort, *signal_preds(cohort, 1.4, seed=7))  # a strong run lands
    warm = run_blend(_recipe(root), out_dir=tmp_path / "warm")
    assert "greedy path" in warm.reused and "blend fit" not in warm.reused  # the fit itself is new
    run_blend(_recipe(root), out_dir=tmp_path / "cold", cache=False)
    assert _files(tmp_path / "warm") == _files(tmp_path / "cold")


def _candidates(seed: int, n: int = 600, m: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    y[:2] = [0, 1]
    latent = rng.normal(size=n) + 1.5 * y
    P = np.column_stack([np.round(1 / (1 + np.exp(-(rng.uniform(0.2, 1) * latent + rng.normal(size=n)))),
                                  int(rng.integers(1, 4))) for _ in range(m)])  # few decimals: ties
    return P, y, rng.integers(0, 4, n)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000),
       column_sets=st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=10), min_size=2, max_size=5),
       patience=st.sampled_from([2, 10]))
def test_greedy_replay_picks_what_a_fresh_fit_picks(seed: int, column_sets: list[list[int]], patience: int) -> None:
    """Runs added, removed, reordered or repeated between blends: the replayed fit equals the fresh one."""
    P, y, folds = _candidates(seed)
    store = PathsInMemory()
    params = {"max_steps": 12, "patience": patience, "init": 2}
    for cols in column_sets:
        fresh = fit_blend("greedy", P[:, cols], y, folds, params)
        token = GREEDY_PATHS.set(store)
        try:
            replayed = fit_blend("greedy", P[:, cols], y, folds, params)
        finally:
            GREEDY_PATHS.reset(token)
        assert replayed.weights == fresh.weights and replayed.info == fresh.info, cols


def test_keys_follow_values_not_identity_nor_uncompared_fields() -> None:
    a = np.arange(12.0).reshape(3, 4)
    same = a.copy()
    assert key_of("fit", (a, a), "c") == key_of("fit", (a, same), "c")  # one array met twice = two equal ones
    assert key_of("fit", a[:, 1], "c") == key_of("fit", np.ascontiguousarray(a[:, 1]), "c")  # views by value
    assert key_of("fit", a, "c") != key_of("fit", a + 1e-12, "c")
    assert key_of("fit", a, "c") != key_of("fit", a.astype(np.float32), "c")  # dtype is part of the value
    assert key_of("fit", a, "c") != key_of("fit", a.reshape(4, 3), "c")
    assert key_of("fit", a, "c") != key_of("plot", a, "c") != key_of("fit", a, "other code")
    labels = np.array(["male", "female", None], dtype=object)
    assert key_of("f", labels, "c") == key_of("f", np.array(["male", "female", None], dtype=object), "c")
    assert key_of("f", labels, "c") != key_of("f", np.array(["male", "male", None], dtype=object), "c")
    ci = AucInterval(0.8, 0.7, 0.9, 0.95, 100, 50)
    row = analysis.RunRow("r", "scratch", "cnn", "none", 64, 3, 4, 0.8, ci, {0: 0.8}, None, None, None, True)
    assert key_of("p", row, "c") == key_of("p", dataclasses.replace(row, stats=object()), "c")  # compare=False
    assert key_of("p", row, "c") != key_of("p", dataclasses.replace(row, auc=0.81), "c")


def test_an_edit_to_the_code_that_computes_is_a_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = memo_module._code_digest()
    assert before == memo_module._code_digest()
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self) + (b"# edited" if self.name == "methods.py" else b""))
    assert memo_module._code_digest() != before


def test_corrupt_entries_are_recomputed_and_an_unwritable_cache_is_skipped(tmp_path: Path) -> None:
    memo = Memo(tmp_path / "blend")
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"value": 3}

    assert memo.get("fit", ("k",), compute) == {"value": 3} and memo.get("fit", ("k",), compute) == {"value": 3}
    assert len(calls) == 1 and memo.hits == {"fit": 1}
    (entry,) = (tmp_path / "blend" / "fit").iterdir()
    for garbage in (b"", b"not a pickle", entry.read_bytes()[:10]):
        entry.write_bytes(garbage)
        assert memo.get("fit", ("k",), compute) == {"value": 3}
    assert len(calls) == 4
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    stuck = Memo(blocked / "blend")  # its folder cannot be created: computed every time, no error
    assert stuck.get("fit", ("k",), compute) == {"value": 3} and stuck.get("fit", ("k",), compute) == {"value": 3}
    assert len(calls) == 6 and not stuck.hits


def test_the_cache_is_bounded_and_keeps_the_most_recently_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo_module, "MAX_ENTRIES", 3)
    memo = Memo(tmp_path / "blend")
    for i in range(3):
        memo.get("fit", (i,), lambda i=i: i)
    folder = tmp_path / "blend" / "fit"
    oldest = min(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    os.utime(oldest, (1, 1))
    memo.get("fit", (0,), lambda: -1)  # a hit refreshes entry 0
    memo.get("fit", (3,), lambda: 3)  # the fourth entry pushes out the least recently used
    assert len(list(folder.iterdir())) == 3
    assert memo.get("fit", (0,), lambda: -1) == 0


def test_the_cache_is_off_when_asked() -> None:
    assert Memo.open(environ={}, enabled=False).root is None
    assert Memo.open(environ={memo_module.CACHE_SWITCH_ENV: "off"}).root is None
    assert Memo.open(environ={"KIT_CACHE_DIR": "/somewhere"}).root == Path("/somewhere/blend")
    off = Memo(None)
    assert off.get("fit", ("k",), lambda: 5) == 5 and off.load("fit", ("k",)) is None and not off.hits


@pytest.mark.parametrize("decimals", [0, 1, 2, 8])
def test_lighter_substitutes_equal_scipy_and_scikit_learn(decimals: int) -> None:
    from scipy.stats import rankdata, spearmanr
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(decimals)
    P = np.round(rng.random((500, 6)), decimals)
    np.testing.assert_array_equal(midranks(P), rankdata(P, axis=0))
    np.testing.assert_allclose(analysis.spearman(P), spearmanr(P).statistic, atol=1e-12)
    y = (rng.random(500) < 0.2).astype(int)
    for j in range(P.shape[1]):
        fpr, tpr, _ = roc_curve(y, P[:, j], drop_intermediate=False)
        ours = roc_points(y, P[:, j])
        np.testing.assert_allclose(ours[0], fpr)
        np.testing.assert_allclose(ours[1], tpr)


def _bootstrap(y: np.ndarray, s: np.ndarray, groups: np.ndarray, monkeypatch: pytest.MonkeyPatch,
               limit: float | None) -> np.ndarray:
    import kernels.metrics as metrics

    with monkeypatch.context() as m:
        if limit is not None:
            m.setattr(metrics, "FLOAT32_EXACT_INTEGERS", limit)
        return metrics.bootstrap_aucs(y, s, groups, n_boot=300, seed=4)


def test_the_bootstrap_product_runs_in_float32_only_where_it_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    # competition-like: many patients of a few images: float32 and float64 give the same replicates
    groups = np.repeat(np.arange(300), 4)
    y = (rng.random(groups.size) < 0.1).astype(int)
    s = np.round(rng.normal(size=groups.size) + y, 2)
    exact64 = _bootstrap(y, s, groups, monkeypatch, 0.0)  # the float64 product everywhere
    np.testing.assert_array_equal(_bootstrap(y, s, groups, monkeypatch, None), exact64)
    # two huge patients: one positive-holding patient wins millions of pairs against the other, so a
    # replicate's sums pass 2^24 and float32 would round them; the guard keeps float64 there
    groups = np.r_[np.zeros(2500, int), np.ones(3500, int), np.arange(2, 40)]
    y = np.r_[np.ones(2500, int), np.zeros(3500, int), rng.integers(0, 2, 38)]
    s = np.r_[rng.normal(1.0, 1.0, 2500), rng.normal(0.0, 1.0, 3500), rng.normal(size=38)]
    exact64 = _bootstrap(y, s, groups, monkeypatch, 0.0)
    np.testing.assert_array_equal(_bootstrap(y, s, groups, monkeypatch, None), exact64)
    forced32 = _bootstrap(y, s, groups, monkeypatch, float("inf"))  # the guard switched off
    assert not np.array_equal(forced32, exact64, equal_nan=True)
