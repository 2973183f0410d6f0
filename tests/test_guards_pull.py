"""Guards on pulling: every file kept from a Kaggle run matches the manifest's sha256, not only its size
(the real `kaggle` client against the emulator, a quick kernel)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from helpers.kaggle_support import quick_rendered

from kernels.contracts import read_manifest, verify_files
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.pull import pull_all, pull_version, run_folder
from kit.kaggle.push import push_one
from kit.kaggle.retry import RetryPolicy
from kit.kaggle.status import PollPolicy, wait_until_done

SHAPE = "TpuV5E8"
QUICK_RETRY = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3, rate_max_s=30)
DONE_TIMEOUT_S = 300  # generous: a loaded machine starts kernels slowly


def _until_done(client: object, ledger: object) -> None:
    """Wait, polling fast, until every run the ledger holds has finished on the emulator."""
    wait_until_done(client, ledger, None, poll=PollPolicy(first_s=0.1, max_s=0.3), timeout_s=DONE_TIMEOUT_S)


KERNEL = "kit-user/guard-corrupt"


def _same_size_corruption(data: bytes) -> bytes:
    """The same bytes with one flipped in the middle: the size a size-only check would accept."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def test_same_size_corruption_is_never_kept(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    client = connect(policy=QUICK_RETRY)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-corrupt"), SHAPE)
    _until_done(client, ledger)
    runs = tmp_path / "runs"
    source = emulator.version_dir(KERNEL, 1) / "output"
    oof = source / "oof.csv"
    good = oof.read_bytes()

    # A same-size corrupt copy left in the staging folder (a bad disk, an earlier broken download) is
    # fetched afresh, not kept because its size is right.
    staging = runs / "guard-corrupt" / ".v1.partial"
    staging.mkdir(parents=True)
    (staging / "oof.csv").write_bytes(_same_size_corruption(good))
    # Kaggle serves a same-size corrupt file: every download is refused and nothing lands in v1.
    oof.write_bytes(_same_size_corruption(good))
    with pytest.raises(KitError, match=r"guard-corrupt/1/oof\.csv: size or sha256 differs from the manifest"):
        pull_version(client, KERNEL, 1, "guard-corrupt", "h", runs)
    assert not (runs / "guard-corrupt" / "v1").exists()
    (outcome,) = pull_all(client, ledger, None, runs)
    assert (outcome.experiment, outcome.version, outcome.action) == ("guard-corrupt", 1, "failed")
    assert "sha256 differs" in outcome.note

    oof.write_bytes(good)  # Kaggle serves the right bytes again: the pull completes, every file verified
    (staging / "oof.csv").write_bytes(_same_size_corruption(good))  # and the staged corrupt copy is replaced
    outcome = pull_version(client, KERNEL, 1, "guard-corrupt", "h", runs)
    assert outcome.action == "pulled"
    final = runs / "guard-corrupt" / "v1"
    assert (final / "oof.csv").read_bytes() == good
    verify_files(final, read_manifest(final / "manifest.json"))


def test_a_run_folder_holding_something_else_is_never_overwritten(world, tmp_path: Path) -> None:
    make, ledger = world
    make()
    client = connect(policy=QUICK_RETRY)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-held"), SHAPE)
    _until_done(client, ledger)
    runs = tmp_path / "runs"
    assert pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs).action == "pulled"
    again = pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs)
    assert (again.experiment, again.version, again.action, again.folder) == (
        "guard-held", 1, "already", runs / "guard-held" / "v1")  # verified, not fetched again
    record_path = runs / "guard-held" / "v1" / "run.json"
    record = json.loads(record_path.read_text())
    for change in ({"source": "local"}, {"kernel": "kit-user/other"}, {"version": 2}):
        record_path.write_text(json.dumps({**record, **change}))
        with pytest.raises(KitError) as info:
            pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs)
        source = change.get("source", "kaggle")
        assert str(info.value) == (f"{runs / 'guard-held' / 'v1'}: already holds another run ({source}); "
                                   "move it away to pull kit-user/guard-held/1")
    record_path.unlink()
    with pytest.raises(KitError, match=r"already holds another run \(no run\.json\)"):
        pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs)
    record_path.write_text("{broken")
    with pytest.raises(KitError, match=r"already holds another run \(no run\.json\)"):
        pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs)


