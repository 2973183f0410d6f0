"""Fast start (issue 14, case 10): nothing heavy is imported until a command needs it, and `kit render`
needs no TensorFlow because the registry names are a plain data table (`kit.registries`) that must
agree with the kernels' own registries. Timings are figures in `make bench` (bench/startup.py), not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.registries import AUGMENT_DEFAULTS, BACKBONE_NAMES

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "pandas", "matplotlib", "numpy", "scipy", "sklearn", "jax")
PROBE = """\
import json, sys
from kit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


def test_registry_table_matches_the_kernels() -> None:
    """Backbone names are read from the kernel's plain-data registry; the augmentation defaults are a copy."""
    from kernels import models
    from kernels.augment import AUGMENTATIONS
    from kernels.backbones import BACKBONES

    assert models.BACKBONES is BACKBONES  # the models build from the one registry kit reads
    assert BACKBONE_NAMES == tuple(sorted(BACKBONES)) and "efficientnet_b6" in BACKBONE_NAMES
    assert list(AUGMENT_DEFAULTS) == list(AUGMENTATIONS)
    for name, spec in AUGMENTATIONS.items():
        assert dict(AUGMENT_DEFAULTS[name]) == dict(spec.defaults), name


@pytest.mark.parametrize("args", [
    ["--help"],
    ["status", "--offline"],
    ["render", str(REPO / "experiments" / "demo-scratch.toml"), "--out", "{tmp}/build"],
    ["render", str(REPO / "experiments" / "backbone-sweep.toml"), "--out", "{tmp}/build"],
])
def test_light_commands_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KIT_LEDGER": str(tmp_path / "ledger.json")}
    result = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    if args == ["--help"]:  # argparse exits from inside main: check the modules another way
        probe = PROBE.replace("code = main(sys.argv[1:])", "from kit.cli import build_parser\nbuild_parser()\ncode = 0")
        result = subprocess.run([sys.executable, "-c", probe % (HEAVY,)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, result.stderr


def test_render_still_rejects_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text('name = "x"\n[model]\nbackbone = "resnet9000"\n')
    result = subprocess.run([sys.executable, "-m", "kit.cli", "render", "x.toml"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: x.toml: model.backbone: got 'resnet9000'")
