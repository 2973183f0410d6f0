"""The local backend: run a rendered kernel in a subprocess, as Kaggle would.

In:  the kernel file (``kernel.py``, or ``kernel.ipynb`` run top to bottom by a Jupyter kernel),
     an output folder (stands in for /kaggle/working), and where the data is (a dataset folder via
     KIT_DATA_DIR, and/or a folder standing in for /kaggle/input via KIT_INPUT_ROOT).
Out: a `LocalResult`; the kernel's outputs are in the output folder exactly as a Kaggle pull
     would leave them, and its stdout/stderr in the log file.

The child cannot import `kit` or `kernels` (an import blocker is installed before the script
runs), sees none of the parent's Kaggle credentials, and runs with the output folder as cwd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError

SECRET_ENV_PREFIXES = ("KAGGLE_",)
BLOCKED_PACKAGES = ("kit", "kernels")
# Prologue of every local kernel process: the toolkit's own packages become unimportable, like on Kaggle.
IMPORT_BLOCKER = f"""\
import importlib.abc, sys
class _KitBlock(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a kernel must be self-contained)")
        return None
sys.meta_path.insert(0, _KitBlock())
"""
# Runs the script as __main__ behind the blocker.
SCRIPT_RUNNER = IMPORT_BLOCKER + """\
import runpy
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class LocalResult:
    """How a local kernel run ended."""

    returncode: int
    output_dir: Path
    log_path: Path
    seconds: float


def kernel_env(
    output_dir: Path,
    data_dir: str | None,
    input_root: str | None,
    extra_env: Mapping[str, str] | None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: the parent's minus secrets, plus the KIT_* locations."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(SECRET_ENV_PREFIXES)}
    env.pop("PYTHONPATH", None)
    env.update({"KIT_OUTPUT_DIR": str(output_dir), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
    if data_dir:
        env["KIT_DATA_DIR"] = str(Path(data_dir).resolve()) if "://" not in data_dir else data_dir
    if input_root:
        env["KIT_INPUT_ROOT"] = str(Path(input_root).resolve())
    env.update(extra_env or {})
    return env


def kernel_command(code_file: Path) -> list[str]:
    """The command that runs a kernel file (script, or notebook through nbclient)."""
    if code_file.suffix == ".ipynb":
        return [sys.executable, "-m", "kit.run.notebook_runner", str(code_file)]
    return [sys.executable, "-c", SCRIPT_RUNNER, str(code_file)]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> signal.Handlers | Callable[..., object] | int | None:
    """In the main thread: SIGTERM (`kill`) becomes KeyboardInterrupt while a kernel runs, so the kernel is
    stopped with its caller instead of running on alone. Returns the previous handler (None elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt) or signal.SIG_DFL


def stop_kernel(proc: subprocess.Popen[str]) -> None:
    """Kill a kernel started by `run_kernel` and everything it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_kernel(
    code_file: str | Path,
    output_dir: str | Path,
    data_dir: str | None = None,
    input_root: str | None = None,
    log_path: str | Path | None = None,
    timeout_s: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
    append_log: bool = False,
) -> LocalResult:
    """Run a rendered kernel to completion; its output lines go to the log (and `on_line`), appended
    with `append_log` (a resumed run keeps its first session's log); `on_start` gets the kernel's
    process as soon as it exists (so a caller can stop it)."""
    code = Path(code_file).resolve()
    if not code.is_file():
        raise KitError(f"{code}: kernel file not found (run `kit render` first)")
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path else out / "kernel.log"
    env = kernel_env(out, data_dir, input_root, extra_env)
    start = time.monotonic()
    with open(log, "a" if append_log else "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(  # its own process group: stopping it stops a notebook's ipykernel too
            kernel_command(code), cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True,
        )
        assert proc.stdout is not None
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            stop_kernel(proc)

        watchdog = threading.Timer(timeout_s, expire) if timeout_s else None
        previous = _sigterm_as_interrupt()
        try:
            if on_start:
                on_start(proc)
            if watchdog:  # kills a kernel that runs too long, whether or not it prints anything
                watchdog.daemon = True
                watchdog.start()
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                if on_line:
                    on_line(line.rstrip("\n"))
        except BaseException:  # Ctrl-C (or anything else) here must not leave the kernel running
            stop_kernel(proc)
            raise
        finally:
            if watchdog:
                watchdog.cancel()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        returncode = proc.wait()
        if timed_out.is_set():
            fh.write(f"\n[kit] killed after {timeout_s:.0f} s timeout\n")
    return LocalResult(returncode=returncode, output_dir=out, log_path=log, seconds=time.monotonic() - start)
