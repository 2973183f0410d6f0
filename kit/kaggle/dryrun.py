"""`make dryrun`: the real Kaggle path rehearsed end to end against the emulator, in one command.

In:  an experiment TOML (default experiments/dryrun-synth.toml, dataset `kit-user/synth-128`), a
     blend recipe (default ensembles/dryrun.toml), the synthetic dataset folder (default
     data/synth-128, built when missing), extra `kit emulator` options (--emulator-arg).
Out: everything under one folder the dry run owns (default .kit/dryrun/, emptied at the start):
     kaggle.json (a fake key, mode 600), the emulator's state and log, the ledger, the pulled runs,
     the blend (ensemble/submission.csv, report, plots). Nothing of the user's own ledger, runs/ or
     ensembles/ is touched, so a synthetic model never reaches `kit predict` or a real push.

Steps, each printed as the command a user would paste (docs/dryrun.md holds the same block): start
the emulator on a free port (its PID recorded), push (without the preflight: it rehearses the TPU route,
which the emulator, running kernels on this CPU, does not take), status --wait, pull, blend, submit, submissions;
the emulator is stopped by its PID in every case (also on an error or Ctrl-C). At the end it prints
the figures obtained and why the synthetic score is what it is, and how to go to the real Kaggle.
Exit 0 when every step passed, else the failing step's exit code after one `error:` line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError

DEFAULT_EXPERIMENT = "experiments/dryrun-synth.toml"
DEFAULT_ENSEMBLE = "dryrun"
DEFAULT_DATA = "data/synth-128"
DEFAULT_HOME = ".kit/dryrun"
FAKE_USER = "kit-user"  # the emulator's user; the dry-run experiment's dataset is kit-user/synth-128
FAKE_KEY = "dry-run-not-a-real-key"
SHOWN_KIT = ".venv/bin/kit"
OWNER_MARK = ".kit-dryrun"  # marks a folder as the dry run's own (only such a folder is emptied)
# kaggle.com's behaviours stay on (read-after-write lag, 403 for unseen kernels, NEW_SCRIPT, a session
# started elsewhere ...) except the two that only cost minutes: stalled replies and rate-limit spells.
QUIET_EMULATOR = ("--stall-rate", "0", "--throttle-rate", "0")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
HIGH_SCORE = 0.95  # a public AUC above the real winners' 0.949 would smell of a leak on real data
ENV_TO_UNSET = ("KAGGLE_API_ENVIRONMENT", "HTTP_PROXY", "KAGGLE_CONFIG_DIR", "KIT_LEDGER")


@dataclass(frozen=True)
class DryRun:
    """Where the dry run reads and writes (all paths relative to the project folder)."""

    experiment: str = DEFAULT_EXPERIMENT
    ensemble: str = DEFAULT_ENSEMBLE
    data: str = DEFAULT_DATA
    home: str = DEFAULT_HOME
    port: int = 0
    emulator_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def emulator_command(self) -> list[str]:
        return ["kit", "emulator", "--port", str(self.port), "--competition-dir", self.data,
                "--datasets-root", str(Path(self.data).parent), "--state", f"{self.home}/emulator",
                "--user", FAKE_USER, *QUIET_EMULATOR, *self.emulator_args]

    def steps(self) -> list[list[str]]:
        """The kit commands after the emulator is up, in order (argv without the interpreter)."""
        runs, out = f"{self.home}/runs", f"{self.home}/ensemble"
        return [["kit", "push", self.experiment, "--no-preflight"],
                ["kit", "status", "--wait"],
                ["kit", "pull", "--runs", runs],
                ["kit", "blend", self.ensemble, "--runs", runs, "--dataset", self.data, "--out", out],
                ["kit", "submit", f"{out}/submission.csv", "--sample", f"{self.data}/sample_submission.csv"],
                ["kit", "submissions"]]

    def env_lines(self) -> list[str]:
        return [f"export KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY={self.url}",
                f"export KAGGLE_CONFIG_DIR=$PWD/{self.home} KIT_LEDGER=$PWD/{self.home}/ledger.json"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_home(home: Path) -> None:
    """Empty the dry run's own folder (refusing one it did not make) and write kaggle.json, mode 600."""
    if home.exists():
        if not (home / OWNER_MARK).exists():
            raise KitError(f"{home}: exists and was not made by the dry run (no {OWNER_MARK}); "
                           "pass --home with a new folder")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / OWNER_MARK).write_text("made by `make dryrun` (kit.kaggle.dryrun); emptied by the next dry run\n")
    creds = home / "kaggle.json"
    creds.write_text(json.dumps({"username": FAKE_USER, "key": FAKE_KEY}))
    creds.chmod(stat.S_IRUSR | stat.S_IWUSR)


