"""kit: the toolkit that runs on the user's machine (render, run, push, pull, blend, submit, predict).

Where things live (the flow runs top to bottom; a room imports only from rooms above it and `kernels/`):
- `kit/` root: `cli` (the command line), `config` (TOML -> experiments), `registries` (names without
  TensorFlow), `errors`, `console`, `quiet`, `docs` (generated reference), `demo` (the whole loop offline),
  `predict` (P(malignant) for an image).
- `kit/data/`: competition-format datasets (synthetic, imported images) and their TFRecords.
- `kit/render/`: an experiment -> a self-contained Kaggle kernel (script or notebook).
- `kit/run/`: running a kernel here (local backend, preflight rehearsal, baseline, run folders).
- `kit/kaggle/`: Kaggle for real (client, ledger, push, status, pull, submit, plan) and its emulator.
- `kit/blend/`: runs -> one submission, with honest reports.
- `kit/commands/`: one module per command; they parse and print, the rooms above do the work.
The kernel's own code is the `kernels/` package beside this one (see its docstring for its rules).
"""

__version__ = "0.1.0"
