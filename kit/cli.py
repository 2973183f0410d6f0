"""The `kit` command line: one sub-command module per concern, each with `register(subparsers)`.

In:  argv. Out: exit code. Known user errors (KitError, ConfigError, ContractError,
DataLocationError) become one line on stderr and a non-zero exit; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kernels.config import ConfigError
from kernels.contracts import ContractError
from kernels.paths import DataLocationError
from kit.errors import KitError

COMMAND_MODULES = (
    "kit.commands.data",  # kit data synth | import
    "kit.commands.render",  # kit render
    "kit.commands.run",  # kit run (local backend)
    "kit.commands.baseline",  # kit baseline (the floor run)
    "kit.commands.kaggle",  # kit push | status | pull | submit | submissions | emulator
    "kit.commands.blend",  # kit blend | report
    "kit.commands.predict",  # kit predict
    "kit.commands.plan",  # kit plan (accelerator hours before a push)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit", description="SIIM-ISIC melanoma toolkit for Kaggle TPUs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KitError, ConfigError, ContractError, DataLocationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
