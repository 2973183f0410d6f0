"""`make bench`: run every benchmark side by side in one process and record the figures.

In:  nothing (each `bench.<name>.run()` makes its own data in a temp dir).
Out: bench/results.json (merged dict of figures) and a table on stdout.
Targets are printed next to the figures; they are shown here, never asserted in tests.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.startup import TARGETS as STARTUP_TARGETS

BENCHES = ("bench.blend", "bench.pipeline", "bench.predict", "bench.accelerator_aug", "bench.startup", "bench.demo")
RESULTS = Path(__file__).with_name("results.json")
TARGETS = {
    "blend_greedy_100x33126_s": ("<=", 2.0),
    "blend_end_to_end_50x33126_s": ("<=", 15.0),
    "blend_end_to_end_50x33126_warm_s": ("<=", 5.0),
    "blend_end_to_end_50x33126_warm_plus1_s": ("<=", 5.0),
    "auc_max_abs_diff_vs_sklearn": ("<=", 1e-12),
    "pipeline_vs_reference_256": (">=", 1.5),
    "pipeline_vs_reference_384": (">=", 1.5),
    "device_aug_vs_decode_256": (">=", 0.8),
    "device_aug_vs_decode_384": (">=", 0.8),
    "demo_oof_pretrained_minus_scratch_low": (">=", 0.0),  # resolved out of fold: the interval's low end above 0
    "demo_oof_best_minus_baseline_low": (">=", 0.0),
    "demo_minutes": ("<=", 10.0),
    "accel_aug_allgather_mb_fused_384": ("<=", 0.0),
    **{key: ("<=", limit) for key, limit in STARTUP_TARGETS.items()},  # one place: bench/startup.py
}


def main(argv: list[str]) -> int:
    only = set(argv)
    console = Console()
    results: dict[str, float] = {}
    for name in BENCHES:
        if only and name.split(".")[-1] not in only:
            continue
        module = importlib.import_module(name)
        start = time.monotonic()
        console.print(f"[bold]{name}[/] ...")
        results.update(module.run())
        console.print(f"  done in {time.monotonic() - start:.1f} s")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update(results)
    previous["machine"] = f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip()
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)
    table = Table(title="make bench")
    for col in ("figure", "value", "target", "met"):
        table.add_column(col)
    for key, value in sorted(results.items()):
        target = TARGETS.get(key)
        met = ""
        if target and isinstance(value, (int, float)):
            op, bound = target
            met = "yes" if (value <= bound if op == "<=" else value >= bound) else "NO"
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown, f"{target[0]} {target[1]}" if target else "", met)
    console.print(table)
    console.print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
