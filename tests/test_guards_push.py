"""Guards on pushing that protect a competitor's sessions: a push is skipped only when the very same
content already sits under the very same kernel, and a lost reply never adopts a version whose source
differs from what was sent (the real `kaggle` client against the emulator, quick kernels)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from helpers.kaggle_support import quick_rendered

from kit.kaggle.client import connect
from kit.kaggle.push import push_one
from kit.kaggle.reconcile import source_fingerprint
from kit.kaggle.retry import RetryPolicy

SHAPE = "TpuV5E8"


def _client():
    return connect(policy=RetryPolicy(attempts=8, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                      rate_max_s=30))


def test_same_content_under_another_kernel_id_is_pushed_not_skipped(world, tmp_path: Path) -> None:
    """The content hash leaves the kernel id out (render hashes the metadata without "id"), so moving an
    experiment to a new kernel slug keeps its hash: that must push to the new kernel, not say 'unchanged'."""
    make, ledger = world
    emulator = make()
    client = _client()
    first = quick_rendered(tmp_path / "build", "guard-moved")
    assert push_one(client, ledger, first, SHAPE).action == "pushed"
    assert push_one(client, ledger, first, SHAPE).action == "skipped"  # same content, same kernel

    folder = tmp_path / "moved" / "guard-moved-v2"  # the same kernel, only its id changed
    shutil.copytree(first.directory, folder)
    meta = {**first.metadata, "id": "kit-user/guard-moved-v2", "title": "guard-moved-v2"}  # title slug = id
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=1))
    moved = dataclasses.replace(first, directory=folder, code_file=folder / first.code_file.name, metadata=meta,
                                kernel_id=meta["id"], slug="guard-moved-v2")
    assert moved.content_hash == first.content_hash
    outcome = push_one(client, ledger, moved, SHAPE)
    assert (outcome.action, outcome.kernel, outcome.version) == ("pushed", "kit-user/guard-moved-v2", 1)
    assert emulator.stats()["versions"] == 2
    assert emulator.version_dir("kit-user/guard-moved-v2", 1).is_dir()  # the new kernel exists on Kaggle
    assert ledger.read()["experiments"]["guard-moved"]["kernel"] == "kit-user/guard-moved-v2"


def test_lost_reply_never_adopts_a_newer_version_holding_other_source(world, tmp_path: Path) -> None:
    """kit recorded a pending push, then its send never reached Kaggle; meanwhile another version (pushed
    from the web editor or another machine, different source) landed. Reconciling must not record that
    version as ours: our source is pushed as the next version."""
    make, ledger = world
    emulator = make()
    client = _client()
    ours = quick_rendered(tmp_path / "ours", "guard-foreign", seed=1)
    theirs = quick_rendered(tmp_path / "theirs", "guard-foreign", seed=2)
    assert ours.kernel_id == theirs.kernel_id
    ours_fp = source_fingerprint(ours.code_file.read_text())
    assert ours_fp != source_fingerprint(theirs.code_file.read_text())

    with ledger.transaction() as data:  # what kit wrote just before its (lost) send
        data["experiments"]["guard-foreign"] = {"kernel": ours.kernel_id, "versions": [], "pending": {
            "content_hash": ours.content_hash, "body_sha256": ours_fp, "since_version": 0,
            "accelerator": SHAPE, "started_at": "2024-01-01T00:00:00Z"}}
    assert client.push(theirs.directory).version == 1  # someone else's version lands meanwhile

    outcome = push_one(client, ledger, ours, SHAPE)
    assert (outcome.action, outcome.version) == ("pushed", 2)
    versions = ledger.read()["experiments"]["guard-foreign"]["versions"]
    assert [v["version"] for v in versions] == [2]  # v1 is not ours and is not recorded as ours
    assert versions[0]["body_sha256"] == ours_fp
    assert source_fingerprint((emulator.version_dir(ours.kernel_id, 2) / "source.py").read_text()) == ours_fp
    assert emulator.stats()["versions"] == 2
    assert ledger.read()["counters"].get("reconciled_pushes", 0) == 0


def test_a_refused_push_says_why_and_what_to_do(tmp_path: Path) -> None:
    """Kaggle's `{"error": ...}` reply becomes one line naming the kernel, with the way out for the refusals a
    new user meets (the competition's rules page of this kernel's competition); a full session cap is its own
    error, so a queue waits for a free slot instead of stopping."""
    from helpers.kaggle_support import COMPETITION

    from kit.errors import KitError
    from kit.kaggle.push import SessionCapReached, _refused

    kernel = quick_rendered(tmp_path / "build", "guard-refused")
    rules = _refused(kernel, "You must accept this competition's rules before you'll be able to push")
    assert type(rules) is KitError
    assert str(rules) == ("push kit-user/guard-refused: Kaggle refused it: You must accept this competition's rules "
                          "before you'll be able to push (join the competition first: open "
                          f"https://www.kaggle.com/competitions/{COMPETITION}/rules and accept them)")
    bare = dataclasses.replace(kernel, metadata={**kernel.metadata, "competition_sources": []})
    assert "competitions/COMPETITION/rules" in str(_refused(bare, "accept the rules first"))
    cap = _refused(kernel, "Maximum batch accelerator session count of 2 reached")
    assert isinstance(cap, SessionCapReached)
    assert str(cap) == ("push kit-user/guard-refused: Kaggle refused it: "
                        "Maximum batch accelerator session count of 2 reached")
    other = _refused(kernel, "Invalid machine shape 'X'")
    assert type(other) is KitError and str(other) == "push kit-user/guard-refused: Kaggle refused it: Invalid machine shape 'X'"
