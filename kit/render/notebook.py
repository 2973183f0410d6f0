"""Render an experiment as a Jupyter notebook (nbformat 4.5) built from the same kernel modules.

In:  an `Experiment`.
Out: the notebook's JSON text: a title cell, then for every stage in `kit.render.source.STAGES` a markdown
     cell (what the stage does, the experiment's settings that matter to it, the modules it holds)
     followed by one code cell per module (`kit.render.source.load_modules()`: the very code the script
     form inlines), the config cell first, then `kernel_main(CONFIG)` and a cell that shows the
     history plot the run wrote.

The notebook runs top to bottom on Kaggle (``kernel_type: notebook``), on Colab and locally through
`kit.run.notebook_runner`; it gives the same predictions as the script form for the same seed. The
output is deterministic (fixed cell ids, sorted keys), so re-rendering an unchanged experiment
gives the same content hash. Only the standard library is used here (nbformat is not needed to
write a notebook, only to validate one in the tests).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kernels.config import Experiment, to_dict
from kit.errors import KitError
from kit.render.source import BACKEND_CALL, MAIN_CALL, STAGES, ModuleSource, config_literal, load_modules, slugify

NBFORMAT = 4
NBFORMAT_MINOR = 5  # cells carry ids
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}
FUTURE_IMPORT = "from __future__ import annotations"
RESULT_NAME = "RUN_MANIFEST"  # kernel_main's return value, kept in the namespace instead of echoed
BACKEND_RESULT = "KERAS_BACKEND_NAME"  # select_backend's return value, likewise
CONFIG_STAGE = "Setup"  # the stage whose first code cell defines CONFIG

# Settings shown in each stage's markdown cell: dotted config keys; a key naming a section shows
# all its fields. Adding a stage is one line here (a stage without a line shows no settings).
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "Setup": ("name", "seed", "backend", "tags", "kaggle"),
    "Hardware": ("backend", "kaggle.accelerator", "train.mixed_precision", "train.jit_compile",
                 "train.batch_size", "train.steps_per_execution", "augment.where"),
    "Augmentation": ("augment",),
    "Data": ("data",),
    "Model": ("model", "data.image_size", "data.metadata"),
    "Training": ("train",),
    "Predictions and plots": ("train.tta", "train.tta_dihedral", "train.save_weights", "data.folds"),
    "Run": ("data.folds", "data.run_folds", "train.epochs", "seed"),
}
# Extra prose under a stage's description.
STAGE_NOTES: dict[str, str] = {
    "Data": (
        "Files are found and read through `tf.io.gfile`, so the dataset may be a local folder, "
        "Kaggle's `/kaggle/input/<slug>` or a bucket URL (`gs://...`). On Colab the bucket in "
        "`data.gcs_path` is read; on a Kaggle TPU node the kernel asks `KaggleDatasets().get_gcs_path()`."
    ),
    "Run": "Outputs (`oof.csv`, `test_pred.csv`, `manifest.json`, history and weights) go to `/kaggle/working`.",
}
# Keys shown only when the predicate holds for the experiment.
SETTING_SHOWN_IF: dict[str, Callable[[Experiment], bool]] = {
    "model.scratch": lambda exp: exp.model.backbone == "scratch",
    "model.metadata_units": lambda exp: exp.data.metadata,
    "augment.mix_alpha": lambda exp: exp.augment.mix != "none",
    "augment.mix_prob": lambda exp: exp.augment.mix != "none",
}
PLOT_CELL = (
    "# Show the training history the run just wrote (not part of the kernel modules).\n"
    "import os\n\n"
    "from IPython.display import Image, display\n\n"
    "if os.path.exists(os.path.join(output_dir(), HISTORY_PLOT_FILE)):\n"
    "    display(Image(filename=os.path.join(output_dir(), HISTORY_PLOT_FILE)))\n"
)


def _lines(text: str) -> list[str]:
    """nbformat's on-disk form of a cell source: lines with their newlines."""
    return text.splitlines(keepends=True)


