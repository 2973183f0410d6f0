"""Mutation testing of the code that guards a competitor's sessions and scores (`make mutation`).

In:  scope names (default: every scope in SCOPES), `--max-children`, `--fresh` (forget earlier results).
Out: per scope `build/mutation/<scope>/`: a copy of the tree, mutmut's `mutants/` and `run.log`;
     `build/mutation/report.md` and `report.json`: per module how many mutants were killed, survived,
     had no test reaching them, timed out, or are listed as equivalent, the score, and the diff of
     every mutant not killed. Exit code 1 when a scored scope is below TARGET_SCORE.

How: mutmut (pinned in setup.py's test extras) mutates only the scope's modules and runs, for each
mutant, only the tests of the scope's test files that reach the mutated function (mutmut's own test
selection, from one recorded run). Each scope runs in its own copy of the tree under build/, so the
working tree is never mutated and an interrupted run leaves nothing behind; a rerun reuses the
results of mutants whose function did not change. Tests that start a `kit` subprocess run the
unmutated code there (the copy's root is on PYTHONPATH, the mutants only in-process), so a function
reached only from a subprocess counts as "no tests" and lowers the score: it is never counted killed.

Score = killed / (mutants checked - equivalent); a timeout counts as not killed (see TIMEOUT_MULTIPLIER).
Equivalent mutants (no behaviour can tell them apart) are listed with their reason in docs/testing.md's
table, which this script reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "mutation"
DOC = REPO / "docs" / "testing.md"
TARGET_SCORE = 0.90
NICE = 15
KILLED = frozenset({"killed", "caught by type check"})
# mutmut stops a mutant's tests after (estimated seconds + constant) * multiplier of wall time (its default,
# 15 x (t + 1 s), times out healthy runs on a loaded machine). A timeout is never counted as killed: on a
# shared machine it may be load, not a mutant that hangs; the report lists them to look at.
TIMEOUT_MULTIPLIER = 40
TIMEOUT_CONSTANT_S = 20
# A mutant that makes a test hang (a loop whose step was mutated to zero, a read loop whose end marker never
# comes) would otherwise run until mutmut's limit above, about 14 minutes each. pytest-timeout fails the hanging
# test after this many wall seconds instead: the test goes red, as it would in CI (pytest.ini's timeout), so the
# mutant counts as killed. Every test of every scope takes under 15 s unloaded, so a healthy one never reaches it.
TEST_TIMEOUT_S = 180
# mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code), by what they mean here.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check",
          None: "not checked"}
EQUIVALENT_ROW = re.compile(r"^\|\s*`(?P<name>[^`]+__mutmut_\d+)`\s*\|(?P<reason>.+)\|\s*$")
ALSO_COPY = ("pytest.ini", "experiments", "ensembles", "data", "bench", "setup.py")


@dataclass(frozen=True)
class Scope:
    """Modules to mutate (optionally only some functions: mutmut name globs) and the tests that cover them."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]
    only: tuple[str, ...] = ()  # mutant-name globs, e.g. "kernels.main.x_fold_files__mutmut_*"
    deselect: tuple[str, ...] = ()  # tests that reach the modules only through a subprocess (cannot kill a mutant)


SCOPES: dict[str, Scope] = {
    "kaggle-ledger": Scope(
        modules=("kit/kaggle/ledger.py", "kit/kaggle/retry.py"),
        tests=("tests/test_kaggle_units.py", "tests/test_guards_ledger.py", "tests/test_guards_retry.py"),
    ),
    "kaggle": Scope(
        modules=("kit/kaggle/push.py", "kit/kaggle/reconcile.py", "kit/kaggle/pull.py", "kit/kaggle/submit.py",
                 "kit/kaggle/status.py"),
        tests=("tests/test_kaggle_units.py", "tests/test_kaggle_emulator.py", "tests/test_kaggle_realism.py",
               "tests/test_kaggle_answers.py", "tests/test_guards_push.py",
               "tests/test_guards_reconcile.py", "tests/test_guards_pull.py", "tests/test_guards_submit.py",
               "tests/test_guards_status.py"),
        # The first reaches kit only through a subprocess; the second (9 s, 30 % random faults over threads)
        # kills by chance of thread timing, and would run for every mutant of push, pull and submit it reaches.
        deselect=("tests/test_kaggle_emulator.py::test_kit_emulator_command_serves_the_kaggle_cli_and_keeps_state",
                  "tests/test_kaggle_emulator.py::test_fault_run_quick_kernels"),
    ),
    "kernels": Scope(
        modules=("kernels/contracts.py", "kernels/metrics.py", "kernels/main.py"),
        tests=("tests/test_metrics.py", "tests/test_significance.py", "tests/test_runs.py",
               "tests/test_guards_runs.py", "tests/test_guards_folds.py", "tests/test_guards_contracts.py",
               "tests/test_guards_metrics.py"),
        only=("kernels.contracts.*", "kernels.metrics.*", "kernels.main.x_fold_files__mutmut_*"),
    ),
    "kernels-data": Scope(
        modules=("kernels/data.py",),
        tests=("tests/test_data_pipeline.py", "tests/test_guards_folds.py"),
    ),
    "blend": Scope(
        modules=("kit/blend/nested.py", "kit/blend/methods.py", "kit/blend/inputs.py"),
        tests=("tests/test_blend_methods.py", "tests/test_blend_honest.py", "tests/test_blend_baseline.py",
               "tests/test_blend_cli.py", "tests/test_guards_blend_nested.py", "tests/test_blend_speed.py",
               "tests/test_guards_blend_inputs.py", "tests/test_guards_blend_methods.py",
               "tests/test_blend_workers.py"),
    ),
}


