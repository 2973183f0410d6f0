"""Where things live: the map in kit/__init__.py matches the folders, kit/'s root stays small, rooms never
import the command layer, kernel modules keep their rules (kernels/__init__.py), and the accelerator names
come from one table that every part reads."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import kit
from kernels.accelerators import ACCELERATORS, UNAVAILABLE
from kit.render.source import MODULE_ORDER

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "kit"
KERNELS = ROOT / "kernels"
MAX_ROOT_MODULES = 10
ROOMS = ("data", "render", "run", "kaggle", "blend")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_map_in_kit_init_names_modules_that_exist() -> None:
    doc = kit.__doc__ or ""
    root_line = re.search(r"^- `kit/` root:(.*?)^- ", doc, flags=re.M | re.S).group(1)
    for name in re.findall(r"`(\w+)`", root_line):
        assert (KIT / f"{name}.py").is_file(), f"kit/__init__.py names kit/{name}.py"
    for room in re.findall(r"^- `kit/(\w+)/`", doc, flags=re.M):
        assert (KIT / room / "__init__.py").is_file(), f"kit/__init__.py names kit/{room}/"
    on_disk = {p.name for p in KIT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert on_disk == set(re.findall(r"^- `kit/(\w+)/`", doc, flags=re.M)), "a room is missing from the map"
    root_modules = {p.stem for p in KIT.glob("*.py") if p.stem != "__init__"}
    assert root_modules == set(re.findall(r"`(\w+)`", root_line)), "the root line is stale"


def test_kit_root_holds_at_most_ten_modules() -> None:
    modules = [p.name for p in KIT.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_ROOT_MODULES, sorted(modules)


@pytest.mark.parametrize("room", ROOMS)
def test_no_room_imports_the_command_layer(room: str) -> None:
    for path in (KIT / room).rglob("*.py"):
        climbing = {m for m in _imports(path) if m == "kit.commands" or m.startswith("kit.commands.") or m == "kit.cli"}
        assert not climbing, f"{path.relative_to(ROOT)} imports {sorted(climbing)}"


@pytest.mark.parametrize("name", MODULE_ORDER)
def test_kernel_modules_keep_their_rules(name: str) -> None:
    path = KERNELS / f"{name}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    assert doc, f"kernels/{name}.py has no docstring"
    allowed = {"tensorflow", "keras", "numpy", "pandas", "matplotlib", "sklearn", "jax", "kaggle_datasets",
               "kernels", "__future__"}
    earlier = set(MODULE_ORDER[:MODULE_ORDER.index(name)])
    stdlib = set(sys.stdlib_module_names)
    for module in _imports(path):
        top = module.split(".")[0]
        assert top in allowed | stdlib, f"kernels/{name}.py imports {module}"
        if top == "kernels":
            assert module.split(".")[1] in earlier, f"kernels/{name}.py imports {module}, inlined after it"
    camel = "_" + "".join(part.title() for part in name.split("_"))
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        for target in targets:
            if target.startswith("_") and not target.startswith("__"):
                assert target.startswith((f"_{name}_", camel)), f"kernels/{name}.py: private {target} lacks its prefix"


def test_every_kernel_module_is_inlined() -> None:
    on_disk = {p.stem for p in KERNELS.glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(MODULE_ORDER)


def test_one_accelerator_table_decides_everywhere(tmp_path: Path) -> None:
    """render, preflight, plan and the config's edge check accept exactly the table's names, and refuse the
    unavailable ones with the reason."""
    from kernels.config import ConfigError, Experiment, from_dict
    from kit.errors import KitError
    from kit.kaggle.plan import on_accelerator
    from kit.render.kernel import kernel_metadata
    from kit.run.preflight import preflight_target

    exp = Experiment(name="house")
    for name, acc in ACCELERATORS.items():
        meta = kernel_metadata(exp, "me", "script", accelerator=name)
        assert (meta["enable_tpu"], meta["enable_gpu"]) == (acc.kind == "tpu", acc.kind == "gpu")
        assert preflight_target(exp, name) == (name, acc.rehearse)
        assert on_accelerator(exp, name).kaggle.accelerator == name
        from_dict({"name": "house", "kaggle": {"accelerator": name}}, "x.toml")
    for name, reason in {**UNAVAILABLE, "TpuV9": "expected one of"}.items():
        with pytest.raises(KitError, match=re.escape(reason)):
            kernel_metadata(exp, "me", "script", accelerator=name)
        with pytest.raises(KitError, match=re.escape(reason)):
            preflight_target(exp, name)
        with pytest.raises(ConfigError, match=re.escape(reason)):
            on_accelerator(exp, name)
        with pytest.raises(ConfigError, match=r"x\.toml: kaggle\.accelerator: .*" + re.escape(reason)):
            from_dict({"name": "house", "kaggle": {"accelerator": name}}, "x.toml")
