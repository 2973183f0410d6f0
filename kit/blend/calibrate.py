"""Calibration of blended scores into probabilities: Platt or isotonic, fitted on OOF.

In:  blended OOF scores, labels (and folds, for the cross-fitted check); a method name.
Out: a `Calibration` (plain parameters, JSON-ready, applied with numpy alone so `kit predict`
     can reuse it), calibrated probabilities, and Brier scores: of the raw scores, of the
     calibrated scores in-sample, and cross-fitted (each fold calibrated by a map fitted on the
     other folds: the honest figure).

Platt: p = sigmoid(a * s + b), scikit-learn's logistic regression on the score (no
regularisation to speak of). Brier scores by scikit-learn's brier_score_loss.
Isotonic: a non-decreasing step map fitted by pool-adjacent-violators, stored as its thresholds
and applied by linear interpolation, clipped at the ends (as scikit-learn's predict does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kit.blend.methods import logistic, sigmoid
from kit.blend.nested import cross_fit
from kit.errors import KitError

CALIBRATIONS = ("platt", "isotonic")
PLATT_C = 1e6  # effectively unregularised logistic regression


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map: `method` and its JSON-ready `params`."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}


@dataclass(frozen=True)
class CalibrationReport:
    """Brier scores (lower is better) of raw and calibrated OOF probabilities."""

    method: str
    brier_raw: float
    brier_in_sample: float
    brier_cross_fitted: float


def fit_calibration(method: str, scores: np.ndarray, y: np.ndarray) -> Calibration:
    """Fit `method` ("platt" | "isotonic") mapping scores to P(malignant)."""
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(y, dtype=int).ravel()
    if np.unique(y).size < 2:
        raise KitError("calibration: the OOF labels hold one class only; nothing to calibrate against")
    if method == "platt":
        model = logistic(PLATT_C).fit(s[:, None], y)
        return Calibration("platt", {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])})
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
        return Calibration("isotonic", {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()})
    raise KitError(f"calibration: unknown method {method!r} (expected one of {', '.join(CALIBRATIONS)})")


def apply_calibration(cal: Calibration | Mapping[str, Any], scores: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (numpy only); accepts a `Calibration` or its JSON dict."""
    data = cal.to_json() if isinstance(cal, Calibration) else dict(cal)
    s = np.asarray(scores, dtype=float)
    if data["method"] == "platt":
        return sigmoid(data["a"] * s + data["b"])
    if data["method"] == "isotonic":
        return np.interp(s, np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=float))
    raise KitError(f"calibration: unknown method {data['method']!r} (expected one of {', '.join(CALIBRATIONS)})")


def cross_fitted(method: str, scores: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's scores calibrated by a map fitted on the other folds (NaN if impossible)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(y, dtype=int)
    return cross_fit(y, np.asarray(folds),
                     lambda train, held: apply_calibration(fit_calibration(method, s[train], y[train]), s[held]))


def calibrate(method: str, scores: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[Calibration, CalibrationReport]:
    """Fit on all OOF scores (the map applied to test) and report the three Brier scores.

    The raw Brier score treats the scores as probabilities (clipped to [0, 1]); for rank blends
    it only shows how far ranks are from probabilities.
    """
    from sklearn.metrics import brier_score_loss

    cal = fit_calibration(method, scores, y)
    crossed = cross_fitted(method, scores, y, folds)
    ok = ~np.isnan(crossed)
    y = np.asarray(y, dtype=int)
    report = CalibrationReport(
        method,
        float(brier_score_loss(y, np.clip(scores, 0.0, 1.0))),
        float(brier_score_loss(y, apply_calibration(cal, scores))),
        float(brier_score_loss(y[ok], crossed[ok])) if ok.any() else float("nan"),
    )
    return cal, report
