"""Shared helpers for the Kaggle tests (imported by tests/test_kaggle_*.py; holds no tests itself).

- `write_competition(folder, names)`: a tiny competition folder (sample_submission.csv, solution.csv
  with a Usage column) for the emulator to score against.
- `write_credentials(folder)`: a 0600 kaggle.json with a fake key (FAKE_KEY) for the real client.
- `quick_kernel_dir(...)`: a hand-written kernel (plain Python, no TensorFlow) that writes outputs
  meeting kernels/contracts.py in well under a second, with its kernel-metadata.json.
- `quick_rendered(...)`: the same, wrapped as a `kit.render.RenderedKernel` so push_one can push it.
- `start_emulator(...)`: an emulator on 127.0.0.1 in this process (kernels run as subprocesses), in
  its default realistic mode with kaggle.com's windows shrunk to fractions of a second
  (`QUICK_REALISM`; stalls and rate-limit spells are switched on by the tests about them).
- `FAST_ENV`: kit's retry, poll, timeout and waiting budgets shrunk to match.
- `TINY_EXPERIMENT`: an experiment TOML template (name, tag, dataset, data_extra, train_extra, extra)
  whose TensorFlow kernel runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from kernels.config import from_dict
from kit.kaggle.emulator import Emulator, EmulatorSettings, Realism
from kit.kaggle.emulator.faults import FaultConfig
from kit.render.kernel import RenderedKernel

FAKE_USER = "kit-user"
FAKE_KEY = "f4k3k3y0123456789abcdefdeadbeef"
COMPETITION = "siim-isic-melanoma-classification"
TEST_NAMES = [f"ISIC_{9000000 + i}" for i in range(40)]
TRAIN_NAMES = [f"ISIC_{1000000 + i}" for i in range(24)]
FAST_ENV = {"KIT_RETRY_BASE_S": "0.01", "KIT_RETRY_CAP_S": "0.05", "KIT_RETRY_ATTEMPTS": "8",
            "KIT_POLL_S": "0.5", "KIT_POLL_MAX_S": "2", "KIT_CONNECT_TIMEOUT_S": "5", "KIT_READ_TIMEOUT_S": "5",
            "KIT_CONSISTENCY_S": "2.5", "KIT_PENDING_SETTLE_S": "2", "KIT_RATE_LIMIT_BASE_S": "0.05", "KIT_RATE_LIMIT_CAP_S": "0.3",
            "KIT_RATE_LIMIT_MAX_S": "30", "KIT_SLOT_WAIT_S": "60", "KIT_SUBMISSION_GRACE_S": "20",
            "KIT_WAIT_TIMEOUT_S": "600"}
STALL_S = 6.5  # a stalled reply outlasts FAST_ENV's read timeout
QUICK_REALISM = Realism(lag_s=0.4, stall_rate=0.0, stall_s=STALL_S, submission_lag_s=0.4, external_session_s=1.0,
                        throttle_rate=0.0, throttle_s=0.5, new_script_s=0.2, cancel_s=0.3, long_run_s=2.0,
                        tpu_sessions=0)  # the TPU cap of 1 is on in the tests about it

# A TensorFlow kernel that runs in seconds (32 px, a one-stage CNN, one epoch): the loop and dry-run tests.
TINY_EXPERIMENT = """\
name = "{name}"
tags = ["{tag}"]
seed = 1
[data]
dataset = "{dataset}"
image_size = 32
folds = 2
shuffle_buffer = 64
{data_extra}
[augment]
ops = ["dihedral"]
[model]
backbone = "scratch"
weights = "none"
dropout = 0.0
[model.scratch]
stages = 1
width = 8
[train]
epochs = 1
batch_size = 16
verbose = 0
tta_dihedral = false
{train_extra}
{extra}
"""


def write_competition(folder: Path, names: Sequence[str] = TEST_NAMES) -> Path:
    """sample_submission.csv and solution.csv (targets alternate by name hash, 30 % Public)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image_name,target"] + [f"{n},0.5" for n in names]
    (folder / "sample_submission.csv").write_text("\n".join(rows) + "\n")
    sol = ["image_name,target,Usage"]
    for i, n in enumerate(names):
        target = int(hashlib.sha256(n.encode()).digest()[0] % 3 == 0)
        sol.append(f"{n},{target},{'Public' if i % 10 < 3 else 'Private'}")
    (folder / "solution.csv").write_text("\n".join(sol) + "\n")
    return folder


def solution_targets(folder: Path) -> dict[str, int]:
    lines = (folder / "solution.csv").read_text().splitlines()[1:]
    return {line.split(",")[0]: int(line.split(",")[1]) for line in lines}