def test_pull_all_reports_each_runs_own_outcome(world, tmp_path: Path) -> None:
    """One outcome per selected experiment, each with its own name and version: pulled (files announced one
    by one, the folder recorded in the ledger), still running, or never pushed; unselected ones untouched."""
    make, ledger = world
    make()
    client = connect(policy=QUICK_RETRY)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-done"), SHAPE)
    _until_done(client, ledger)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-slow", sleep_s=120.0), SHAPE)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-other", sleep_s=120.0), SHAPE)
    with ledger.transaction() as data:
        data["experiments"]["guard-ghost"] = {"kernel": "kit-user/guard-ghost", "versions": [], "pending": None}
    runs = tmp_path / "runs"
    seen: list = []
    files: list[str] = []
    outcomes = pull_all(client, ledger, ["guard-done", "guard-slow", "guard-ghost"], runs, on_outcome=seen.append,
                        on_file=files.append)
    assert seen == outcomes
    by_name = {o.experiment: o for o in outcomes}
    assert sorted(by_name) == ["guard-done", "guard-ghost", "guard-slow"]  # guard-other was not selected
    done = by_name["guard-done"]
    assert (done.action, done.version, done.folder) == ("pulled", 1, runs / "guard-done" / "v1")
    folder = runs / "guard-done" / "v1"
    assert sorted(files) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                   if p.is_file() and p.name not in ("manifest.json", "run.json", "kernel.log"))
    slow = by_name["guard-slow"]
    assert (slow.action, slow.version) == ("not-ready", 1) and slow.note in ("QUEUED", "RUNNING", "NEW_SCRIPT")
    assert (by_name["guard-ghost"].action, by_name["guard-ghost"].version, by_name["guard-ghost"].note) == (
        "not-ready", None, "not pushed")
    recorded = ledger.read()["experiments"]
    assert recorded["guard-done"]["versions"][0]["run_dir"] == str(runs / "guard-done" / "v1")
    assert recorded["guard-slow"]["versions"][0].get("run_dir") is None
    assert not (runs / "guard-other").exists()
    assert recorded["guard-other"]["versions"][0]["checked_at"] is None  # Kaggle was not even asked about it


