"""Every command's console output is legible at any width: rendered at COLUMNS 60, 80, 100, 120 and 200 and
in a pipe, no table cell is cut ("…"), no line is wider than the width, no header is split inside a word.

The outputs come from the fixtures other tests build: synthetic run folders (`helpers.blend_fixtures`) for
`kit blend` / `kit report`, the repository's experiments for `kit plan`, the Kaggle emulator with quick
kernels (`helpers.kaggle_support`) for `kit status` / `pull` / `submit` / `submissions`, tiny synthetic data for
`kit data`. (`kit predict`, `kit preflight` and the demo summary are checked where their fixtures are built:
tests/test_predict.py, tests/test_preflight.py, tests/test_demo.py.) A word longer than the whole width (a
long path alone on its line) is the one line allowed to be wider: cutting it would make it useless.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.blend_fixtures import make_baseline_run, make_cohort
from helpers.widths import PIPE_WIDTH, RULE, WIDTHS, problems
from test_blend_cli import SPECS, _workspace

from kit import console as console_module
from kit.cli import main as kit_main
from kit.console import MUST, Col, Grid, console, print_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def headers(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The words of every table header laid out during the test (recorded as kit.console lays them out)."""
    words: set[str] = set()
    layout = console_module.layout

    def recording(grid: Grid, width: int):  # noqa: ANN202 - kit.console.layout's own return type
        words.update(w for col in grid.cols for w in col.header.split())
        return layout(grid, width)

    monkeypatch.setattr(console_module, "layout", recording)
    return words


@pytest.fixture()
def at_width(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             headers: set[str]) -> Callable[..., Iterator[tuple[int, str]]]:
    """``at_width(fn)``: for each width, set the console's width, call fn(), check its stdout and stderr and
    yield (width, stdout)."""

    def run(fn: Callable[[], object]) -> Iterator[tuple[int, str]]:
        for width in WIDTHS:
            monkeypatch.setattr(console, "width", width)
            capsys.readouterr()
            fn()
            out, err = capsys.readouterr()
            assert not problems(out, width, headers), "\n".join(problems(out, width, headers)) + "\n" + out
            assert "…" not in err, err
            yield width, out

    return run


def _in_a_pipe(*args: str, cwd: Path = REPO) -> str:
    """`kit ARGS` in a subprocess whose stdout is a pipe and COLUMNS is unset (as in `make demo`'s log)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "kit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


# -- the console's own layouts ----------------------------------------------------------------------
def test_a_grid_drops_columns_then_turns_into_records_and_never_cuts(at_width) -> None:
    run = "a-rather-long-run-name-of-45-characters-ok/v1"
    grid = Grid("Runs", (Col("#", keep=MUST, right=True), Col("run", keep=MUST, wrap=True),
                         Col("model", "backbone or architecture", keep=5, wrap=True),
                         Col("AUC", "OOF AUC over its 95 % interval", keep=MUST),
                         Col("wide", "a low-priority column", keep=0)),
                (("1", run, "scratch residual 4x48", "0.709\n[0.650, 0.760]", "x" * 30),), full_in="report.md",
                heading=2)
    shown = dict(at_width(lambda: print_grid(grid)))
    assert f"1 {run}" in shown[60] and "AUC over its 95 % interval: 0.709" in shown[60]  # a record
    for width in (80, 100):
        assert f"Not shown at {width} columns: a low-priority column. The full table is in report.md." in (
            " ".join(shown[width].split()))
    assert "wide" in shown[120] and "Not shown" not in shown[120] + shown[200]
    for out in shown.values():
        assert run in out and "[0.650, 0.760]" in out and "x" * 30 in out + "x" * 30


def test_text_wraps_at_spaces_keeps_its_indent_and_never_cuts_a_word(monkeypatch, capsys) -> None:
    monkeypatch.setattr(console, "width", 30)
    path = "/a/path/that/is/longer/than/thirty/columns/report.md"
    console.print(f"  wrote {path} and [bold]the plots[/] beside it")
    console.rule("run 1/2: demo-mobilenet (mobilenet_v2, 64 px, 4 folds)")
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["  wrote", f"  {path}", "  and the plots beside it"]
    assert out[3:5] == ["run 1/2: demo-mobilenet", "(mobilenet_v2, 64 px, 4 folds)"] and set(out[5]) == {RULE}


# -- kit blend / kit report -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blend_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four synthetic runs and a baseline that one of them does not beat; a recipe comparing four methods."""
    tmp = tmp_path_factory.mktemp("widths")
    recipe = ('[runs]\nglobs = ["*"]\n[method]\nname = "rank_mean"\n[report]\ncompare = ["mean", "greedy", "stacking"]\n'
              'bootstrap = 100\n')
    cohort = make_cohort(n=400, n_test=60)
    ws = _workspace(tmp, cohort, SPECS, recipe=recipe)
    make_baseline_run(ws["runs"], cohort, 0.6)
    return ws