def write_credentials(folder: Path, user: str = FAKE_USER, key: str = FAKE_KEY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    path.write_text(json.dumps({"username": user, "key": key}))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return folder


QUICK_KERNEL = '''\
"""A hand-written kernel: writes kit's output files (contracts) without training anything."""
import hashlib, json, os, time
time.sleep({sleep_s})
SEED = {seed}
TEST = {test!r}
TRAIN = {train!r}
SIZE_PAD = {pad}
out = os.environ.get("KIT_OUTPUT_DIR", ".")
print("quick kernel seed", SEED, "inputs", sorted(os.listdir(os.environ.get("KIT_INPUT_ROOT", "."))))
if {fail!r}:
    raise SystemExit("quick kernel told to fail: " + {fail!r})
def score(name):
    return int(hashlib.sha256(f"{{SEED}}:{{name}}".encode()).hexdigest()[:6], 16) / 16**6
files = {{}}
def write(name, text):
    path = os.path.join(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    data = open(path, "rb").read()
    files[name] = {{"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
write("oof.csv", "image_name,target,pred,fold\\n" + "".join(
    f"{{n}},{{i % 2}},{{score(n):.6f}},{{i % 2}}\\n" for i, n in enumerate(TRAIN)))
write("test_pred.csv", "image_name,target\\n" + "".join(f"{{n}},{{score(n):.6f}}\\n" for n in TEST))
write("test_pred_folds.csv", "image_name,fold_0,fold_1\\n" + "".join(
    f"{{n}},{{score(n):.6f}},{{score(n):.6f}}\\n" for n in TEST))
write("history.json", json.dumps({{"schema": "kit.history/1", "folds": []}}))
write("plots/padding.bin", "x" * SIZE_PAD)
manifest = {{"schema": "kit.manifest/1", "experiment": "quick", "config": {{"seed": SEED}}, "versions": {{}},
            "seed": SEED, "hardware": {{"kind": "cpu", "replicas": 1}},
            "folds": [{{"fold": 0, "auc": 0.5, "best_epoch": 0}}, {{"fold": 1, "auc": 0.5, "best_epoch": 0}}],
            "oof_auc": 0.5, "timings": {{"total_s": 0.0}}, "files": files}}
write("manifest.json", json.dumps(manifest, indent=1))
print("quick kernel done")
'''


def quick_kernel_dir(root: Path, slug: str, owner: str = FAKE_USER, seed: int = 0, fail: str = "",
                     pad: int = 200_000, shape: str | None = "TpuV5E8",
                     datasets: Sequence[str] = (), sleep_s: float = 0.0) -> Path:
    """A kernel folder (kernel.py + kernel-metadata.json) the real client can push."""
    folder = root / slug
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.py").write_text(QUICK_KERNEL.format(seed=seed, test=TEST_NAMES, train=TRAIN_NAMES,
                                                          pad=pad, fail=fail, sleep_s=sleep_s))
    meta = {"id": f"{owner}/{slug}", "title": slug, "code_file": "kernel.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_tpu": shape is not None,
            "enable_internet": True, "dataset_sources": list(datasets), "competition_sources": [COMPETITION],
            "kernel_sources": [], "model_sources": [], "keywords": []}
    if shape:
        meta["machine_shape"] = shape
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=1))
    return folder


def quick_rendered(root: Path, name: str, **kwargs: object) -> RenderedKernel:
    """A quick kernel as a RenderedKernel (content hash over its files), for kit.kaggle.push."""
    folder = quick_kernel_dir(root, name, **kwargs)  # type: ignore[arg-type]
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    digest = hashlib.sha256((folder / "kernel.py").read_bytes() + (folder / "kernel-metadata.json").read_bytes())
    return RenderedKernel(directory=folder, code_file=folder / "kernel.py", metadata=meta, kernel_id=meta["id"],
                          slug=name, content_hash=digest.hexdigest(), experiment=from_dict({"name": name}))


class QuickStopEmulator(Emulator):
    """The emulator, serving with a 50 ms shutdown poll instead of socketserver's 0.5 s: stopping it no longer
    pauses half a second at the end of every test (mutation testing runs each test once per mutant)."""

    def start(self) -> QuickStopEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="emulator", daemon=True)
        self._thread.start()
        return self


def start_emulator(tmp: Path, faults: FaultConfig | None = None, realism: Realism = QUICK_REALISM,
                   **settings: object) -> Emulator:
    datasets = tmp / "datasets"
    datasets.mkdir(exist_ok=True)
    options = {"score_delay_s": 0.2, "daily_submissions": 100, **settings}
    if "competition_dir" not in options:
        options["competition_dir"] = write_competition(tmp / "competition")
    options.setdefault("state_dir", tmp / "emulator")
    settings_ = EmulatorSettings(datasets_root=datasets, **options)  # type: ignore[arg-type]
    return QuickStopEmulator(settings_, faults, realism=realism).start()


def client_env(emulator: Emulator, config_dir: Path, ledger: Path | None = None) -> dict[str, str]:
    """Environment for the real client (and kit) to reach `emulator` with the fake credentials."""
    env = {**emulator.client_env(), "KAGGLE_CONFIG_DIR": str(config_dir), **FAST_ENV}
    if ledger is not None:
        env["KIT_LEDGER"] = str(ledger)
    return env


def apply_env(monkeypatch: object, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # type: ignore[attr-defined]
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)  # type: ignore[attr-defined]


def tree_text(*roots: Path) -> list[tuple[Path, bytes]]:
    """(path, bytes) of every file under the roots (for secret greps)."""
    found = []
    for root in roots:
        if root.is_file():
            found.append((root, root.read_bytes()))
        elif root.is_dir():
            found.extend((p, p.read_bytes()) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return found


def ctrl_c_works() -> None:
    """Popen preexec_fn for a child the test stops with SIGINT: a shell's background job (`cmd &`)
    ignores SIGINT and its children inherit that, so give the child the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env_without_kaggle() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
