"""The README is a short page for a newcomer whose figures are generated; the reference lives in docs/.

Generated pages (docs/config.md, docs/make-targets.md) and README blocks (COMMANDS, DEMO-FIGURES) are
current; every config key, Make target and `KIT_*` variable is documented; and every command, Make target,
file and link the README names exists.
"""

from __future__ import annotations

import dataclasses
import re

from kernels import config as config_module
from kit.docs import CONFIG_DOC, DEMO_FIGURES, MAKEFILE, README, ROOT, TARGET_RE, TARGETS_DOC, stale

README_MAX_LINES = 200
# Paths the README names that the toolkit writes (they do not exist in a fresh clone).
OUTPUT_PREFIXES = ("runs/", "build/", "ensembles/demo/", ".kit/", "ensembles/<name>/", "~/")
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)#]+)\)")
ENV_READ = re.compile(r"[\"'](KIT_[A-Z0-9_]*[A-Z0-9])[\"']")


def test_generated_docs_and_readme_blocks_are_current() -> None:
    assert not stale(), f"stale: {[str(p.relative_to(ROOT)) for p in stale()]}: run `.venv/bin/python -m kit.docs`"


def test_readme_is_short_and_its_figures_are_generated() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert DEMO_FIGURES.is_file()
    outside = re.sub(r"<!-- DEMO-FIGURES -->.*<!-- /DEMO-FIGURES -->", "", text, flags=re.S)
    outside = outside.replace("Python 3.11", "").replace("127.0.0.1", "")  # a version and an address
    measured = re.findall(r"\b\d+\.\d+\b|\b\d+ (?:min|s|tests|images)\b", outside)
    assert not measured, f"figures outside the generated block: {measured}"


def test_every_config_key_target_and_variable_is_documented() -> None:
    config = CONFIG_DOC.read_text(encoding="utf-8")
    for cls in (config_module.Experiment, config_module.KaggleSection, config_module.DataSection,
                config_module.AugmentSection, config_module.ModelSection, config_module.ScratchSection,
                config_module.TrainSection):
        for f in dataclasses.fields(cls):
            if not str(f.type).endswith("Section"):
                assert f"| `{f.name}` |" in config, f"{cls.__name__}.{f.name} undocumented"
    targets = [m.group(1) for line in MAKEFILE.read_text().splitlines() if (m := TARGET_RE.match(line))]
    assert {"demo", "test", "push-kernel", "status", "pull", "blend", "submit", "predict", "bench"} <= set(targets)
    listed = TARGETS_DOC.read_text(encoding="utf-8")
    assert all(f"`make {t}`" in listed for t in targets)
    environment = (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")
    read = {m for folder in ("kit", "kernels") for path in (ROOT / folder).rglob("*.py")
            for m in ENV_READ.findall(path.read_text(encoding="utf-8"))}
    assert read and not [v for v in sorted(read) if f"`{v}`" not in environment and f"{v}`" not in environment]


def test_every_command_target_file_and_link_the_readme_names_exists() -> None:
    from kit.cli import build_parser

    text = README.read_text(encoding="utf-8")
    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    targets = {m.group(1) for line in MAKEFILE.read_text().splitlines() if (m := TARGET_RE.match(line))}
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # fenced blocks: their commands by line below
    named = CODE_SPAN.findall(prose) + re.findall(r"^(make \w[\w-]*|kit \w+)", text, flags=re.M)
    for span in named:
        words = span.split()
        if len(words) < 2 or words[1].isupper():  # a lone word, or a placeholder (`kit COMMAND --help`)
            words = words if len(words) < 2 else words[:1]
        if words and words[0] == "kit" and len(words) > 1:
            assert words[1] in commands, f"README names `{span}`: no such kit command"
        elif words and words[0] == "make" and len(words) > 1:
            assert words[1] in targets, f"README names `{span}`: no such Make target"
        for word in words:
            if "/" in word and not word.startswith(OUTPUT_PREFIXES) and "<" not in word and "*" not in word \
                    and not word.startswith("-"):
                assert (ROOT / word).exists(), f"README names {word}: not in the repository"
            elif "*" in word and not word.startswith(OUTPUT_PREFIXES):
                assert list(ROOT.glob(word)), f"README names {word}: matches nothing"
    for link in LINK.findall(text):
        assert (ROOT / link).exists(), f"README links {link}: not in the repository"
    for page in (ROOT / "docs").glob("*.md"):
        for link in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" not in link:
                assert (page.parent / link).exists(), f"{page.name} links {link}: not there"


def test_a_stale_block_is_found() -> None:
    """The staleness check is real: a README whose commands block names an old command is regenerated."""
    from kit.docs import updated_readme

    text = README.read_text(encoding="utf-8")
    old = text.replace("| `kit plan` |", "| `kit plan-old` |")
    assert old != text and updated_readme(old) == text


def test_blend_recipe_reference_is_current_and_complete() -> None:
    from kit.blend.methods import METHODS
    from kit.blend.recipe import SCHEMA
    from kit.docs import BLEND_RECIPES, blend_recipe_reference, recipe_keys

    text = blend_recipe_reference()
    assert BLEND_RECIPES.read_text() == text, "docs/blend-recipes.md is stale: run `make docs`"
    sections, _ = recipe_keys()  # raises when the docstring and SCHEMA disagree
    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"| `{key}` |" in text and key in {k for k, _, _ in sections[section]}
    for name in METHODS:
        assert f"| `{name}` |" in text
