"""The README documents every config key and every Make target, and is regenerated, not hand-drifted."""

from __future__ import annotations

import dataclasses

from kernels import config as config_module
from kit.docs import MAKEFILE, README, TARGET_RE, updated_readme


def test_readme_generated_blocks_are_current() -> None:
    text = README.read_text()
    assert updated_readme(text) == text, "README is stale: run `.venv/bin/python -m kit.docs`"


def test_every_config_key_and_target_is_documented() -> None:
    text = README.read_text()
    for cls in (config_module.Experiment, config_module.KaggleSection, config_module.DataSection,
                config_module.AugmentSection, config_module.ModelSection, config_module.ScratchSection,
                config_module.TrainSection):
        for f in dataclasses.fields(cls):
            if not str(f.type).endswith("Section"):
                assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name} undocumented"
    targets = [m.group(1) for line in MAKEFILE.read_text().splitlines() if (m := TARGET_RE.match(line))]
    assert {"demo", "test", "push-kernel", "status", "pull", "blend", "submit", "predict", "bench"} <= set(targets)
    for target in targets:
        assert f"`make {target}`" in text


def test_blend_recipe_reference_is_current_and_complete() -> None:
    from kit.blend.methods import METHODS
    from kit.blend.recipe import SCHEMA
    from kit.docs import BLEND_RECIPES, blend_recipe_reference, recipe_keys

    text = blend_recipe_reference()
    assert BLEND_RECIPES.read_text() == text, "docs/blend-recipes.md is stale: run `.venv/bin/python -m kit.docs`"
    sections, _ = recipe_keys()  # raises when the docstring and SCHEMA disagree
    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"| `{key}` |" in text and key in {k for k, _, _ in sections[section]}
    for name in METHODS:
        assert f"| `{name}` |" in text