def equivalent_mutants(doc: Path = DOC) -> dict[str, str]:
    """{mutant name: reason} from the rows of docs/testing.md's equivalent-mutant table."""
    if not doc.exists():
        return {}
    rows = (EQUIVALENT_ROW.match(line) for line in doc.read_text(encoding="utf-8").splitlines())
    return {m["name"]: m["reason"].strip() for m in rows if m}


def _tracked_files() -> list[str]:
    """Files git tracks plus untracked ones it does not ignore (what a fresh clone with your edits holds)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return [name for name in out if (REPO / name).is_file() and not (REPO / name).is_symlink()]


def _copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def _setup_cfg(scope: Scope) -> str:
    def block(key: str, values: tuple[str, ...]) -> str:
        return f"{key} =\n" + "".join(f"    {v}\n" for v in values)

    return ("[mutmut]\n" + block("source_paths", ("kit", "kernels")) + block("only_mutate", scope.modules)
            + block("also_copy", ALSO_COPY) + block("pytest_add_cli_args_test_selection", scope.tests)
            + block("pytest_add_cli_args", (f"--timeout={TEST_TIMEOUT_S}",
                                            *(f"--deselect={t}" for t in scope.deselect)))
            + f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\ntimeout_constant = {TIMEOUT_CONSTANT_S}\n")


def prepare(name: str, scope: Scope, fresh: bool) -> Path:
    """build/mutation/<name>/ holding the tree, its mutmut config and mutants/ pre-filled with the same tree
    (so `kit` imports from mutants/ from the first import on, never from an editable install elsewhere).
    Earlier results are kept unless `fresh`; mutmut re-mutates only files that changed."""
    work = OUT / name
    if fresh and work.exists():
        shutil.rmtree(work)
    files = _tracked_files()
    stale = [work / d for d in ("kit", "kernels", "tests")]
    for folder in stale:  # a file deleted from the tree must not linger in the copy
        if folder.exists():
            shutil.rmtree(folder)
    _copy_tree(files, work)
    mutants = work / "mutants"
    for name_ in files:
        target = mutants / name_
        source = REPO / name_
        meta = target.with_name(target.name + ".meta")
        stamp = target.with_name(target.name + ".source-sha256")  # which source the mutants were made from
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if target.exists() and meta.exists() and stamp.exists() and stamp.read_text() == digest:
            continue  # mutmut's mutated copy of an unchanged file: keep it and its results
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        meta.unlink(missing_ok=True)
        if name_ in scope.modules:
            stamp.write_text(digest)
    (work / "setup.cfg").write_text(_setup_cfg(scope), encoding="utf-8")
    return work


def run_scope(name: str, scope: Scope, max_children: int, fresh: bool, only: tuple[str, ...] = ()) -> int:
    """Run mutmut on one scope (`only`: mutant-name globs that narrow this run, e.g. one module first)."""
    work = prepare(name, scope, fresh)
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = ["nice", "-n", str(NICE), sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
           *(only or scope.only)]
    print(f"mutation: {name}: {', '.join(scope.modules)} against {len(scope.tests)} test file(s) "
          f"(log: {work / 'run.log'})", flush=True)
    with open(work / "run.log", "w", encoding="utf-8") as log:
        return subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _module_of(mutant: str) -> str:
    return mutant.split(".x", 1)[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]


def collect(name: str, scope: Scope) -> dict[str, str]:
    """{mutant name: status} of a scope's run (the mutants its `only` globs select)."""
    import fnmatch

    statuses: dict[str, str] = {}
    for module in scope.modules:
        meta = OUT / name / "mutants" / (module + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        for mutant, code in codes.items():
            if scope.only and not any(fnmatch.fnmatchcase(mutant, g) for g in scope.only):
                continue
            statuses[mutant] = STATUS.get(code, "suspicious")
    return statuses


DIFF_SCRIPT = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for mutant, module in json.load(sys.stdin).items():
    try:
        out[mutant] = get_diff_for_mutant(mutant, path=Path(module))
    except Exception as exc:  # a diff that cannot be read is named, not fatal
        out[mutant] = f"(no diff: {type(exc).__name__}: {exc})"
print(json.dumps(out))
"""


def diffs(name: str, mutants: dict[str, str]) -> dict[str, str]:
    """mutmut's diff of each mutant ({mutant: module path}), read in one process in the scope's folder."""
    if not mutants:
        return {}
    work = OUT / name
    result = subprocess.run([sys.executable, "-c", DIFF_SCRIPT], cwd=work, input=json.dumps(mutants),
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(work)})
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {m: f"(no diff: {result.stderr.strip()[-300:]})" for m in mutants}


def report(names: list[str], equivalent: dict[str, str]) -> tuple[str, dict, bool]:
    """(markdown, json-able figures, every scored scope at target)."""
    lines = ["# Mutation testing report", "", f"Target: {TARGET_SCORE:.0%} of non-equivalent mutants killed "
             "('no tests' and timeouts count as not killed; 'not checked': the run stopped before them).", "",
             "| scope | module | mutants | killed | survived | no tests | timeout | equivalent | not checked | score |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    figures: dict = {"target": TARGET_SCORE, "scopes": {}}
    ok = True
    details: list[str] = []
    for name in names:
        statuses = collect(name, SCOPES[name])
        if not statuses:
            lines.append(f"| {name} | (not run) | | | | | | | | |")
            continue
        per_module: dict[str, Counter] = {}
        for mutant, status in statuses.items():
            counter = per_module.setdefault(_module_of(mutant), Counter())
            counter["equivalent" if mutant in equivalent and status not in KILLED else status] += 1
        total = Counter()
        for module, counts in sorted(per_module.items()):
            total.update(counts)
            lines.append(_row(name, module, counts))
        lines.append(_row(name, "**all**", total))
        score = _score(total)
        figures["scopes"][name] = {"modules": {m: dict(c) for m, c in per_module.items()}, "score": score,
                                   "unchecked": total["not checked"]}
        ok = ok and score is not None and score >= TARGET_SCORE and not total["not checked"]
        open_ = sorted(m for m, s in statuses.items() if s not in KILLED | {"not checked"} and m not in equivalent)
        stale = sorted(m for m, s in statuses.items() if s in KILLED and m in equivalent)
        if open_:
            modules = {_module_of(m): path for path in SCOPES[name].modules
                       for m in [path[:-3].replace("/", ".") + ".x"]}
            shown = diffs(name, {m: modules.get(_module_of(m), "") for m in open_})
            details += ["", f"## {name}: not killed ({len(open_)})", ""]
            for mutant in open_:
                details += [f"### `{mutant}` ({statuses[mutant]})", "", "```diff", shown.get(mutant, ""), "```", ""]
        if stale:
            details += ["", f"## {name}: listed as equivalent but killed (remove from docs/testing.md)", ""]
            details += [f"- `{m}`" for m in stale]
    return "\n".join(lines + details) + "\n", figures, ok


def _score(counts: Counter) -> float | None:
    considered = sum(counts.values()) - counts["equivalent"] - counts["skipped"] - counts["not checked"]
    return (sum(counts[k] for k in KILLED) / considered) if considered else None


def _row(scope: str, module: str, c: Counter) -> str:
    score = _score(c)
    killed = sum(c[k] for k in KILLED)
    return (f"| {scope} | {module} | {sum(c.values())} | {killed} | {c['survived'] + c['suspicious']} | "
            f"{c['no tests']} | {c['timeout']} | {c['equivalent']} | {c['not checked']} | "
            f"{'-' if score is None else f'{score:.1%}'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("scopes", nargs="*", help=f"scopes to run (default: all of {', '.join(SCOPES)})")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--resume", action="store_true",
                        help="keep earlier results of mutants whose module did not change (default: start afresh)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from earlier runs")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="only mutants whose name matches (mutmut's names, e.g. 'kernels.contracts.*'); repeatable")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scopes if n not in SCOPES]
    if unknown:
        parser.error(f"unknown scope(s) {', '.join(unknown)}: expected some of {', '.join(SCOPES)}")
    names = args.scopes or list(SCOPES)
    for name in names:
        if not args.report_only:
            code = run_scope(name, SCOPES[name], args.max_children, fresh=not args.resume, only=tuple(args.only))
            if code != 0:
                print(f"mutation: {name}: mutmut exited with {code}; see {OUT / name / 'run.log'}", file=sys.stderr)
    text, figures, ok = report(list(SCOPES), equivalent_mutants())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(text, encoding="utf-8")
    (OUT / "report.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(text.split("\n## ", 1)[0])
    print(f"mutation: report with every mutant not killed: {OUT / 'report.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
