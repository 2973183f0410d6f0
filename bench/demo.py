"""`make bench` part: the demo's blend against the baseline on the held-out split, measured as `make demo` runs.

In:  nothing; ``python -m kit.demo --data uda`` runs in a subprocess with a fresh temporary ``--root`` (the
     vendored real sample imported, the baseline run, the demo experiments trained on the CPU, the demo blend).
Out: ``run() -> dict``:
     demo_heldout_auc_minus_baseline  held-out AUC of the demo blend's submission minus the baseline run's
                                      (the split no training or blending step saw; target >= 0.03)
     demo_heldout_margin_low/_high    its paired patient-bootstrap 95 % interval (the sampling noise of
                                      110 held-out images)
     demo_heldout_auc                 the blend's held-out AUC
     demo_baseline_heldout_auc        the baseline's held-out AUC
     demo_minutes                     wall time of the whole demo (target <= 10 on an idle 2-core CPU)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 3600
DATA_FOLDER = "data/uda-128"


def figures(root: Path) -> dict[str, float]:
    """The held-out figures of a finished demo under ``root`` (its dataset, baseline run and blend)."""
    from kernels.contracts import TEST_PRED_FILE
    from kit.demo import DEMO_ENSEMBLE, held_out_margin

    data = root / DATA_FOLDER
    baseline_csv = sorted((root / "runs" / "baseline").glob("v*"))[-1] / TEST_PRED_FILE
    margin = held_out_margin(root / "ensembles" / DEMO_ENSEMBLE / "submission.csv", baseline_csv, data)
    return {"demo_heldout_auc_minus_baseline": margin.diff, "demo_heldout_margin_low": margin.low,
            "demo_heldout_margin_high": margin.high, "demo_heldout_auc": margin.auc1,
            "demo_baseline_heldout_auc": margin.auc2}


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = Path(tmp)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "kit.demo", "--data", "uda", "--root", str(root)], cwd=REPO,
                              capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        minutes = (time.monotonic() - start) / 60
        if proc.returncode != 0:
            raise RuntimeError(f"kit.demo exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return {**figures(root), "demo_minutes": minutes}