def ensure_data(plan: DryRun) -> None:
    """The synthetic dataset: reused when complete, built at the default place, else one error line."""
    folder = Path(plan.data)
    if (folder / "solution.csv").is_file() and (folder / "sample_submission.csv").is_file():
        return
    if plan.data != DEFAULT_DATA:
        raise KitError(f"--data {plan.data}: no solution.csv and sample_submission.csv there "
                       "(make one with `kit data synth FOLDER`)")
    command = [sys.executable, "-m", "kit.demo", "--data", "synth", "--only-data"]  # = make data DATA=synth
    say(f"$ make data DATA=synth   # {DEFAULT_DATA} is missing: building it once")
    if subprocess.call(command):
        raise KitError(f"building {DEFAULT_DATA} failed (`make data DATA=synth` says why)")


def say(text: str) -> None:
    print(text, flush=True)


def shown(command: Sequence[str]) -> str:
    """A command as a user pastes it into a shell at the project root (no activated .venv needed)."""
    return shlex.join([SHOWN_KIT if command[0] == "kit" else command[0], *command[1:]])


def _kit_argv(command: Sequence[str]) -> list[str]:
    """`kit ...` as this interpreter runs it (no need for an activated .venv)."""
    return [sys.executable, "-m", "kit.cli", *command[1:]]