def test_outputs_kaggle_does_not_show_yet_leave_the_run_not_ready_not_failed(world, tmp_path: Path) -> None:
    """A finished run whose outputs Kaggle does not list yet (403/404: its read-after-write lag) is 'not-ready'
    with its version and the reason, nothing is written or recorded, and the next pull fetches it; a note
    about a version Kaggle does not show yet reaches the caller's `on_note`."""
    make, ledger = world
    emulator = make()
    client = connect(policy=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-lagging"), SHAPE)
    notes: list[str] = []
    runs = tmp_path / "runs"
    (early,) = pull_all(client, ledger, None, runs, on_note=notes.append)  # right after the push: not shown yet
    assert (early.action, early.version) == ("not-ready", 1)
    assert any(n.startswith("guard-lagging: Kaggle does not show kit-user/guard-lagging/1 yet") for n in notes), notes
    _until_done(client, ledger)
    emulator.answers.push("kernels.KernelsApiService/ListKernelSessionOutput", ["404"] * 4)
    (hidden,) = pull_all(client, ledger, None, runs)
    assert (hidden.experiment, hidden.action, hidden.version, hidden.folder) == ("guard-lagging", "not-ready", 1, None)
    assert hidden.note.startswith("outputs not visible yet (") and "guard-lagging" in hidden.note, hidden.note
    assert not (runs / "guard-lagging" / "v1").exists()
    assert ledger.read()["experiments"]["guard-lagging"]["versions"][0].get("run_dir") is None
    emulator.answers.clear()
    (done,) = pull_all(client, ledger, None, runs)
    assert (done.action, done.version, done.folder) == ("pulled", 1, runs / "guard-lagging" / "v1")


@pytest.mark.parametrize("name", ["", "a/b", "../up", "/abs", ".hidden", "."])
def test_an_experiment_name_that_cannot_name_a_run_folder_is_refused(tmp_path: Path, name: str) -> None:
    """The ledger's experiment name becomes runs/<name>/v<N>: an empty name, one holding a '/' or one starting
    with '.' (hidden, '..', the staging folders' prefix) is refused with one line naming it, not created."""
    with pytest.raises(KitError) as info:
        run_folder(tmp_path, name, 3)
    assert str(info.value) == f"ledger: experiment name {name!r} cannot name a run folder"
    assert run_folder(tmp_path, "plain-name.v2", 3) == tmp_path / "plain-name.v2" / "v3"


def test_a_resumed_pull_downloads_only_what_is_missing_and_says_how_many(world, tmp_path: Path) -> None:
    """A pull counts the files it downloaded (the manifest aside): all of them the first time; after an
    interruption, a file already complete and verified in the staging folder is kept, not fetched again."""
    make, ledger = world
    emulator = make()
    client = connect(policy=QUICK_RETRY)
    for name in ("guard-count", "guard-resume"):
        push_one(client, ledger, quick_rendered(tmp_path / "build", name), SHAPE)
    _until_done(client, ledger)
    runs = tmp_path / "runs"
    first = pull_version(client, "kit-user/guard-count", 1, "guard-count", "h", runs)
    outputs = sorted(p for p in (first.folder).rglob("*") if p.is_file() and p.name not in ("run.json", "kernel.log"))
    assert first.files == len(outputs) and first.note == f"{len(outputs) - 1} downloaded"
    staging = runs / "guard-resume" / ".v1.partial"
    staging.mkdir(parents=True)
    source = emulator.version_dir("kit-user/guard-resume", 1) / "output"
    for name in ("oof.csv", "test_pred.csv"):  # complete and verified before the interruption
        (staging / name).write_bytes((source / name).read_bytes())
    resumed = pull_version(client, "kit-user/guard-resume", 1, "guard-resume", "h", runs)
    assert (resumed.action, resumed.note) == ("pulled", f"{len(outputs) - 3} downloaded")


def test_an_older_version_is_pulled_with_its_own_files_at_any_depth_and_its_provenance(world, tmp_path: Path) -> None:
    """Pulling v1 of a kernel that has a v2 fetches v1's own outputs (not the latest's), files nested several
    folders deep included, and writes run.json naming the kernel, version, content hash and a UTC finish time."""
    make, ledger = world
    emulator = make()
    client = connect(policy=QUICK_RETRY)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-two", seed=1), SHAPE)
    push_one(client, ledger, quick_rendered(tmp_path / "build2", "guard-two", seed=2), SHAPE)
    _until_done(client, ledger)
    v1 = emulator.version_dir("kit-user/guard-two", 1) / "output"
    v2 = emulator.version_dir("kit-user/guard-two", 2) / "output"
    assert (v1 / "oof.csv").read_bytes() != (v2 / "oof.csv").read_bytes()
    deep = v1 / "plots" / "fold0" / "epochs" / "curve.txt"  # a kernel writing several folders deep
    deep.parent.mkdir(parents=True)
    deep.write_text("epoch,auc\n0,0.5\n")
    manifest = json.loads((v1 / "manifest.json").read_text())
    manifest["files"]["plots/fold0/epochs/curve.txt"] = {"size": deep.stat().st_size,
                                                          "sha256": hashlib.sha256(deep.read_bytes()).hexdigest()}
    (v1 / "manifest.json").write_text(json.dumps(manifest, indent=1))
    runs = tmp_path / "runs"
    outcome = pull_version(client, "kit-user/guard-two", 1, "guard-two", "hash-one", runs)
    folder = runs / "guard-two" / "v1"
    assert (outcome.action, outcome.folder) == ("pulled", folder)
    assert (folder / "oof.csv").read_bytes() == (v1 / "oof.csv").read_bytes()
    assert (folder / "plots" / "fold0" / "epochs" / "curve.txt").read_bytes() == deep.read_bytes()
    record = json.loads((folder / "run.json").read_text())
    assert {k: record[k] for k in ("experiment", "version", "source", "kernel", "content_hash")} == {
        "experiment": "guard-two", "version": 1, "source": "kaggle", "kernel": "kit-user/guard-two",
        "content_hash": "hash-one"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(record["finished_at"])), record


def test_outputs_that_disagree_with_their_manifest_are_refused_by_name(world, tmp_path: Path) -> None:
    """A run without manifest.json is not a kit run; a file the manifest lists but Kaggle does not serve is
    named (the first of them); either way one line naming kernel/version, and no run folder."""
    make, ledger = world
    emulator = make()
    client = connect(policy=QUICK_RETRY)
    for name in ("guard-nomanifest", "guard-missing"):
        push_one(client, ledger, quick_rendered(tmp_path / "build", name), SHAPE)
    _until_done(client, ledger)
    runs = tmp_path / "runs"
    bare = emulator.version_dir("kit-user/guard-nomanifest", 1) / "output"
    (bare / "manifest.json").unlink()
    served = sorted(p for p in bare.rglob("*") if p.is_file())
    with pytest.raises(KitError) as info:
        pull_version(client, "kit-user/guard-nomanifest", 1, "guard-nomanifest", "h", runs)
    assert str(info.value) == (f"kit-user/guard-nomanifest/1: no manifest.json among its {len(served)} output "
                               "file(s); not a kit kernel run")
    short = emulator.version_dir("kit-user/guard-missing", 1) / "output"
    (short / "history.json").unlink()
    (short / "test_pred_folds.csv").unlink()
    with pytest.raises(KitError) as info:
        pull_version(client, "kit-user/guard-missing", 1, "guard-missing", "h", runs)
    assert str(info.value) == ("kit-user/guard-missing/1: 'test_pred_folds.csv' is listed in the manifest but not "
                               "among the outputs")
    assert not (runs / "guard-nomanifest" / "v1").exists() and not (runs / "guard-missing" / "v1").exists()


def test_a_run_that_ended_without_output_is_failed_with_kaggles_reason(world, tmp_path: Path) -> None:
    """A run that ended in ERROR (or was cancelled) has nothing to pull: 'failed' (never 'not-ready'), with its
    name, version and Kaggle's failure message, or the status itself when Kaggle gave no message."""
    make, ledger = world
    make()
    client = connect(policy=QUICK_RETRY)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-broken", fail="boom"), SHAPE)
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-cancelled"), SHAPE)
    _until_done(client, ledger)
    with ledger.transaction() as data:  # cancelled on kaggle.com: a terminal status without a message
        data["experiments"]["guard-cancelled"]["versions"][0].update(status="CANCEL_ACKNOWLEDGED", failure="")
    failure = ledger.read()["experiments"]["guard-broken"]["versions"][0]["failure"]
    assert failure  # Kaggle's own failure message
    runs = tmp_path / "runs"
    by_name = {o.experiment: o for o in pull_all(client, ledger, None, runs)}
    assert sorted(by_name) == ["guard-broken", "guard-cancelled"]
    for name, status, reason in (("guard-broken", "ERROR", failure),
                                 ("guard-cancelled", "CANCEL_ACKNOWLEDGED", "CANCEL_ACKNOWLEDGED")):
        outcome = by_name[name]
        assert (outcome.action, outcome.version, outcome.folder) == ("failed", 1, None)
        assert outcome.note == (f"the run ended in {status} on Kaggle ({reason}); nothing to pull: "
                                f"`kit status {name}` shows its log tail; fix it and `kit push` again")
    assert not runs.exists()