def test_blend_and_report_fit_every_width(blend_workspace: dict[str, Path], at_width, monkeypatch) -> None:
    from kit.blend.report import print_console

    ws = blend_workspace
    monkeypatch.setattr(console, "width", PIPE_WIDTH)
    outcome: list = []
    import kit.blend.build as build

    run_blend = build.run_blend
    monkeypatch.setattr(build, "run_blend", lambda *a, **k: outcome.append(run_blend(*a, **k)) or outcome[-1])
    assert kit_main(["blend", "t", "--ensembles", str(ws["ens"]), "--runs", str(ws["runs"])]) == 0
    report = outcome[-1].report
    shown = dict(at_width(lambda: print_console(report, console, "ensembles/t/report.md")))
    assert "Not shown at 60 columns" in shown[60] and "ensembles/t/report.md" in shown[60]
    for width, out in shown.items():
        for run in ("effb0/v1", "resnet/v1", "cnn-a/v1", "cnn-b/v1", "baseline/v1"):
            assert run in out, (width, run)  # identifiers whole at every width
    assert "[" in shown[60] and "does not beat" in " ".join(shown[200].split())


def test_report_in_a_pipe(tmp_path: Path, headers: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`kit report` of an ensemble, its stdout a pipe (as in `make demo`'s log): 80 columns, nothing cut."""
    cohort = make_cohort(n=160, n_test=20)
    ws = _workspace(tmp_path, cohort, SPECS[:2], recipe="[report]\nbootstrap = 50\n")
    make_baseline_run(ws["runs"], cohort, 0.6)
    args = ("report", "t", "--ensembles", str(ws["ens"]), "--runs", str(ws["runs"]))
    monkeypatch.setattr(console, "width", PIPE_WIDTH)
    assert kit_main(list(args)) == 0  # in this process too: the headers it lays out are recorded
    out = _in_a_pipe(*args)
    assert "Leaderboard" in out and "baseline/v1" in out and "effb0/v1" in out and headers
    assert not problems(out, PIPE_WIDTH, headers), problems(out, PIPE_WIDTH, headers)


# -- kit plan -------------------------------------------------------------------------------------------
def test_plan_fits_every_width_and_a_pipe(at_width, monkeypatch, tmp_path: Path, headers: set[str]) -> None:
    monkeypatch.chdir(REPO)
    args = ["plan", "ensembles/kaggle-top.toml", "--runs", str(tmp_path / "none")]
    shown = dict(at_width(lambda: kit_main(args)))
    for out in shown.values():
        assert "kaggle-b7-384-meta" in out and "18.4 / 20" in out  # the last member and the week
    assert "efficientnet_b7" in shown[80] and "A terminal" in shown[80]
    piped = _in_a_pipe(*args)
    assert headers and not problems(piped, PIPE_WIDTH, headers), problems(piped, PIPE_WIDTH, headers)


# -- kit data --------------------------------------------------------------------------------------------
def test_data_summary_fits_every_width(at_width, tmp_path: Path) -> None:
    """`kit data`'s closing table for a full-size synthetic dataset (its records; no images are written)."""
    from kit.commands.data import _report
    from kit.data.shards import bin_balance
    from kit.data.synth import SynthSpec, synth_records
    from kit.data.tfrecords import DatasetSummary

    train, test = synth_records(SynthSpec(n_train=33126, n_test=10982, shards=15))
    summary = DatasetSummary(tmp_path / "data" / "synth-512", (), bin_balance(train), bin_balance(test))
    shown = dict(at_width(lambda: _report(summary)))
    assert all("malignant" in out and "33126 train images" in " ".join(out.split()) for out in shown.values())


# -- kit status / pull / submit / submissions, against the emulator --------------------------------------
def test_kaggle_commands_fit_every_width(world, tmp_path: Path, at_width, monkeypatch) -> None:
    from helpers.kaggle_support import COMPETITION, quick_rendered

    from kit.kaggle.client import connect
    from kit.kaggle.push import push_queue
    from kit.kaggle.retry import RetryPolicy
    from kit.kaggle.status import PollPolicy, wait_until_done

    make, ledger = world
    make()
    monkeypatch.chdir(tmp_path)
    client = connect(policy=RetryPolicy(attempts=8, base_s=0.01, cap_s=0.05))
    kernels = [quick_rendered(tmp_path / "build", name, seed=i, fail="boom" if i == 2 else "")
               for i, name in enumerate(("quick-width-a", "a-much-longer-experiment-name-for-the-table", "quick-fails"))]
    poll = PollPolicy(first_s=0.1, max_s=0.3)
    push_queue(client, ledger, kernels, lambda k: "TpuV5E8", concurrency=3, poll=poll)
    wait_until_done(client, ledger, None, poll=poll, timeout_s=60)
    shown = dict(at_width(lambda: kit_main(["status"])))
    for out in shown.values():
        assert "a-much-longer-experiment-name-for-the-table" in out and "COMPLETE" in out and "ERROR" in out
    pulled = dict(at_width(lambda: kit_main(["pull"])))
    assert "pulled" in pulled[60] and "already pulled" in pulled[200]  # pulled at the first width, then kept
    at_width_status_offline = dict(at_width(lambda: kit_main(["status", "--offline"])))
    assert all("quick-fails" in out for out in at_width_status_offline.values())
    comp = tmp_path / "competition"
    assert kit_main(["submit", str(comp / "sample_submission.csv"), "--sample", str(comp / "sample_submission.csv"),
                     "--message", "a message long enough to wrap in the description column of the table"]) == 0
    shown = dict(at_width(lambda: kit_main(["submissions"])))
    for out in shown.values():
        assert "COMPLETE" in out and COMPETITION in " ".join(out.split())
