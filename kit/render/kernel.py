"""Render an experiment into a self-contained Kaggle kernel: one script + kernel-metadata.json.

In:  an `Experiment`, the Kaggle owner name, an output root.
Out: `build/kernels/<slug>/` holding the kernel (``kernel.py``, or ``kernel.ipynb`` for the notebook
     form) and ``kernel-metadata.json``; returned as a `RenderedKernel`.

The script is the `kernels/` modules inlined in `kit.render.source.MODULE_ORDER`, with their ``from kernels.x import``
lines removed (everything shares one namespace) and ``from __future__`` hoisted. The experiment
arrives as ``CONFIG``, a JSON literal parsed at start-up: values are serialised, never pasted into
code. Top-level names must be unique across kernel modules; a clash fails the render.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kernels.accelerators import ACCELERATORS, NO_ACCELERATOR, accelerator_problem
from kernels.config import Experiment
from kernels.contracts import atomic_write_text
from kit.errors import KitError
from kit.render.source import (
    BACKEND_CALL,
    MAIN_CALL,
    config_literal,
    load_modules,
    slugify,
)

CODE_FILE = {"script": "kernel.py", "notebook": "kernel.ipynb"}
KERNEL_TYPE = {"script": "script", "notebook": "notebook"}
TITLE_PREFIX = "kit "
MAX_TITLE = 50
MIN_TITLE = 5
SLUG_RE = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")
DEFAULT_OWNER_ENV = "KAGGLE_USERNAME"
DEFAULT_OWNER = "kit-user"


@dataclass(frozen=True)
class RenderedKernel:
    """A rendered kernel on disk."""

    directory: Path
    code_file: Path
    metadata: dict[str, Any]
    kernel_id: str
    slug: str
    content_hash: str
    experiment: Experiment


def default_owner() -> str:
    """Owner used in rendered ids when no Kaggle client is involved (the push fills in the real one)."""
    return os.environ.get(DEFAULT_OWNER_ENV) or DEFAULT_OWNER


def kernel_title(exp: Experiment) -> str:
    """Kernel title (5..50 chars); long names keep a hash suffix so titles stay unique."""
    title = f"{TITLE_PREFIX}{exp.name}"
    if len(title) > MAX_TITLE:
        digest = hashlib.sha256(exp.name.encode()).hexdigest()[:8]
        title = f"{title[: MAX_TITLE - 9].rstrip('-_ ')} {digest}"
    return title


def kernel_slug(exp: Experiment) -> str:
    """The kernel slug derived from the experiment name (the slug of its title)."""
    return slugify(kernel_title(exp))


def script_header(exp: Experiment) -> str:
    return (
        f'"""Kaggle kernel for experiment {exp.name!r}, rendered by melanoma-kit from its kernels/ modules.\n\n'
        "Runs unchanged on Kaggle (/kaggle/input in, /kaggle/working out) and locally (KIT_DATA_DIR,\n"
        'KIT_INPUT_ROOT, KIT_OUTPUT_DIR). Do not edit: change the experiment TOML or kernels/ and re-render.\n"""\n'
    )


def render_script(exp: Experiment) -> str:
    """The whole kernel as one Python script."""
    parts = [script_header(exp), "from __future__ import annotations\n", "import json\n", config_literal(exp) + "\n"]
    for source in load_modules():
        parts.append(f"\n# {'=' * 20} kernels/{source.name}.py {'=' * 20}\n")
        parts.append(source.code)
        if source.name == "bootstrap":
            parts.append(f"\n{BACKEND_CALL}\n")
    parts.append(f'\n\nif __name__ == "__main__":\n    {MAIN_CALL}\n')
    return "".join(parts)


def kernel_metadata(exp: Experiment, owner: str, fmt: str, accelerator: str | None = None) -> dict[str, Any]:
    """The kernel-metadata.json content for this experiment."""
    acc = accelerator or exp.kaggle.accelerator
    problem = accelerator_problem(acc)
    if problem:
        raise KitError(f"accelerator: {problem}")
    datasets = [s for s in (exp.data.dataset, exp.data.external, *exp.kaggle.dataset_sources) if SLUG_RE.match(s)]
    meta: dict[str, Any] = {
        "id": f"{owner}/{kernel_slug(exp)}",
        "title": kernel_title(exp),
        "code_file": CODE_FILE[fmt],
        "language": "python",
        "kernel_type": KERNEL_TYPE[fmt],
        "is_private": exp.kaggle.private,
        "enable_gpu": ACCELERATORS[acc].kind == "gpu",
        "enable_tpu": ACCELERATORS[acc].kind == "tpu",
        "enable_internet": exp.kaggle.internet,
        "dataset_sources": list(dict.fromkeys(datasets)),
        "competition_sources": [exp.kaggle.competition],
        "kernel_sources": [],
        "model_sources": list(exp.kaggle.model_sources),
        "keywords": [],
    }
    if acc != NO_ACCELERATOR:
        meta["machine_shape"] = acc
    return meta


def render_text(exp: Experiment, fmt: str) -> str:
    """The kernel file's text in the given form ('script' or 'notebook')."""
    if fmt == "script":
        return render_script(exp)
    from kit.render.notebook import render_notebook  # the notebook form lives in its own module

    return render_notebook(exp)


def render_experiment(
    exp: Experiment,
    owner: str,
    out_root: Path = Path("build/kernels"),
    fmt: str | None = None,
    accelerator: str | None = None,
) -> RenderedKernel:
    """Write the kernel and its metadata under ``out_root/<slug>/`` (atomically) and describe them."""
    fmt = fmt or exp.kaggle.format
    if fmt not in CODE_FILE:
        raise KitError(f"format {fmt!r}: expected one of {', '.join(CODE_FILE)}")
    exp = replace(exp, kaggle=replace(exp.kaggle, format=fmt, accelerator=accelerator or exp.kaggle.accelerator))
    text = render_text(exp, fmt)
    meta = kernel_metadata(exp, owner, fmt)
    slug = meta["id"].split("/", 1)[1]
    directory = Path(out_root) / slug
    directory.mkdir(parents=True, exist_ok=True)
    for other in set(CODE_FILE.values()) - {meta["code_file"]}:
        (directory / other).unlink(missing_ok=True)
    code_file = directory / meta["code_file"]
    atomic_write_text(code_file, text)
    meta_text = json.dumps(meta, indent=2) + "\n"
    atomic_write_text(directory / "kernel-metadata.json", meta_text)
    digest = hashlib.sha256(text.encode() + json.dumps({k: v for k, v in meta.items() if k != "id"}, sort_keys=True).encode())
    return RenderedKernel(
        directory=directory,
        code_file=code_file,
        metadata=meta,
        kernel_id=meta["id"],
        slug=slug,
        content_hash=digest.hexdigest(),
        experiment=exp,
    )
