"""Rendering: one self-contained script with the config as a literal, and kernel-metadata.json."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels.config import from_dict, to_dict
from kit.config import load_experiment
from kit.errors import KitError
from kit.render.kernel import render_experiment
from kit.render.source import MODULE_ORDER, load_modules
from kit.run.local import run_kernel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def exp():
    return load_experiment(REPO / "experiments" / "effnet-b6-384.toml")


def test_script_is_self_contained_and_carries_config(tmp_path: Path, exp) -> None:
    kernel = render_experiment(exp, owner="alice", out_root=tmp_path)
    text = kernel.code_file.read_text()
    tree = ast.parse(text)
    imported = {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    } | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "kit" not in imported and "kernels" not in imported
    for name in MODULE_ORDER:
        assert f"kernels/{name}.py" in text
    config_node = next(
        n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CONFIG"
    )
    literal = config_node.value.args[0].value  # json.loads("<literal>")
    assert from_dict(json.loads(literal)) == exp
    backend_at = text.index("select_backend(CONFIG)\n")
    first_keras = min(i for i in (text.find("import keras"), text.find("import tensorflow")) if i >= 0)
    assert backend_at < first_keras, "the backend is chosen before Keras/TensorFlow is imported"
    assert text.rstrip().endswith("kernel_main(CONFIG)")


def test_metadata(tmp_path: Path, exp) -> None:
    kernel = render_experiment(exp, owner="alice", out_root=tmp_path)
    meta = json.loads((kernel.directory / "kernel-metadata.json").read_text())
    assert meta == kernel.metadata
    assert meta["id"] == "alice/kit-effnet-b6-384" and meta["title"] == "kit effnet-b6-384"
    assert meta["code_file"] == "kernel.py" and meta["kernel_type"] == "script" and meta["language"] == "python"
    assert meta["enable_tpu"] is True and meta["enable_gpu"] is False and meta["machine_shape"] == "TpuV5E8"
    assert meta["competition_sources"] == ["siim-isic-melanoma-classification"]
    assert meta["dataset_sources"] == ["cdeotte/melanoma-384x384", "cdeotte/isic2019-384x384"]
    assert "docker_image" not in meta  # a pinned image silently drops the TPU
    gpu = render_experiment(exp, owner="alice", out_root=tmp_path / "g", accelerator="NvidiaTeslaT4")
    assert gpu.metadata["enable_gpu"] is True and gpu.metadata["machine_shape"] == "NvidiaTeslaT4"
    assert gpu.content_hash != kernel.content_hash
    with pytest.raises(KitError, match="accelerator: got 'TpuV38', expected one of"):
        render_experiment(exp, owner="alice", out_root=tmp_path, accelerator="TpuV38")


def test_hostile_strings_are_data_not_code(tmp_path: Path, exp) -> None:
    nasty = 'x\'\'\'"""\n); import os; os.system("echo pwned") #\\'
    exp2 = dataclasses.replace(exp, name="nasty-name", description=nasty, tags=(nasty,))
    kernel = render_experiment(exp2, owner="alice", out_root=tmp_path)
    text = kernel.code_file.read_text()
    ast.parse(text)
    namespace: dict = {}
    header_end = text.index("\n# ====")  # CONFIG is defined in the prologue, before any module
    exec(compile(text[:header_end], "prologue", "exec"), namespace)  # noqa: S102 - our own rendered prologue
    assert namespace["CONFIG"] == to_dict(exp2)


def test_render_is_deterministic_and_long_names_fit(tmp_path: Path, exp) -> None:
    a = render_experiment(exp, owner="alice", out_root=tmp_path / "a")
    b = render_experiment(exp, owner="bob", out_root=tmp_path / "b")
    assert a.code_file.read_bytes() == b.code_file.read_bytes() and a.content_hash == b.content_hash
    long = dataclasses.replace(exp, name="x" * 80)
    meta = render_experiment(long, owner="alice", out_root=tmp_path).metadata
    assert 5 <= len(meta["title"]) <= 50 and meta["id"].split("/")[1] == meta["title"].replace(" ", "-")


def test_name_clash_between_modules_fails(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text('"""a"""\nfrom kernels.two import helper\n\ndef helper():\n    return 1\n')
    (tmp_path / "two.py").write_text('"""b"""\ndef helper():\n    return 2\n')
    with pytest.raises(KitError, match="top-level name 'helper' is also defined in kernels/one.py"):
        load_modules(("one", "two"), root=tmp_path)
    (tmp_path / "three.py").write_text("import kernels.two\n")
    with pytest.raises(KitError, match="use 'from kernels.<module> import <name>'"):
        load_modules(("three",), root=tmp_path)


def test_kernel_cannot_import_the_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "not-for-kernels")
    script = tmp_path / "kernel.py"
    script.write_text("import kit\n")
    result = run_kernel(script, tmp_path / "out")
    assert result.returncode != 0
    assert "a kernel must be self-contained" in result.log_path.read_text()
    ok = tmp_path / "ok.py"
    ok.write_text("import os, json\nopen('done.txt','w').write(json.dumps(sorted(k for k in os.environ if k.startswith(('KIT_','KAGGLE_')))))\n")
    result = run_kernel(ok, tmp_path / "out2", data_dir=str(tmp_path), extra_env={})
    assert result.returncode == 0
    seen = json.loads((tmp_path / "out2" / "done.txt").read_text())
    assert "KIT_OUTPUT_DIR" in seen and "KIT_DATA_DIR" in seen and not any(k.startswith("KAGGLE_") for k in seen)


def test_a_silent_kernel_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    """The timeout does not wait for output, and it stops the kernel's whole process group."""
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "silent.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n")
    result = run_kernel(script, tmp_path / "out", timeout_s=5)
    assert result.returncode != 0 and result.seconds < 60
    assert "[kit] killed after 5 s timeout" in result.log_path.read_text()
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous; give the kernel's child a moment to go
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the kernel's child {child} outlived the timeout")


def test_render_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "render", str(REPO / "experiments" / "backbone-sweep.toml"),
         "--out", str(tmp_path), "--owner", "alice"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*/kernel.py"))) == 8
