"""Blend recipes: ``ensembles/<name>.toml`` -> a validated, frozen `Recipe`.

In:  a recipe name (``demo`` -> ``ensembles/demo.toml``) or a path to a TOML file.
Out: a `Recipe`, or a `KitError` whose one line names the file, the key and what was expected.

A recipe (every table and key optional; defaults shown)::

    description = ""
    [runs]                     # which runs: the union of names, tags and globs (none = all runs)
    root = "runs"              # the runs folder
    names = []                 # experiment names, or exact "<experiment>/v<N>"
    tags = []                  # config tags
    globs = []                 # fnmatch over experiment names / run ids under runs/
    latest = true              # only each experiment's latest run (an exact "<exp>/v<N>" always counts)
    exclude_tags = []          # runs with any of these tags are set aside (e.g. ["synthetic"])
    exclude_globs = []         # runs whose experiment name / run id matches are set aside (e.g. ["smoke-*"])
    [method]
    name = "rank_mean"         # a name in kit.blend.methods.METHODS
    params = {}                # that method's parameters (see its defaults)
    [calibration]
    method = "none"            # none | platt | isotonic (fitted on OOF, Brier score reported)
    [data]
    dataset = ""               # folder with sample_submission.csv (test names checked) and train.csv
    [report]
    compare = []               # more methods scored side by side (in-sample vs nested CV)
    bootstrap = 1000           # bootstrap replicates for the AUC intervals
    seed = 0

The recipe hash (in blend.json) is the sha256 of the recipe's canonical JSON form, so comments
and layout do not change it but any setting does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.blend.calibrate import CALIBRATIONS
from kit.blend.methods import METHODS, method_params
from kit.errors import KitError
from kit.run.folders import EXCLUDE_PREFIX

ENSEMBLES_DIR = "ensembles"
RECIPE_SUFFIX = ".toml"
NO_CALIBRATION = "none"
DEFAULT_METHOD = "rank_mean"
DEFAULT_BOOTSTRAP = 1000
MIN_BOOTSTRAP = 0


@dataclass(frozen=True)
class Recipe:
    """A validated blend recipe (see the module docstring for every key)."""

    name: str
    path: Path
    description: str = ""
    root: str = "runs"
    names: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # "!tag" entries exclude (from exclude_tags)
    globs: tuple[str, ...] = ()  # "!glob" entries exclude (from exclude_globs)
    latest: bool = True
    method: str = DEFAULT_METHOD
    params: Mapping[str, Any] = field(default_factory=dict)
    calibration: str = NO_CALIBRATION
    dataset: str = ""
    compare: tuple[str, ...] = ()
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    digest: str = ""

    @property
    def out_dir(self) -> Path:
        """Where `kit blend` writes: ``ensembles/<name>/`` beside the recipe file."""
        return self.path.parent / self.name


SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"description": str},
    "runs": {"root": str, "names": list, "tags": list, "globs": list, "latest": bool, "exclude_tags": list,
             "exclude_globs": list},
    "method": {"name": str, "params": dict},
    "calibration": {"method": str},
    "data": {"dataset": str},
    "report": {"compare": list, "bootstrap": int, "seed": int},
}
TYPE_WORDS = {str: "a string", list: "a list of strings", bool: "true/false", dict: "a table", int: "an integer"}


def resolve(name_or_path: str, ensembles_dir: str | os.PathLike[str] = ENSEMBLES_DIR) -> Path:
    """``demo`` -> ``ensembles/demo.toml``; a path to an existing .toml is used as is."""
    path = Path(name_or_path)
    if path.suffix == RECIPE_SUFFIX or path.exists():
        if not path.is_file():
            raise KitError(f"{path}: recipe not found")
        return path
    candidate = Path(ensembles_dir) / f"{name_or_path}{RECIPE_SUFFIX}"
    if not candidate.is_file():
        have = sorted(p.stem for p in Path(ensembles_dir).glob(f"*{RECIPE_SUFFIX}"))
        raise KitError(f"{candidate}: recipe not found (have: {', '.join(have) or 'none'})")
    return candidate


def _check_table(data: Mapping[str, Any], section: str, where: Path) -> dict[str, Any]:
    allowed = SCHEMA[section]
    out = {}
    for key, value in data.items():
        dotted = f"{section}.{key}" if section else key
        if key not in allowed:
            if not section and key in SCHEMA:
                continue
            names = sorted(allowed) + ([f"[{s}]" for s in SCHEMA if s] if not section else [])
            raise KitError(f"{where}: {dotted}: unknown key (expected one of {', '.join(names)})")
        tp = allowed[key]
        bad = not isinstance(value, tp) or (tp is int and isinstance(value, bool))
        if tp is list and not bad:
            bad = not all(isinstance(v, str) for v in value)
        if bad:
            raise KitError(f"{where}: {dotted}: got {value!r}, expected {TYPE_WORDS[tp]}")
        out[key] = value
    return out


def canonical_hash(data: Mapping[str, Any]) -> str:
    """sha256 of the recipe's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def from_dict(data: Mapping[str, Any], path: Path) -> Recipe:
    """Validate a parsed recipe dict (see module docstring); `path` names it in errors."""
    top = _check_table(data, "", path)
    sections = {}
    for section in SCHEMA:
        if not section:
            continue
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            raise KitError(f"{path}: {section}: expected a table [{section}]")
        sections[section] = _check_table(table, section, path)
    runs, method, cal = sections["runs"], sections["method"], sections["calibration"]
    data_t, report = sections["data"], sections["report"]
    name = method.get("name", DEFAULT_METHOD)
    params = method_params(name, method.get("params", {}), where=f"{path}: method")
    calibration = cal.get("method", NO_CALIBRATION)
    if calibration not in (NO_CALIBRATION, *CALIBRATIONS):
        raise KitError(f"{path}: calibration.method: got {calibration!r}, expected one of "
                       f"{', '.join((NO_CALIBRATION, *CALIBRATIONS))}")
    compare = tuple(report.get("compare", ()))
    for i, other in enumerate(compare):
        if other not in METHODS:
            raise KitError(f"{path}: report.compare[{i}]: unknown blend method {other!r} "
                           f"(expected one of {', '.join(METHODS)})")
    bootstrap = report.get("bootstrap", DEFAULT_BOOTSTRAP)
    if bootstrap < MIN_BOOTSTRAP:
        raise KitError(f"{path}: report.bootstrap: got {bootstrap}, expected an integer >= {MIN_BOOTSTRAP}")
    return Recipe(
        name=path.stem,
        path=path,
        description=top.get("description", ""),
        root=runs.get("root", "runs"),
        names=tuple(runs.get("names", ())),
        tags=(*runs.get("tags", ()), *(EXCLUDE_PREFIX + t for t in runs.get("exclude_tags", ()))),
        globs=(*runs.get("globs", ()), *(EXCLUDE_PREFIX + g for g in runs.get("exclude_globs", ()))),
        latest=runs.get("latest", True),
        method=name,
        params=params,
        calibration=calibration,
        dataset=data_t.get("dataset", ""),
        compare=tuple(dict.fromkeys(c for c in compare if c != name)),
        bootstrap=bootstrap,
        seed=report.get("seed", 0),
        digest=canonical_hash(data),
    )


def load_recipe(name_or_path: str, ensembles_dir: str | os.PathLike[str] = ENSEMBLES_DIR) -> Recipe:
    """Find, parse and validate a recipe."""
    path = resolve(name_or_path, ensembles_dir)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise KitError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(data, path)


def default_recipe(root: str = "runs", dataset: str = "", path: Path | None = None) -> Recipe:
    """The recipe `kit report` uses without a name: every latest run, rank mean."""
    data: dict[str, Any] = {"runs": {"root": root}, "data": {"dataset": dataset}}
    return from_dict(data, path or Path(ENSEMBLES_DIR) / "all-runs.toml")
