"""`kit push | status | pull | submit | submissions | emulator`: the Kaggle path, end to end.

In:  experiment TOMLs (push), ledger state (.kit/ledger.json; --ledger or $KIT_LEDGER), a
     predictions CSV (submit), emulator folders (emulator).
Out: Kaggle kernels, versions and submissions; rich tables and progress on stdout; run folders
     under runs/ (pull). Failures are one `error: ...` line and a non-zero exit (see kit.cli).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from kernels.accelerators import ACCELERATOR_HELP
from kernels.config import COMPETITION
from kit.console import console
from kit.errors import KitError
from kit.kaggle.ledger import Ledger, now_iso

if TYPE_CHECKING:
    from rich.progress import Progress

DEFAULT_BUILD = "build/kernels"
FAULT_KINDS = {"429": "a 429 reply", "500": "a 500 reply", "lost_reply": "a lost reply (work done, 500 sent)",
               "slow": "a slow reply", "truncate": "a truncated download",
               "not_found": "a 404 for a kernel created seconds ago"}
DEFAULT_RUNS = "runs"
WAIT_HELP = "give up waiting after this many seconds (default $KIT_WAIT_TIMEOUT_S, else 13 h)"


def _ledger(args: argparse.Namespace) -> Ledger:
    return Ledger(args.ledger) if args.ledger else Ledger()


def _say_retry(what: str, attempt: int, reason: str, wait: float) -> None:
    if reason == "http-429":
        console.print(f"[yellow]  Kaggle is rate-limiting kit (HTTP 429): waiting {wait:.0f} s before "
                      f"retrying {what} (try {attempt})[/]")
        return
    console.print(f"[dim]  {what}: {reason}, retry {attempt} in {wait:.1f} s[/]")


def _say_note(text: str) -> None:
    console.print(f"[dim]  {text}[/]", highlight=False)


def _client() -> Any:
    from kit.kaggle.client import connect

    return connect(on_retry=_say_retry, warn=lambda text: print(f"warning: {text}", file=sys.stderr))


def _with_client(args: argparse.Namespace, body: Callable[[Any, Ledger], int]) -> int:
    """Connect, run `body(client, ledger)`, and add the retries it made to the ledger's counters."""
    from kit.kaggle.retry import STATS

    ledger = _ledger(args)
    client = _client()
    before = STATS.retries
    try:
        return body(client, ledger)
    finally:
        made = STATS.retries - before
        if made:
            ledger.bump("retries", made)
            console.print(f"[dim]{made} transient failure(s) retried[/]")


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def _print_failures(rows: Sequence[dict[str, Any]]) -> None:
    for row in rows:
        if row["status"] in ("ERROR", "NOT_FOUND"):
            console.print(f"[red]{row['experiment']}[/] ({row['kernel']} v{row['version']}): "
                          f"{row['failure'] or row['status']}", markup=True)
            for line in row["log_tail"]:
                console.print(f"  | {line}", markup=False, highlight=False)


def _wait(client: Any, ledger: Ledger, names: Sequence[str] | None, timeout: float | None) -> list[dict[str, Any]]:
    from kit.kaggle.status import is_done, wait_until_done

    with _progress() as progress:
        task = progress.add_task("waiting for Kaggle runs", total=None)

        def update(rows: list[dict[str, Any]]) -> None:
            counts: dict[str, int] = {}
            for row in rows:
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            text = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
            progress.update(task, total=len(rows), completed=sum(is_done(r) for r in rows),
                            description=f"Kaggle runs: {text}")

        return wait_until_done(client, ledger, names, timeout_s=timeout, on_update=update,
                               on_note=lambda text: progress.console.print(f"[dim]  {text}[/]", highlight=False))