def start_emulator(plan: DryRun, log: Path) -> subprocess.Popen:
    """Start `kit emulator` in the background (output to `log`) and wait until it accepts connections."""
    say(f"$ {shown(plan.emulator_command())} > {log} 2>&1 &")
    with log.open("wb") as sink:
        proc = subprocess.Popen(_kit_argv(plan.emulator_command()), stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (log.parent / "emulator.pid").write_text(f"{proc.pid}\n")
    try:
        _wait_listening(plan, proc, log)
    except BaseException:  # an error or Ctrl-C while it starts: never leave it running
        stop_emulator(proc)
        raise
    say(f"  emulator PID {proc.pid} on {plan.url} (PID in {log.parent / 'emulator.pid'})")
    return proc


def _wait_listening(plan: DryRun, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise KitError(f"the emulator exited at start (code {proc.returncode}): {tail[0]} (log: {log})")
        try:
            with socket.create_connection(("127.0.0.1", plan.port), timeout=POLL_S):
                return
        except OSError:
            time.sleep(POLL_S)
    raise KitError(f"the emulator did not listen on {plan.url} within {START_TIMEOUT_S:.0f} s (log: {log})")


def stop_emulator(proc: subprocess.Popen) -> None:
    """SIGTERM to the emulator's PID (it stops as on Ctrl-C), SIGKILL if it has not gone in time; then
    SIGTERM to its process group (the session it was started in), so no kernel it ran outlives it."""
    if proc.poll() is None:
        say(f"$ kill {proc.pid}   # the emulator")
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)


def client_env(plan: DryRun) -> dict[str, str]:
    home = Path(plan.home).resolve()
    env = dict(os.environ)
    env.update(KAGGLE_API_ENVIRONMENT="LOCALHOST", HTTP_PROXY=plan.url, KAGGLE_CONFIG_DIR=str(home),
               KIT_LEDGER=str(home / "ledger.json"))
    return env


def run_steps(plan: DryRun) -> None:
    for line in plan.env_lines():
        say(f"$ {line}")
    env = client_env(plan)
    for command in plan.steps():
        say(f"$ {shown(command)}")
        code = subprocess.call(_kit_argv(command), env=env)
        if code:
            raise KitError(f"dry run stopped at `{shown(command)}` (exit {code}); the emulator's log is "
                           f"{plan.home}/emulator.log")


@dataclass(frozen=True)
class Figures:
    """What the dry run produced, and what the public score was computed on."""

    oof_auc: float
    oof_headline: str
    fold_auc: tuple[float, ...]  # the chosen blend's AUC within each fold
    public: str
    private: str
    public_rows: int
    public_positives: int
    train_rows: int
    train_positives: int


def read_figures(plan: DryRun) -> Figures:
    blend = json.loads((Path(plan.home) / "ensemble" / "blend.json").read_text())
    ledger = json.loads((Path(plan.home) / "ledger.json").read_text())
    record = ledger["submissions"][-1]
    with open(Path(plan.data) / "solution.csv", newline="") as fh:
        public = [row for row in csv.DictReader(fh) if row.get("Usage") == "Public"]
    train_rows = train_positives = 0
    train_csv = Path(plan.data) / "train.csv"
    if train_csv.is_file():
        with open(train_csv, newline="") as fh:
            targets = [row.get("target", "0") for row in csv.DictReader(fh)]
        train_rows, train_positives = len(targets), sum(t == "1" for t in targets)
    folds = (blend.get("scores") or {}).get("fold_auc") or {}
    return Figures(oof_auc=float(blend.get("oof_auc", float("nan"))),
                   oof_headline=str(blend.get("oof_auc_headline") or "in-sample"),
                   fold_auc=tuple(float(folds[k]) for k in sorted(folds, key=int)),
                   public=str(record.get("public_score") or "-"), private=str(record.get("private_score") or "-"),
                   public_rows=len(public), public_positives=sum(r["target"] == "1" for r in public),
                   train_rows=train_rows, train_positives=train_positives)


def explain(plan: DryRun, fig: Figures) -> list[str]:
    """The closing lines: the figures and why they are what they are, then what is next."""
    negatives = fig.public_rows - fig.public_positives
    pairs = fig.public_positives * negatives
    step = f"moves in steps of 1/{pairs}" if pairs else "is undefined (one class only)"
    verdict = ("  A public score this high is no leak here: the synthetic lesions carry a planted signal"
               if _as_float(fig.public) >= HIGH_SCORE else "  The synthetic lesions carry a planted signal")
    folds = ", ".join(f"{a:.3f}" for a in fig.fold_auc)
    fold_mean = sum(fig.fold_auc) / len(fig.fold_auc) if fig.fold_auc else float("nan")
    return [
        "",
        "Dry run complete. The figures, and why:",
        f"  blend OOF AUC {fig.oof_auc:.4f} ({fig.oof_headline.replace('_', ' ')}) on {fig.train_rows} synthetic "
        f"training images ({fig.train_positives} malignant): the figure the report headlines.",
        f"  Within each fold the AUC is {folds} (mean {fold_mean:.3f}); pooled over folds it is lower when the",
        "  fold models, trained for a few epochs only, score on different scales: pooling ranks one model's",
        "  scores against another's. The test predictions average every fold model on one scale.",
        f"  public score {fig.public}, private {fig.private}: the public split is {fig.public_rows} test images "
        f"with {fig.public_positives} malignant, so its AUC ranks {pairs} malignant/benign pairs and {step}.",
        verdict + " (malignant lesions darker,",
        "  larger, irregular, most with a blue-grey blotch) that a small CNN learns in a few epochs. On the real",
        "  data a score above the competition winners' 0.949 (private) would smell of a leak.",
        "  The push skipped the preflight (`kit preflight EXP` rehearses the TPU route, which the emulator,",
        "  running kernels on this CPU, does not); a real `kit push` runs it after its cheap checks.",
        f"  Everything is under {plan.home}/ (ledger, pulled runs, ensemble/report.html); your own ledger,",
        "  runs/ and ensembles/ are untouched, and the next `make dryrun` starts afresh.",
        "",
        "Next, for the real Kaggle: in any shell where you pasted the dry run's exports, first",
        f"  unset {' '.join(ENV_TO_UNSET)}",
        "then put your own token in ~/.kaggle/kaggle.json (chmod 600), join the competition on kaggle.com,",
        "and `kit push experiments/<yours>.toml` (docs/dryrun.md).",
    ]


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def dry_run(plan: DryRun) -> int:
    ensure_data(plan)
    home = Path(plan.home)
    prepare_home(home)
    say(f"$ mkdir -p {plan.home}   # wrote {plan.home}/kaggle.json (fake key, mode 600)")
    proc = start_emulator(plan, home / "emulator.log")
    try:
        run_steps(plan)
    finally:
        stop_emulator(proc)
    for line in explain(plan, read_figures(plan)):
        say(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kit.kaggle.dryrun", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment TOML (default {DEFAULT_EXPERIMENT})")
    parser.add_argument("--ensemble", default=DEFAULT_ENSEMBLE, help=f"blend recipe name or path (default {DEFAULT_ENSEMBLE})")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"synthetic competition folder; its parent is the datasets root (default {DEFAULT_DATA})")
    parser.add_argument("--home", default=DEFAULT_HOME, help=f"the dry run's own folder, emptied first (default {DEFAULT_HOME})")
    parser.add_argument("--emulator-arg", action="append", default=[], metavar="ARG",
                        help="an extra `kit emulator` option, e.g. --emulator-arg=--fault-rate=0.1 (repeatable)")
    args = parser.parse_args(argv)
    plan = DryRun(experiment=args.experiment, ensemble=args.ensemble, data=args.data.rstrip("/"), home=args.home,
                  port=free_port(), emulator_args=tuple(args.emulator_arg))
    try:
        return dry_run(plan)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the emulator was stopped (`make dryrun` starts afresh)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
