"""Run a notebook top to bottom with a real Jupyter kernel, as Kaggle runs a notebook kernel.

In:  ``python -m kit.run.notebook_runner NOTEBOOK [--executed OUT.ipynb] [--cell-timeout S]``, run with
     the output folder as the working directory (`kit.run.local.kernel_command` does this).
Out: every cell's output streamed to stdout as it arrives (so the local runner can log it), the
     executed notebook written to OUT.ipynb when asked, and the exit code: 0 when every cell ran,
     1 when a cell failed (its traceback and a one-line summary are printed), 2 for a usage error.

The kernel process (ipykernel, started through nbclient) cannot import `kit` or `kernels`: an import
blocker is installed before ipykernel starts, by the kernel's own start command, so the notebook
file itself stays clean. The kernel dies with this process (ipykernel's parent poller watches it),
also when this process is killed or terminated.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.run.local import IMPORT_BLOCKER

KERNEL_NAME = "python3"
EXIT_CELL_FAILED = 1
EXIT_USAGE = 2
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TEXT_MIME = "text/plain"
TRANSPORT_ENCRYPTION = "auto"  # CurveZMQ on the kernel's sockets when the kernelspec supports it
PARENT_PID_VAR = "JPY_PARENT_PID"  # ipykernel exits when this process goes away
# The kernel's start command: block the toolkit's packages, then start ipykernel like
# `python -m ipykernel_launcher` does (cwd off sys.path).
KERNEL_BOOT = IMPORT_BLOCKER + """\
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
del _KitBlock, importlib
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


def kernel_boot_command(connection_file: str, extra_arguments: Sequence[str] = ()) -> list[str]:
    """The command that starts a kernel unable to import the toolkit."""
    return [sys.executable, "-c", KERNEL_BOOT, "-f", connection_file, *extra_arguments]


def _require_jupyter() -> tuple[Any, Any, Any]:
    try:
        import nbclient
        import nbformat
        from jupyter_client.manager import AsyncKernelManager
    except ModuleNotFoundError as exc:
        raise KitError(
            f"running a notebook kernel needs nbclient, nbformat and ipykernel ({exc.name} is missing): "
            "pip install 'melanoma-kit[test]'"
        ) from None
    return nbclient, nbformat, AsyncKernelManager


def _strip(text: str) -> str:
    return ANSI_RE.sub("", text)


def format_output(msg_type: str, content: dict[str, Any]) -> str:
    """What one kernel output message looks like in the log."""
    if msg_type == "stream":
        return content.get("text", "")
    if msg_type == "error":
        return _strip("\n".join(content.get("traceback", []))) + "\n"
    if msg_type in ("execute_result", "display_data"):
        data = content.get("data", {})
        if TEXT_MIME in data and len(data) == 1:
            return data[TEXT_MIME].rstrip("\n") + "\n"
        kinds = ", ".join(sorted(data))
        return f"[display: {kinds}]\n"
    return ""


def make_client(nb: Any, cwd: Path, cell_timeout: int | None) -> Any:
    """An nbclient NotebookClient that streams outputs to stdout and starts a blocking kernel."""
    nbclient, _, async_km = _require_jupyter()
    from traitlets import default

    class BlockingKernelManager(async_km):  # type: ignore[misc, valid-type]
        @default("transport_encryption")
        def _encrypt_by_default(self) -> str:
            return TRANSPORT_ENCRYPTION

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return kernel_boot_command(os.path.realpath(self.connection_file), extra_arguments or [])

    class StreamingClient(nbclient.NotebookClient):  # type: ignore[misc, name-defined]
        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
            text = format_output(msg["msg_type"], msg.get("content", {}))
            if text:  # stdout and stderr of the kernel both go to stdout, in order
                sys.stdout.write(text)
                sys.stdout.flush()
            return super().output(outs, msg, display_id, cell_index)

    return StreamingClient(
        nb,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=BlockingKernelManager,
        timeout=cell_timeout,
        resources={"metadata": {"path": str(cwd)}},
        record_timing=True,
    )


def _failed(cell: Any) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def _cell_label(nb: Any, index: int) -> str:
    cell = nb.cells[index] if 0 <= index < len(nb.cells) else None
    first = (cell.source.splitlines() or [""])[0] if cell is not None else ""
    return f"cell {index} ({cell.get('id', '?')}: {first[:60]})" if cell is not None else f"cell {index}"


def run_notebook(path: Path, executed: Path | None = None, cell_timeout: int | None = None) -> int:
    """Execute every cell in order with cwd = the current directory; return the exit code."""
    nbclient, nbformat, _ = _require_jupyter()
    from kernels.contracts import atomic_write_text

    if not path.is_file():
        raise KitError(f"{path}: notebook not found")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises JSON, validation and reader errors
        raise KitError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    os.environ[PARENT_PID_VAR] = str(os.getpid())
    client = make_client(nb, Path.cwd(), cell_timeout)
    code_cells = sum(1 for c in nb.cells if c.cell_type == "code")
    print(f"[kit] running notebook {path.name}: {code_cells} code cells, kernel {KERNEL_NAME}", flush=True)
    status = 0
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        index = next((i for i, c in enumerate(nb.cells) if _failed(c)), -1)
        reason = (_strip(str(exc.evalue)).strip().splitlines() or [""])[0]
        print(f"[kit] notebook failed in {_cell_label(nb, index)}: {exc.ename}: {reason}", flush=True)
        status = EXIT_CELL_FAILED
    except nbclient.exceptions.CellTimeoutError as exc:
        print(f"[kit] notebook cell timed out: {_strip(str(exc)).splitlines()[0]}", flush=True)
        status = EXIT_CELL_FAILED
    except nbclient.exceptions.DeadKernelError as exc:
        print(f"[kit] the notebook's kernel died: {exc}", flush=True)
        status = EXIT_CELL_FAILED
    if executed is not None:
        atomic_write_text(executed, nbformat.writes(nb))
    if status == 0:
        print("[kit] notebook finished: every cell ran", flush=True)
    return status


EXIT_TERMINATED = 143  # 128 + SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    """On SIGTERM leave at once; the kernel's parent poller ends the kernel within a second."""
    print("[kit] notebook run terminated", flush=True)
    os._exit(EXIT_TERMINATED)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.run.notebook_runner", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--executed", type=Path, default=None, help="also write the executed notebook here")
    parser.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_notebook(args.notebook.resolve(), args.executed, args.cell_timeout)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("[kit] notebook interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
