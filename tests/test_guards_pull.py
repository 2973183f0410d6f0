"""Guards on pulling: every file kept from a Kaggle run matches the manifest's sha256, not only its size
(the real `kaggle` client against the emulator, a quick kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.kaggle_support import quick_rendered

from kernels.contracts import read_manifest, verify_files
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.pull import pull_all, pull_version
from kit.kaggle.push import push_one
from kit.kaggle.retry import RetryPolicy
from kit.kaggle.status import PollPolicy, wait_until_done

SHAPE = "TpuV5E8"
KERNEL = "kit-user/guard-corrupt"


def _same_size_corruption(data: bytes) -> bytes:
    """The same bytes with one flipped in the middle: the size a size-only check would accept."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def test_same_size_corruption_is_never_kept(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    client = connect(policy=RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-corrupt"), SHAPE)
    wait_until_done(client, ledger, None, poll=PollPolicy(first_s=0.1, max_s=0.3), timeout_s=300)  # generous: a loaded machine starts kernels slowly
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
    assert outcome.action == "failed" and "sha256 differs" in outcome.note

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
    client = connect(policy=RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-held"), SHAPE)
    wait_until_done(client, ledger, None, poll=PollPolicy(first_s=0.1, max_s=0.3), timeout_s=300)  # generous: a loaded machine starts kernels slowly
    runs = tmp_path / "runs"
    assert pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs).action == "pulled"
    again = pull_version(client, "kit-user/guard-held", 1, "guard-held", "h", runs)
    assert (again.action, again.folder) == ("already", runs / "guard-held" / "v1")  # verified, not fetched again
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
    client = connect(policy=RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-done"), SHAPE)
    wait_until_done(client, ledger, None, poll=PollPolicy(first_s=0.1, max_s=0.3), timeout_s=300)
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
