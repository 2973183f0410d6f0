"""Start-up time of the CLI: `kit --help`, `kit status --offline`, `kit render EXP` (median of 3 runs each).

In:  nothing (an empty ledger and a temp output folder). Out: {"startup_help_s", "startup_status_offline_s",
"startup_render_s"}: wall seconds of a fresh `python -m kit.cli ...` process, median of `REPEATS`.
Targets (issue 14): <= 0.3 s, <= 0.5 s and <= 1.5 s; printed beside the figures, never asserted in tests.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPEATS = 3
RENDERED = REPO / "experiments" / "demo-scratch.toml"
TARGETS = {"startup_help_s": 0.3, "startup_status_offline_s": 0.5, "startup_render_s": 1.5}


def _seconds(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run() -> dict[str, float]:
    """The three start-up figures (median of REPEATS fresh processes each)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(REPO), "KIT_LEDGER": str(work / "ledger.json")}
        commands = {
            "startup_help_s": ["--help"],
            "startup_status_offline_s": ["status", "--offline"],
            "startup_render_s": ["render", str(RENDERED), "--out", str(work / "build")],
        }
        figures = {key: round(statistics.median(_seconds(args, env, work) for _ in range(REPEATS)), 3)
                   for key, args in commands.items()}
    for key, value in figures.items():
        print(f"  {key}: {value:.3f} s (target <= {TARGETS[key]} s{'' if value <= TARGETS[key] else ', NOT MET'})")
    return figures


if __name__ == "__main__":
    print(run())
