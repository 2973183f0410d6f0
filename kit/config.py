"""Experiment configs at the edge: TOML file -> validated, frozen `Experiment` (or a sweep of them).

In:  a path to an experiment TOML. A top-level ``[sweep]`` table maps dotted keys to lists of
     values (``"model.backbone" = ["efficientnet_b0", "resnet50v2"]``); the file then expands into
     the grid of experiments, named ``<name>--<key>-<value>...``.
Out: `Experiment` objects (see `kernels.config` for every key, its default and meaning), or a
     one-line `ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels.config import ConfigError, Experiment, Known, from_dict
from kit.registries import AUGMENT_DEFAULTS, BACKBONE_NAMES

SWEEP_KEY = "sweep"


@functools.cache
def known_registries() -> Known:
    """Names the registries offer, from the plain table `kit.registries` (no TensorFlow import; a test
    keeps it equal to the kernels' registries)."""
    return Known(
        backbones=frozenset(BACKBONE_NAMES),
        augmentations=frozenset(AUGMENT_DEFAULTS),
        augment_params={name: dict(defaults) for name, defaults in AUGMENT_DEFAULTS.items()},
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error or a missing file becomes a one-line ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, expected an experiment TOML file") from None
    except PermissionError:
        raise ConfigError(f"{p}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: sweep.{dotted}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def _slug_value(value: Any) -> str:
    text = str(value).lower().replace(".", "p")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def expand_sweep(data: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """The grid of plain experiment dicts a (possibly sweeping) config stands for."""
    base = {k: copy.deepcopy(v) for k, v in data.items() if k != SWEEP_KEY}
    sweep = data.get(SWEEP_KEY)
    if sweep is None:
        return [base]
    if not isinstance(sweep, Mapping) or not sweep:
        raise ConfigError(f"{where}: sweep: expected a table of dotted keys to lists of values")
    keys = list(sweep)
    for key in keys:
        if not isinstance(sweep[key], list) or not sweep[key]:
            raise ConfigError(f"{where}: sweep.{key}: expected a non-empty list of values")
    grid = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        exp = copy.deepcopy(base)
        suffix = []
        for key, value in zip(keys, values, strict=True):
            _set_dotted(exp, key, value, where)
            suffix.append(f"{key.split('.')[-1].replace('_', '-')}-{_slug_value(value)}")
        exp["name"] = f"{base.get('name', '')}--{'--'.join(suffix)}"
        grid.append(exp)
    return grid


def load_experiments(path: str | Path, validate_names: bool = True) -> list[Experiment]:
    """Load a TOML file into one experiment, or the grid its ``[sweep]`` table defines."""
    where = str(path)
    data = read_toml(path)
    known = known_registries() if validate_names else None
    return [from_dict(d, where, known) for d in expand_sweep(data, where)]


def load_experiment(path: str | Path, validate_names: bool = True) -> Experiment:
    """Load a TOML file that must hold exactly one experiment (no sweep)."""
    exps = load_experiments(path, validate_names)
    if len(exps) != 1:
        raise ConfigError(f"{path}: sweep: this command takes one experiment, the file expands to {len(exps)}")
    return exps[0]