# -- push ---------------------------------------------------------------------------------------
def cmd_push(args: argparse.Namespace) -> int:
    from kit.config import load_experiments
    from kit.kaggle.push import push_queue
    from kit.render.kernel import render_experiment

    if not args.no_preflight:  # rehearse before anything is sent (KIT_PREFLIGHT=0 skips it too)
        from kit.run.preflight import preflight_before_push

        preflight_before_push(args.experiments, args.accelerator)

    def body(client: Any, ledger: Ledger) -> int:
        loaded = [(path, load_experiments(path)) for path in args.experiments]
        experiments = [exp for _, exps in loaded for exp in exps]
        names = [exp.name for exp in experiments]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise KitError(f"experiment {dup!r} is given twice")
        owner = client.username
        kernels = [render_experiment(exp, owner, out_root=Path(args.build), accelerator=args.accelerator)
                   for exp in experiments]
        with ledger.transaction() as data:
            for path, exps in loaded:
                if len(exps) > 1:
                    data["sweeps"][str(path)] = {"experiments": [e.name for e in exps],
                                                 "concurrency": args.concurrency, "updated_at": now_iso()}
        counts: dict[str, int] = {}
        with _progress() as progress:
            task = progress.add_task("pushing", total=len(kernels))

            def event(kind: str, payload: Any) -> None:
                if kind == "note":
                    progress.console.print(f"[dim]  {payload}[/]", highlight=False)
                    return
                if kind == "waiting":
                    progress.update(task, description=f"waiting for a free accelerator slot "
                                                      f"({len(payload)} busy: {', '.join(payload)[:60]})")
                    return
                counts[payload.action] = counts.get(payload.action, 0) + 1
                progress.advance(task)
                progress.update(task, description="pushing")
                style = {"pushed": "green", "reconciled": "yellow", "skipped": "dim"}[payload.action]
                version = f" v{payload.version}" if payload.version else ""
                progress.console.print(f"[{style}]{payload.action}[/] {payload.experiment} -> "
                                       f"{payload.kernel}{version}  {payload.note}")

            outcomes = push_queue(client, ledger, kernels, lambda k: k.metadata.get("machine_shape") or "none",
                                  concurrency=args.concurrency, force=args.force, on_event=event)
        if len(outcomes) == 1 and outcomes[0].action == "skipped":
            raise KitError(f"{outcomes[0].experiment}: {outcomes[0].note}")
        console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if args.wait:
            rows = _wait(client, ledger, names, args.timeout)
            _print_failures(rows)
            return 1 if any(r["status"] != "COMPLETE" for r in rows) else 0
        return 0

    return _with_client(args, body)


# -- status -------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from kit.kaggle.status import refresh, status_rows, status_table

    names = args.experiments or None
    if args.offline:
        rows = status_rows(_ledger(args).read(), names)
        console.print(status_table(rows))
        _print_failures(rows)
        _print_incomplete(args.runs)
        return 0

    def body(client: Any, ledger: Ledger) -> int:
        if not ledger.read()["experiments"]:
            console.print(f"nothing pushed yet ({ledger.path} is empty); `kit push EXP` first")
            return 0
        if args.wait:
            rows = _wait(client, ledger, names, args.timeout)
        else:
            refresh(client, ledger, names, on_note=_say_note)
            rows = status_rows(ledger.read(), names)
        console.print(status_table(rows))
        _print_failures(rows)
        _print_incomplete(args.runs)
        return 1 if args.wait and any(r["status"] != "COMPLETE" for r in rows) else 0

    return _with_client(args, body)


def _print_incomplete(root: str) -> None:
    """Local run folders that are not complete (no kernel marker, broken manifest): one line each with why.
    Blends and predict refuse them; `kit run EXP --resume` carries a local one on."""
    from kit.run.folders import incomplete_runs

    for _folder, why in incomplete_runs(root):
        console.print(f"[yellow]incomplete run:[/] {escape(why)}")


