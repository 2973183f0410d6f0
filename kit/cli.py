"""The `kit` command line: one sub-command module per concern, each with `register(subparsers)`.

In:  argv. Out: exit code. Known user errors (KitError, ConfigError, ContractError,
DataLocationError) become one line on stderr and a non-zero exit, and so does a file that is not UTF-8
text (named when a frame of the traceback holds its path). Options shared by several commands are
checked here, at the edge (``--port`` in 0..65535). Sub-command modules are imported to build the
parser; each imports its heavy libraries only inside its command functions.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import TracebackType

from kernels.config import ConfigError
from kit.errors import KitError

# One-line user errors defined in modules a command may or may not have imported: looked up only when
# raised (a module that was never imported raised none of its errors), so start-up imports neither.
LAZY_USER_ERRORS = (("kernels.contracts", "ContractError"), ("kernels.paths", "DataLocationError"))

COMMAND_MODULES = (
    "kit.commands.data",  # kit data synth | import
    "kit.commands.render",  # kit render
    "kit.commands.run",  # kit run (local backend)
    "kit.commands.baseline",  # kit baseline (the floor run)
    "kit.commands.kaggle",  # kit push | status | pull | submit | submissions | emulator
    "kit.commands.blend",  # kit blend | report
    "kit.commands.predict",  # kit predict
    "kit.commands.preflight",  # kit preflight (also run by kit push)
    "kit.commands.plan",  # kit plan (accelerator hours before a push)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit", description="SIIM-ISIC melanoma toolkit for Kaggle TPUs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)  # a missing command module is a broken install: fail loudly
    return parser


PORT_RANGE = (0, 65535)
PATH_SUFFIXES = (".csv", ".toml", ".json", ".txt")
EXIT_USAGE = 2


def check_shared_options(args: argparse.Namespace) -> None:
    """Edge checks of options several commands take; KitError naming the option and the range."""
    port = getattr(args, "port", None)
    if isinstance(port, int) and not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
        raise KitError(f"--port {port}: expected {PORT_RANGE[0]}..{PORT_RANGE[1]} (0 = any free port)")


def _file_in(tb: TracebackType | None) -> str | None:
    """The innermost path-like local (a .csv/.toml/.json/.txt) on the traceback: the file being read."""
    found = None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).endswith(PATH_SUFFIXES):
                found = str(os.fspath(value))
        tb = tb.tb_next
    return found


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are one-line user errors (see LAZY_USER_ERRORS)."""
    lazy = [getattr(sys.modules[module], name) for module, name in LAZY_USER_ERRORS if module in sys.modules]
    return (KitError, ConfigError, *lazy)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_shared_options(args)
        return int(args.func(args) or 0)
    except Exception as exc:
        if isinstance(exc, UnicodeDecodeError):
            where = _file_in(exc.__traceback__) or "a file"
            print(f"error: {where}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8",
                  file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(exc, user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