def markdown_cell(cell_id: str, text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": _lines(text)}


def code_cell(cell_id: str, code: str) -> dict[str, Any]:
    return {
        "cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {}, "outputs": [],
        "source": _lines(code.rstrip("\n")),
    }


def notebook_config_code(exp: Experiment) -> str:
    """The config cell: ``CONFIG`` parsed from an indented JSON text, readable in the notebook.

    Falls back to the script's one-line literal if the text cannot sit in a raw triple-quoted string.
    """
    expected = to_dict(exp)
    text = json.dumps(expected, indent=1, sort_keys=True, ensure_ascii=True)
    code = f'{FUTURE_IMPORT}\n\nimport json\n\nCONFIG = json.loads(r"""\n{text}\n""")\n'
    try:
        tree = ast.parse(code)
        literal = tree.body[-1].value.args[0].value  # type: ignore[attr-defined]
        ok = json.loads(literal) == expected
    except (SyntaxError, AttributeError, IndexError, ValueError):
        ok = False
    return code if ok else f"{FUTURE_IMPORT}\n\nimport json\n\n{config_literal(exp)}\n"


def _format_value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _leaf_rows(obj: Any, plain: Any, default: Any, key: str, exp: Experiment) -> Iterable[tuple[str, Any, Any]]:
    shown = SETTING_SHOWN_IF.get(key)
    if shown is not None and not shown(exp):
        return
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            sub = f"{key}.{f.name}" if key else f.name
            yield from _leaf_rows(getattr(obj, f.name), plain[f.name], (default or {}).get(f.name), sub, exp)
        return
    yield key, plain, default


def setting_rows(exp: Experiment, keys: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) for each setting the keys name, sections expanded, in order."""
    plain = to_dict(exp)
    defaults = to_dict(Experiment(name=exp.name))
    rows: list[tuple[str, Any, Any]] = []
    seen: set[str] = set()
    for key in keys:
        obj, value, default = exp, plain, defaults
        for part in key.split("."):
            if not dataclasses.is_dataclass(obj) or part not in value:
                raise KitError(f"kit/render/notebook.py: STAGE_SETTINGS: {key!r} is not a config key")
            obj, value, default = getattr(obj, part), value[part], default.get(part)
        for row in _leaf_rows(obj, value, default, key, exp):
            if row[0] not in seen:
                seen.add(row[0])
                rows.append(row)
    return rows


def settings_table(rows: list[tuple[str, Any, Any]]) -> str:
    """A markdown table of settings; the default is shown where the experiment changes it."""
    if not rows:
        return ""
    out = ["| setting | value | default (if changed) |", "|---|---|---|"]
    for key, value, default in rows:
        out.append(f"| `{key}` | {_format_value(value)} | {'' if value == default else _format_value(default)} |")
    return "\n".join(out) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def title_markdown(exp: Experiment) -> str:
    lines = [f"# kit {exp.name}", ""]
    if exp.description:
        lines += [_one_line(exp.description), ""]
    lines += [
        "SIIM-ISIC Melanoma Classification kernel rendered by **melanoma-kit** from its `kernels/` modules. "
        "Run all cells top to bottom: on Kaggle (`/kaggle/input` in, `/kaggle/working` out), on Colab "
        "(data from the bucket in `data.gcs_path`) or locally with `kit run`. Do not edit: change the "
        "experiment TOML or `kernels/` and re-render.",
        "",
        "Stages: " + ", ".join(f"{i}. {title}" for i, (title, _, _) in enumerate(STAGES, start=1)) + ".",
        "",
    ]
    return "\n".join(lines)


def stage_markdown(exp: Experiment, index: int, title: str, description: str, modules: Iterable[str]) -> str:
    parts = [f"## {index}. {title}", "", description, ""]
    if title in STAGE_NOTES:
        parts += [STAGE_NOTES[title], ""]
    table = settings_table(setting_rows(exp, STAGE_SETTINGS.get(title, ())))
    if table:
        parts += ["Settings of this experiment:", "", table]
    parts.append("Code: " + ", ".join(f"`kernels/{name}.py`" for name in modules))
    return "\n".join(parts) + "\n"


def module_code(source: ModuleSource) -> str:
    code = f"# {'=' * 20} kernels/{source.name}.py {'=' * 20}\n{source.code}"
    if source.name == "bootstrap":
        code += f"\n{BACKEND_RESULT} = {BACKEND_CALL}\n"  # assigned, so the notebook does not echo it
    return code


def build_notebook(exp: Experiment, sources: list[ModuleSource]) -> dict[str, Any]:
    """The notebook as a dict (nbformat 4.5 structure)."""
    by_name = {s.name: s for s in sources}
    staged = [name for _, _, modules in STAGES for name in modules]
    if sorted(staged) != sorted(by_name):
        missing = sorted(set(by_name) - set(staged)) or sorted(set(staged) - set(by_name))
        raise KitError(f"kit/render/source.py: STAGES and MODULE_ORDER disagree on {', '.join(missing)}")
    cells = [markdown_cell("title", title_markdown(exp))]
    for index, (title, description, modules) in enumerate(STAGES, start=1):
        slug = slugify(title)
        about = stage_markdown(exp, index, title, description, modules)
        cells.append(markdown_cell(f"s{index}-{slug}-about"[:64], about))
        if title == CONFIG_STAGE:
            cells.append(code_cell(f"s{index}-experiment-config", notebook_config_code(exp)))
        for name in modules:
            cells.append(code_cell(f"s{index}-kernels-{name}"[:64], module_code(by_name[name])))
    cells.append(code_cell("run", f"{RESULT_NAME} = {MAIN_CALL}\n"))
    cells.append(code_cell("plots", PLOT_CELL))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": dict(KERNELSPEC),
            "language_info": dict(LANGUAGE_INFO),
            "kit": {"experiment": exp.name, "rendered_by": "melanoma-kit"},
        },
        "nbformat": NBFORMAT,
        "nbformat_minor": NBFORMAT_MINOR,
    }


def notebook_json(nb: Mapping[str, Any]) -> str:
    """Serialise like nbformat does (1-space indent, sorted keys, UTF-8)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def render_notebook(exp: Experiment) -> str:
    """The whole kernel as notebook JSON text (see the module docstring)."""
    return notebook_json(build_notebook(exp, load_modules()))