# -- pull ---------------------------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> int:
    from kit.kaggle.pull import pull_all

    names = args.experiments or None

    def body(client: Any, ledger: Ledger) -> int:
        if not ledger.read()["experiments"]:
            raise KitError(f"{ledger.path}: nothing pushed yet; `kit push EXP` first")
        if args.wait:
            _wait(client, ledger, names, args.timeout)
        failed = []

        def report(outcome: Any) -> None:
            if outcome.action == "pulled":
                console.print(f"[green]pulled[/] {outcome.experiment} v{outcome.version} -> {outcome.folder} "
                              f"({outcome.files} files verified, {outcome.note})")
            elif outcome.action == "already":
                console.print(f"[dim]already pulled[/] {outcome.experiment} v{outcome.version} -> {outcome.folder}")
            elif outcome.action == "not-ready":
                console.print(f"[yellow]not ready[/] {outcome.experiment}: {outcome.note}")
            else:
                failed.append(outcome)
                console.print(f"[red]failed[/] {outcome.experiment} v{outcome.version}: {outcome.note}",
                              markup=True, highlight=False)

        with console.status("pulling outputs", spinner="dots") as spinner:
            pull_all(client, ledger, names, Path(args.runs), on_outcome=report,
                     on_file=lambda name: spinner.update(f"pulling {name}"), on_note=_say_note)
        if failed:
            first = failed[0]
            raise KitError(f"{len(failed)} pull(s) failed; first: {first.experiment}: {first.note}")
        return 0

    return _with_client(args, body)


# -- submit -------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from kit.kaggle.submit import find_sample, send, validate_submission, wait_for_score

    csv_path = Path(args.csv)
    sample = find_sample(args.sample)
    validate_submission(csv_path, sample)  # before asking for credentials: a bad file never leaves
    recipe = args.recipe

    def body(client: Any, ledger: Ledger) -> int:
        record = send(client, ledger, csv_path, args.competition, sample, recipe, args.message or "", args.force)
        console.print(f"submitted {csv_path} as ref {record['ref']}: {record['message']}")
        if args.no_wait:
            return 0
        with console.status("waiting for the score", spinner="dots") as spinner:
            record = wait_for_score(client, ledger, record, timeout_s=args.timeout,
                                    on_poll=lambda status: spinner.update(f"submission {record['ref']}: {status}"))
        if record["status"] == "ERROR":
            raise KitError(f"submission {record['ref']} failed to score: {record['error']}")
        console.print(f"[green]scored[/] ref {record['ref']}: public {record['public_score']}, "
                      f"private {record['private_score'] or '(hidden)'}")
        return 0

    return _with_client(args, body)


def cmd_submissions(args: argparse.Namespace) -> int:
    from kit.kaggle.submit import refresh_submissions

    def body(client: Any, ledger: Ledger) -> int:
        server = refresh_submissions(client, ledger, args.competition)
        known = {r["ref"]: r for r in ledger.read()["submissions"] if r["ref"]}
        table = Table(title=f"Submissions to {args.competition}")
        for column in ("ref", "date (UTC)", "file", "status", "public", "private", "description"):
            table.add_column(column)
        for s in server:
            record = known.get(s.ref)
            table.add_row(str(s.ref), s.date.replace("T", " "), record["file"] if record else s.file_name,
                          s.status, s.public_score or "-", s.private_score or "-", s.description)
        console.print(table)
        return 0

    return _with_client(args, body)


# -- emulator -----------------------------------------------------------------------------------
def _only_competition_dir(root: Path) -> Path:
    """The one folder under `root` holding solution.csv (what `kit data synth|import` make)."""
    found = sorted(p.parent for p in root.glob("*/solution.csv")) if root.is_dir() else []
    if len(found) != 1:
        have = ", ".join(map(str, found)) or f"none under {root}/ (run `make data` first)"
        raise KitError(f"--competition-dir: pass the folder with solution.csv (found {have})")
    return found[0]


