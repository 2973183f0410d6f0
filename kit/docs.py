"""Generated documentation: the README's config reference and Make target list.

In:  kernels/config.py (the dataclasses and the comment at the end of each field's line), the
     Makefile (the `## description` after each target) and the kernel's inline order
     (`kit.render.source.MODULE_ORDER`).
Out: Markdown; `python -m kit.docs` rewrites the README blocks between their markers, and a test
     fails when the README is out of date.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
from pathlib import Path

from kernels import config as config_module

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
BEGIN = "<!-- CONFIG-REFERENCE -->"
END = "<!-- /CONFIG-REFERENCE -->"
MODULES_BEGIN = "<!-- KERNEL-MODULES -->"
MODULES_END = "<!-- /KERNEL-MODULES -->"
TARGETS_BEGIN = "<!-- MAKE-TARGETS -->"
TARGETS_END = "<!-- /MAKE-TARGETS -->"
TARGET_RE = re.compile(r"^([a-z][a-z-]*):.*?## (.+)$")
SECTION_OF = {"Experiment": "", "KaggleSection": "kaggle", "DataSection": "data", "AugmentSection": "augment",
              "ModelSection": "model", "ScratchSection": "model.scratch", "TrainSection": "train"}


def _field_comments() -> dict[tuple[str, str], str]:
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    line = lines[item.end_lineno - 1]
                    comment = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                    comments[(node.name, item.target.id)] = comment
    return comments


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(table)"
    else:
        return "(required)"
    return "`" + json.dumps(list(value) if isinstance(value, tuple) else value) + "`"


def config_reference() -> str:
    """Markdown tables: one per section, one row per key."""
    comments = _field_comments()
    out = [BEGIN, "## Experiment config reference", "",
           "Every key of an experiment TOML (`kernels/config.py`), its default and meaning. Unknown keys,",
           "wrong types and impossible values stop with one line naming the file and the key.", ""]
    for name, section in SECTION_OF.items():
        cls = getattr(config_module, name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"### `[{section}]`" if section else "### top level", "", doc, "", "| key | default | meaning |",
                "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.type.endswith("Section"):  # a nested table, documented in its own section
                continue
            meaning = comments.get((name, f.name), "").replace("|", "\\|")
            out.append(f"| `{f.name}` | {_default(f)} | {meaning} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def make_targets(makefile: Path = MAKEFILE) -> str:
    """Markdown table of the Make targets and their one-line descriptions."""
    rows = [TARGET_RE.match(line) for line in makefile.read_text(encoding="utf-8").splitlines()]
    body = [f"| `make {m.group(1)}` | {m.group(2).replace('|', '/')} |" for m in rows if m]
    return "\n".join([TARGETS_BEGIN, "| target | what it does |", "|---|---|", *body, TARGETS_END])


def kernel_modules() -> str:
    """The inlined kernel modules in their order (`kit.render.source.MODULE_ORDER`), as one line of text."""
    from kit.render.source import MODULE_ORDER

    return f"{MODULES_BEGIN}{len(MODULE_ORDER)} modules, inlined in this order: {', '.join(MODULE_ORDER)}{MODULES_END}"


def _replace_block(text: str, begin: str, end: str, block: str) -> str:
    if end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.replace(begin, block)


def updated_readme(text: str) -> str:
    """README text with the generated blocks replaced (or filled in at their markers)."""
    text = _replace_block(text, BEGIN, END, config_reference())
    text = _replace_block(text, MODULES_BEGIN, MODULES_END, kernel_modules())
    return _replace_block(text, TARGETS_BEGIN, TARGETS_END, make_targets())


def main() -> int:
    text = README.read_text(encoding="utf-8")
    new = updated_readme(text)
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