def _realism(args: argparse.Namespace) -> Any:
    """The emulator's Realism: kaggle.com's behaviours (or --kind), with each --<behaviour> applied."""
    from dataclasses import fields, replace

    from kit.kaggle.emulator import Realism

    base = Realism.kind(seed=args.seed) if args.kind else Realism(seed=args.seed)
    changes = {f.name: getattr(args, f"real_{f.name}") for f in fields(Realism)
               if f.name != "seed" and getattr(args, f"real_{f.name}") is not None}
    return replace(base, **changes)


def cmd_emulator(args: argparse.Namespace) -> int:
    from kit.kaggle.emulator import Emulator, EmulatorSettings, describe_realism
    from kit.kaggle.emulator.faults import FaultConfig, describe_faults

    competition_dir = args.competition_dir or str(_only_competition_dir(Path(args.datasets_root)))
    for flag, folder in (("--competition-dir", competition_dir), ("--datasets-root", args.datasets_root)):
        if not Path(folder).is_dir():
            raise KitError(f"{flag} {folder}: not a folder")
    if not (Path(competition_dir) / "solution.csv").is_file():
        raise KitError(f"--competition-dir {competition_dir}: no solution.csv (needed to score submissions)")
    overrides = {f"rate_{kind}": getattr(args, f"rate_{kind}") for kind in FAULT_KINDS
                 if getattr(args, f"rate_{kind}") is not None}
    faults = FaultConfig.uniform(args.fault_rate, seed=args.seed, rate_kernel_error=args.kernel_error_rate,
                                 escape_names=args.escape_names, slow_s=args.slow_s, **overrides)
    settings = EmulatorSettings(
        state_dir=Path(args.state), competition_dir=Path(competition_dir), datasets_root=Path(args.datasets_root),
        competition=args.competition, workers=args.workers, score_delay_s=args.score_delay,
        daily_submissions=args.daily_submissions, max_sessions=args.max_sessions, token_user=args.user,
    )
    realism = _realism(args)
    emulator = Emulator(settings, faults, port=args.port, realism=realism)
    console.print(f"Kaggle emulator on {emulator.url} (state {args.state}; faults: {describe_faults(faults)}; "
                  f"kaggle.com behaviours: {describe_realism(realism)})")
    console.print("Point the kaggle client (and kit) at it:\n"
                  f"  export KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY={emulator.url}\n"
                  "with any kaggle.json (the emulator accepts every key; its user name owns the kernels).\n"
                  "Ctrl-C stops it; the state folder keeps kernels and submissions for the next start.")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        console.print("emulator stopped")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- registration -------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", default=None, help="ledger file (default $KIT_LEDGER or .kit/ledger.json)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="render experiments and push them to Kaggle (sweeps queue with a limit)")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment TOML file(s); a [sweep] expands")
    p.add_argument("--accelerator", default=None, help=ACCELERATOR_HELP)
    p.add_argument("--force", action="store_true", help="push even if unchanged since the last version")
    p.add_argument("--concurrency", type=int, default=2,
                   help="accelerator sessions busy at once (Kaggle allows only a few; default 2)")
    p.add_argument("--build", default=DEFAULT_BUILD, help=f"where kernels are rendered (default {DEFAULT_BUILD})")
    p.add_argument("--wait", action="store_true", help="then wait until every pushed run has finished")
    p.add_argument("--timeout", type=float, default=None, help=WAIT_HELP)
    p.add_argument("--no-preflight", action="store_true", help="skip the rehearsal (`kit preflight`; or KIT_PREFLIGHT=0)")
    _common(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("status", help="table of Kaggle runs from the ledger, refreshed from Kaggle")
    p.add_argument("experiments", nargs="*", metavar="NAME", help="experiment names (default: all)")
    p.add_argument("--wait", action="store_true", help="poll with back-off until every run has finished")
    p.add_argument("--timeout", type=float, default=None, help=WAIT_HELP)
    p.add_argument("--offline", action="store_true", help="show the ledger without asking Kaggle")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"runs root whose incomplete folders are listed (default {DEFAULT_RUNS})")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pull", help="download and verify outputs of completed runs into runs/<exp>/v<N>/")
    p.add_argument("experiments", nargs="*", metavar="NAME", help="experiment names (default: all)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"runs root (default {DEFAULT_RUNS})")
    p.add_argument("--wait", action="store_true", help="wait for running kernels first")
    p.add_argument("--timeout", type=float, default=None, help=WAIT_HELP)
    _common(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("submit", help="validate a predictions CSV, submit it and wait for the score")
    p.add_argument("csv", metavar="CSV", help="submission file (image_name,target)")
    p.add_argument("--competition", default=COMPETITION, help=f"competition slug (default {COMPETITION})")
    p.add_argument("--sample", default=None, help="sample_submission.csv (default: the one under data/)")
    p.add_argument("--recipe", default=None, help="the blend recipe (name or file) that made the CSV; default: blend.json beside it")
    p.add_argument("--message", default=None, help="extra text for the submission description")
    p.add_argument("--force", action="store_true", help="submit even if this exact file was submitted before")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the score")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting for the score after this many s")
    _common(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("submissions", help="list your submissions with their scores")
    p.add_argument("--competition", default=COMPETITION, help=f"competition slug (default {COMPETITION})")
    _common(p)
    p.set_defaults(func=cmd_submissions)

    p = sub.add_parser("emulator", help="run the Kaggle emulator (a dry run of the real path, on 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free one)")
    p.add_argument("--competition-dir", default=None,
                   help="folder with sample_submission.csv and solution.csv (default: the one under data/)")
    p.add_argument("--datasets-root", default="data", help="attached datasets are <root>/<dataset-name> (default data)")
    p.add_argument("--state", default=".kit/emulator", help="state folder (default .kit/emulator)")
    p.add_argument("--competition", default=COMPETITION, help=f"competition slug (default {COMPETITION})")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="chance that a call or download misbehaves (429/500/lost reply/slow/truncated)")
    for kind, what in FAULT_KINDS.items():
        p.add_argument(f"--rate-{kind.replace('_', '-')}", dest=f"rate_{kind}", type=float, default=None,
                       metavar="P", help=f"chance of {what} (overrides its share of --fault-rate)")
    p.add_argument("--kernel-error-rate", type=float, default=0.0, help="chance that a kernel ends in ERROR")
    p.add_argument("--escape-names", action="store_true", help="list an output name escaping the download folder")
    p.add_argument("--slow-s", type=float, default=1.0, help="delay of a slow reply")
    p.add_argument("--seed", type=int, default=0, help="fault seed (same seed and calls, same faults)")
    p.add_argument("--workers", type=int, default=2, help="kernels run at once")
    p.add_argument("--max-sessions", type=int, default=0, help="accelerator sessions per user (0 = unlimited)")
    p.add_argument("--daily-submissions", type=int, default=5, help="submissions allowed per day")
    p.add_argument("--score-delay", type=float, default=1.0, help="seconds before a submission is scored")
    p.add_argument("--user", default="kit-user", help="user an API token authenticates as")
    _realism_options(p)
    p.set_defaults(func=cmd_emulator)


def _realism_options(p: argparse.ArgumentParser) -> None:
    """--kind, and one option per kaggle.com behaviour (a switch or a number), from `Realism`'s fields."""
    from dataclasses import MISSING, fields

    from kit.kaggle.emulator.realism import Realism

    p.add_argument("--kind", action="store_true",
                   help="the old kind mode: none of kaggle.com's behaviours (options below still apply)")
    for f in fields(Realism):
        if f.name == "seed":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, dest=f"real_{f.name}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"kaggle.com behaviour {f.name} (default {'on' if default else 'off'})")
        else:
            p.add_argument(flag, dest=f"real_{f.name}", type=type(default), default=None, metavar="N",
                           help=f"kaggle.com behaviour {f.name} (default {default})")
