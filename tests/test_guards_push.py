"""Guards on pushing that protect a competitor's sessions: a push is skipped only when the very same
content already sits under the very same kernel, and a lost reply never adopts a version whose source
differs from what was sent (the real `kaggle` client against the emulator, quick kernels)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests
from helpers.kaggle_support import COMPETITION, quick_rendered
from urllib3.connection import HTTPConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError

from kernels.accelerators import ACCELERATORS, NO_ACCELERATOR
from kernels.config import from_dict
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.ledger import Ledger, now_iso
from kit.kaggle.push import (
    DEFAULT_CONCURRENCY,
    PushOutcome,
    PushUncertain,
    SessionCapReached,
    _never_sent,
    _refused,
    busy_sessions,
    check_sources,
    default_concurrency,
    push_one,
    push_queue,
    unchanged,
)
from kit.kaggle.reconcile import PollPolicy, source_fingerprint
from kit.kaggle.retry import CredentialsRejected, KaggleCallError, KaggleUnreachable, RetryPolicy

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


SAVE = "kernels.KernelsApiService/SaveKernel"
GET_KERNEL = "kernels.KernelsApiService/GetKernel"


def test_a_failure_before_the_request_left_is_told_from_a_lost_reply() -> None:
    """A refused connection or a connect timeout cannot have reached Kaggle: the push is simply sent again.
    Anything else (a read timeout, a reset, a 5xx) may have done the work, so kit asks Kaggle first."""
    with socket.socket() as probe:  # a port nothing listens on: the real refusal, as requests raises it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5, proxies={"http": "", "https": ""})
    conn = HTTPConnection("10.255.255.1", 80)
    unreachable = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(  # type: ignore[arg-type]
        conn, "Failed to establish a new connection: [Errno 101] Network is unreachable")))
    never = [refused.value, requests.exceptions.ConnectTimeout("connect timed out"), unreachable,
             ConnectionRefusedError(111, "Connection refused")]
    assert [_never_sent(exc) for exc in never] == [True] * len(never)
    maybe = [requests.exceptions.ReadTimeout("read timed out"),
             requests.ConnectionError("('Connection aborted.', RemoteDisconnected('closed'))"),
             requests.ConnectionError("Connection reset by peer"), requests.HTTPError("500 Server Error"),
             ValueError("Expecting value: line 1 column 1 (char 0)")]
    assert [_never_sent(exc) for exc in maybe] == [False] * len(maybe)


def test_sources_kaggle_names_as_missing_are_all_listed_in_one_line(world, tmp_path: Path) -> None:
    """Kaggle pushes a kernel whose sources do not exist and names them in its reply: kit records the version
    and stops with one line naming every missing source by kind, and what to do."""
    make, ledger = world
    emulator = make()
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-missing", datasets=["kit/gone-a", "kit/gone-b"])
    meta = {**kernel.metadata, "kernel_sources": ["kit-user/no-such-kernel"]}
    (kernel.directory / "kernel-metadata.json").write_text(json.dumps(meta, indent=1))
    kernel = dataclasses.replace(kernel, metadata=meta)
    with pytest.raises(KitError) as info:
        push_one(client, ledger, kernel, SHAPE)
    assert str(info.value) == (
        "push kit-user/guard-missing: Kaggle says these sources do not exist (datasets: kit/gone-a, kit/gone-b; "
        "kernels: kit-user/no-such-kernel); it pushed v1 anyway, which will fail without them: fix the sources "
        "and push again")
    assert emulator.stats()["versions"] == 1
    assert [v["version"] for v in ledger.read()["experiments"]["guard-missing"]["versions"]] == [1]


def test_a_lost_reply_is_settled_by_asking_kaggle_and_the_wait_is_announced(world, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """The push's reply is lost after Kaggle did the work: kit says it waits for Kaggle to show the push,
    then records the version it shows as a reconciled push (no second push)."""
    make, ledger = world
    emulator = make()  # a new kernel answers 404 for a moment after the push (read-after-write lag)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    emulator.answers.push(SAVE, ["lost"])
    client = _client()
    notes: list[str] = []
    outcome = push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-lost"), SHAPE,
                       sleep=lambda s: time.sleep(min(s, 0.1)), on_note=notes.append)
    assert (outcome.experiment, outcome.kernel, outcome.action, outcome.version) == (
        "guard-lost", "kit-user/guard-lost", "reconciled", 1)
    assert outcome.note.startswith("reply lost (HTTP 500: ")
    assert notes and notes[0].startswith("kit-user/guard-lost: waiting up to 30 s for Kaggle to show whether the "
                                         "push landed"), notes
    assert emulator.stats()["versions"] == 1


def test_a_lost_reply_kaggle_cannot_be_asked_about_keeps_the_push_pending(world, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """The reply is lost and then Kaggle does not answer the question 'did it land?' either (5xx on every
    try): kit stops with one line saying both, pushes nothing again, and keeps the pending record so the
    next `kit push` settles it first."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    emulator.answers.push(SAVE, ["lost"])
    emulator.answers.push(GET_KERNEL, ["404"] + ["500"] * 12)  # before the push: none yet; after: failing
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    with pytest.raises(PushUncertain) as info:
        push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-unasked"), SHAPE, sleep=lambda s: None)
    line = str(info.value)
    assert line.startswith("push kit-user/guard-unasked: the reply was lost (HTTP 500: ") and "\n" not in line
    assert ", and asking Kaggle whether it landed failed (" in line
    assert line.endswith("); nothing was pushed again: run `kit push` again later to settle it")
    assert emulator.stats()["versions"] == 1
    assert ledger.read()["experiments"]["guard-unasked"]["pending"]["since_version"] == 0


def test_a_sweep_keeps_as_many_sessions_busy_as_kaggle_allows_for_its_machines() -> None:
    """The default concurrency is Kaggle's smallest session cap among the sweep's accelerators; machines
    without a known cap (none, CPU, an unknown shape) leave the default of two."""
    assert DEFAULT_CONCURRENCY == 2
    assert default_concurrency([]) == DEFAULT_CONCURRENCY
    assert default_concurrency([NO_ACCELERATOR, NO_ACCELERATOR]) == DEFAULT_CONCURRENCY
    assert default_concurrency(["NvidiaTeslaA100-next"]) == DEFAULT_CONCURRENCY
    assert default_concurrency(["NvidiaTeslaT4", NO_ACCELERATOR, "unknown"]) == 2
    assert default_concurrency(["NvidiaTeslaT4", "TpuV5E8"]) == 1 == ACCELERATORS["TpuV5E8"].sessions_at_once
    assert ACCELERATORS[NO_ACCELERATOR].sessions_at_once != DEFAULT_CONCURRENCY  # so "none" is really left out


def test_busy_sessions_are_pushes_in_flight_and_runs_still_going_on_an_accelerator(tmp_path: Path) -> None:
    """A queue counts as busy what may hold an accelerator session: a run QUEUED or RUNNING on one, or a push
    in flight (pending) to one, judged by the machine of that push, not of the run before it. Finished runs,
    runs on no accelerator and experiments never pushed hold none."""
    def run(version: int, status: str, accelerator: str) -> dict:
        return {"version": version, "status": status, "accelerator": accelerator}

    def pending(accelerator: str) -> dict:
        return {"content_hash": "h", "body_sha256": "b", "since_version": 1, "accelerator": accelerator,
                "started_at": "2024-01-01T00:00:00Z"}

    ledger = Ledger(tmp_path / "ledger.json")
    experiments = {
        "queued-tpu": ([run(1, "COMPLETE", SHAPE), run(2, "QUEUED", SHAPE)], None),
        "running-gpu": ([run(1, "RUNNING", "NvidiaTeslaT4")], None),
        "done-tpu": ([run(2, "COMPLETE", SHAPE), run(1, "RUNNING", SHAPE)], None),  # the latest counts
        "failed-tpu": ([run(1, "ERROR", SHAPE)], None),
        "running-cpu": ([run(1, "RUNNING", "none")], None),
        "never-pushed": ([], None),
        "first-push-in-flight": ([], pending(SHAPE)),
        "tpu-push-after-a-cpu-run": ([run(1, "COMPLETE", "none")], pending(SHAPE)),
        "cpu-push-after-a-tpu-run": ([run(1, "COMPLETE", SHAPE)], pending("none")),
        "cpu-push-while-cpu-runs": ([run(1, "RUNNING", "none")], pending("none")),
    }
    with ledger.transaction() as data:
        for name, (versions, push) in experiments.items():
            data["experiments"][name] = {"kernel": f"kit-user/{name}", "versions": versions, "pending": push}
    assert busy_sessions(ledger) == ["first-push-in-flight", "queued-tpu", "running-gpu",
                                     "tpu-push-after-a-cpu-run"]


def _with_meta(kernel, **changes):
    """The quick kernel with its metadata changed (the file rewritten, as render would write it)."""
    meta = {**kernel.metadata, **changes}
    (kernel.directory / "kernel-metadata.json").write_text(json.dumps(meta, indent=1))
    return dataclasses.replace(kernel, metadata=meta, kernel_id=meta["id"])


def test_sources_are_checked_before_anything_is_sent_each_once_and_named_by_kind(world, tmp_path: Path) -> None:
    """Before a sweep sends anything, every source of every kernel is checked: datasets must be owner/slug and
    visible, competitions joinable, kernel and model sources well formed (owner/slug, and the five parts of a
    model). Each source is asked about once however many kernels use it; the first problem is one line naming
    the kernel, the kind of source and the source; titles whose slug is not the id's are refused first."""
    make, _ = world
    emulator = make()
    (tmp_path / "datasets" / "real-data").mkdir()
    client = _client()
    good = dict(dataset_sources=["kit/real-data"], kernel_sources=["kit-user/features"],
                model_sources=["kit/effnet/tensorFlow2/b0/1"])
    kernels = [_with_meta(quick_rendered(tmp_path / "build", f"guard-src-{i}", seed=i), **good) for i in range(3)]
    before = emulator.stats()["calls"]
    check_sources(client, kernels)
    assert emulator.stats()["calls"] - before == 2  # the dataset and the competition, once each

    def problem(**sources) -> str:
        kernel = _with_meta(quick_rendered(tmp_path / "bad", "guard-src-bad"), **{**good, **sources})
        with pytest.raises(KitError) as info:
            check_sources(client, [kernels[0], kernel])
        return str(info.value)

    head = "push kit-user/guard-src-bad: "
    shape = "expected owner/dataset-slug; nothing was pushed"
    for dataset in ("kit", "kit/", "/real-data", "kit/real-data/v2"):
        assert problem(dataset_sources=[dataset]) == f"{head}dataset source {dataset!r}: {shape}"
    assert problem(dataset_sources=["kit/real-data", "kit/reel-data"]) == (
        f"{head}dataset source 'kit/reel-data': Kaggle has no such dataset (or you cannot see it); nothing was pushed")
    assert problem(competition_sources=["no-such-competition"]) == (
        f"{head}competition source 'no-such-competition': competition 'no-such-competition' not found; "
        "nothing was pushed")
    for ref in ("features", "kit-user/", "kit-user/features/v2"):
        assert problem(kernel_sources=[ref]) == (
            f"{head}kernel source {ref!r}: expected owner/kernel-slug; nothing was pushed")
    for ref in ("kit/effnet/tensorFlow2/b0", "kit/effnet/tensorFlow2//1", "kit/effnet/tensorFlow2/b0/1/x"):
        assert problem(model_sources=[ref]) == (
            f"{head}model source {ref!r}: expected owner/model/framework/variation/version; nothing was pushed")

    titled = _with_meta(quick_rendered(tmp_path / "titled", "guard-src-title"), title="Guard Source Title!")
    with pytest.raises(KitError) as info:  # the slug is checked for every kernel before any source
        check_sources(client, [_with_meta(kernels[1], dataset_sources=["kit/reel-data"]), titled])
    assert str(info.value) == (
        "push kit-user/guard-src-title: Kaggle makes the slug 'guard-source-title' from the title "
        "'Guard Source Title!', not the id's 'guard-src-title', and would file the kernel where kit does not look: "
        f"make the title's slug equal the id in {titled.directory / 'kernel-metadata.json'}; nothing was sent")


def _pending_push(ledger, kernel, body_sha256: str = "0" * 64) -> None:
    """What kit writes just before it sends a push (its reply then lost)."""
    with ledger.transaction() as data:
        data["experiments"][kernel.experiment.name] = {"kernel": kernel.kernel_id, "versions": [], "pending": {
            "content_hash": kernel.content_hash, "body_sha256": body_sha256, "since_version": 0,
            "accelerator": SHAPE, "started_at": now_iso()}}


def _unknown_earlier_push(world, tmp_path: Path, monkeypatch, name: str):  # noqa: ANN202 - (emulator, ledger, client, kernel)
    """An experiment whose earlier push's reply was lost, young enough (settle window 900 s) that Kaggle showing
    nothing of it settles nothing; no wait for Kaggle's consistency."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    monkeypatch.setenv("KIT_PENDING_SETTLE_S", "900")
    kernel = quick_rendered(tmp_path / "build", name)
    _pending_push(ledger, kernel)
    return emulator, ledger, _client(), kernel


def test_an_earlier_push_still_unknown_stops_the_next_one_unless_forced(world, tmp_path: Path, monkeypatch) -> None:
    """A push whose reply was lost is settled before the experiment is pushed again. Kaggle shows nothing of
    it yet: kit stops with the one line that says what it knows, keeps the record and pushes nothing; with
    --force the earlier push is dropped (said so) and the new one sent."""
    emulator, ledger, client, kernel = _unknown_earlier_push(world, tmp_path, monkeypatch, "guard-unknown")
    with pytest.raises(PushUncertain) as info:
        push_one(client, ledger, kernel, SHAPE)
    assert str(info.value) == (
        "push kit-user/guard-unknown: an earlier push's reply was lost, and Kaggle showed nothing of "
        "kit-user/guard-unknown for 0 s, so kit cannot tell whether the push made a new version; nothing was pushed "
        "again. Check with `kit status guard-unknown` (or `kaggle kernels status kit-user/guard-unknown`) in a few "
        "minutes; `kit push` again settles it (a push Kaggle shows nothing of after 900 s is deemed lost), "
        "`kit push --force` pushes now anyway")
    assert ledger.read()["experiments"]["guard-unknown"]["pending"] and emulator.stats()["versions"] == 0

    notes: list[str] = []
    assert unchanged(client, ledger, kernel, sleep=lambda s: None, on_note=notes.append, force=True) is None
    assert notes == ["guard-unknown: --force: the earlier push Kaggle shows nothing of is dropped; pushing again"]
    assert ledger.read()["experiments"]["guard-unknown"]["pending"] is None
    outcome = push_one(client, ledger, kernel, SHAPE, force=True)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    skipped = push_one(client, ledger, kernel, SHAPE)
    assert skipped == PushOutcome("guard-unknown", "kit-user/guard-unknown", 1, "skipped",
                                  "unchanged since v1 (QUEUED); --force pushes it again")


def test_an_earlier_push_kaggle_cannot_be_asked_about_stops_the_next_one(world, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """Asking Kaggle whether an earlier push landed fails (5xx on every try): nothing is pushed, the record stays,
    and the line says so; rejected credentials are not dressed up as that: they stop with their own fix."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    kernel = quick_rendered(tmp_path / "build", "guard-unasked-before")
    _pending_push(ledger, kernel)
    emulator.answers.push(GET_KERNEL, ["500"] * 6)
    with pytest.raises(PushUncertain) as info:
        push_one(client, ledger, kernel, SHAPE, sleep=lambda s: None)
    line = str(info.value)
    assert line.startswith("push kit-user/guard-unasked-before: an earlier push's reply was lost and asking Kaggle "
                           "whether it landed failed (") and "\n" not in line
    assert line.endswith("); nothing was pushed: run `kit push` again later")
    assert ledger.read()["experiments"]["guard-unasked-before"]["pending"] and emulator.stats()["versions"] == 0

    emulator.answers.clear()
    emulator.behaviours.realism = dataclasses.replace(emulator.realism, key_revoked=True)
    with pytest.raises(CredentialsRejected):
        push_one(client, ledger, kernel, SHAPE, sleep=lambda s: None)
    assert ledger.read()["experiments"]["guard-unasked-before"]["pending"]


def test_a_push_refused_for_the_session_cap_waits_for_a_slot_as_long_as_the_environment_says(
        world, tmp_path: Path, monkeypatch) -> None:
    """Kaggle refuses a push because the account's sessions are all busy (one started elsewhere): the queue says
    so once and waits for a free slot, up to $KIT_SLOT_WAIT_S (default 6 h), then pushes; with no time to wait
    it stops with Kaggle's refusal and how long it waited."""
    make, ledger = world
    emulator = make(max_sessions=1, external_sessions=1, external_session_s=1.0)
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-cap")
    fast = PollPolicy(first_s=0.1, max_s=0.2)
    notes: list[str] = []

    def on_event(kind: str, payload: object) -> None:
        if kind == "note":
            notes.append(str(payload))

    monkeypatch.setenv("KIT_SLOT_WAIT_S", "0")
    with pytest.raises(KitError) as info:
        push_queue(client, ledger, [kernel], lambda k: SHAPE, poll=fast, on_event=on_event)
    line = str(info.value)
    assert line.startswith("push kit-user/guard-cap: Kaggle refused it: ") and "session" in line
    assert line.endswith(" (waited 0 s for a free slot; $KIT_SLOT_WAIT_S sets how long)")
    assert emulator.stats()["versions"] == 0 and ledger.read()["experiments"]["guard-cap"]["pending"] is None

    monkeypatch.delenv("KIT_SLOT_WAIT_S")
    (outcome,) = push_queue(client, ledger, [kernel], lambda k: SHAPE, poll=fast, on_event=on_event)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    assert notes == ["guard-cap: Kaggle's accelerator session cap is reached (sessions kit did not start count too; "
                     "kit's busy: none); waiting up to 21600 s for a free slot"]


def test_a_sweep_pushes_each_kernel_on_its_machine_forced_if_asked_with_every_wait_and_note_passed_on(
        world, tmp_path: Path, monkeypatch) -> None:
    """What a sweep asks of each push reaches it: the kernel's own machine (recorded with the version), --force
    (an unchanged kernel is pushed again, not skipped), the caller's sleep (a 429's Retry-After is waited through
    it) and the caller's notes (what kit waits for after a lost reply)."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = _client()
    cpu = quick_rendered(tmp_path / "build", "guard-sweep-cpu", shape=None)
    tpu = quick_rendered(tmp_path / "build", "guard-sweep-tpu", seed=1)
    assert push_one(client, ledger, cpu, "none").action == "pushed"
    emulator.answers.push(SAVE, ["429:7", "lost"])
    waits: list[float] = []
    notes: list[str] = []

    def on_event(kind: str, payload: object) -> None:
        if kind == "note":
            notes.append(str(payload))

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(min(seconds, 0.05))

    outcomes = push_queue(client, ledger, [cpu, tpu], lambda k: "none" if k is cpu else SHAPE, force=True,
                          poll=PollPolicy(first_s=0.1, max_s=0.2), on_event=on_event, sleep=sleep)
    assert [(o.action, o.version) for o in outcomes] == [("reconciled", 2), ("pushed", 1)]
    assert waits[0] == 7.0  # Retry-After, through the caller's sleep
    assert any(n.startswith("kit-user/guard-sweep-cpu: waiting up to 30 s for Kaggle to show") for n in notes), notes
    experiments = ledger.read()["experiments"]
    assert [v["accelerator"] for v in experiments["guard-sweep-cpu"]["versions"]] == ["none", "none"]
    assert [v["accelerator"] for v in experiments["guard-sweep-tpu"]["versions"]] == [SHAPE]
    assert emulator.stats()["versions"] == 3


def test_a_push_kaggle_refuses_or_never_takes_ends_in_one_line_with_nothing_left_pending(
        world, tmp_path: Path, monkeypatch) -> None:
    """A push Kaggle refuses (4xx: not retried; 401: the credentials' own fix), keeps rate-limiting past the
    budget, or keeps failing while it shows the kernel without the push (retried, each retry announced, then
    given up) ends in one line saying nothing was pushed, and no pending record is left to block the next push."""
    make, ledger = world
    emulator = make(lag_s=0.0)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    retries: list[tuple] = []
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30), on_retry=lambda *event: retries.append(event))
    kernel = quick_rendered(tmp_path / "build", "guard-refusals")
    name = "guard-refusals"

    def fails(answers: list[str], error: type[Exception], waits: list[float] | None = None) -> str:
        emulator.answers.push(SAVE, answers)
        with pytest.raises(error) as info:
            push_one(client, ledger, kernel, SHAPE, force=True,
                     sleep=(waits.append if waits is not None else lambda s: None))
        assert ledger.read()["experiments"][name]["pending"] is None
        line = str(info.value)
        assert "\n" not in line and line.startswith("push kit-user/guard-refusals: "), line
        return line

    line = fails(["400"], KaggleCallError)
    assert "HTTP 400" in line and "; nothing was pushed; Kaggle refused the request: fix what it names" in line
    assert "rejected the credentials (HTTP 401" in fails(["401"], CredentialsRejected)
    line = fails(["429:1000"], KaggleUnreachable)
    assert line.endswith("Kaggle kept rate-limiting (HTTP 429) for 0 s; nothing was pushed; try again later")
    assert emulator.stats()["versions"] == 0

    assert push_one(client, ledger, kernel, SHAPE).version == 1  # Kaggle now shows the kernel (at v1)
    waits: list[float] = []
    line = fails(["500"] * 3, KaggleUnreachable, waits)
    assert line.startswith("push kit-user/guard-refusals: still failing after 3 attempts (HTTP 500")
    assert line.endswith("); nothing was pushed; try again later")
    assert len(waits) == 2 and all(0 < w <= 0.02 for w in waits), waits
    what = "push kit-user/guard-refusals"
    assert retries[-2:] == [(what, 1, "http-500", waits[0]), (what, 2, "http-500", waits[1])]  # each announced
    emulator.answers.push(SAVE, ["500", "500"])
    outcome = push_one(client, ledger, kernel, SHAPE, force=True, sleep=lambda s: None)
    assert (outcome.action, outcome.version) == ("pushed", 2)  # the third try goes through: one new version
    assert emulator.stats()["versions"] == 2 and ledger.read()["experiments"][name]["pending"] is None


def test_waiting_for_a_slot_follows_kits_busy_runs_only_and_passes_their_notes_on(world, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """Kaggle refuses a push for its session cap while kit's own runs hold the sessions: the note names them,
    and while waiting kit refreshes those runs (so it sees them end), passing on what refreshing says, and asks
    nothing about runs that hold no accelerator."""
    make, ledger = world
    make(max_sessions=1, external_sessions=0, lag_s=0.0, new_script_s=0.0)
    monkeypatch.setenv("KIT_SLOT_WAIT_S", "30")
    client = _client()
    assert push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-holder", sleep_s=1.0), SHAPE).version == 1
    with ledger.transaction() as data:  # runs Kaggle does not show yet (just pushed): one on a TPU, one on CPU
        for name, machine in (("guard-ghost", SHAPE), ("guard-cpu", "none")):
            data["experiments"][name] = {"kernel": f"kit-user/{name}", "pending": None, "versions": [
                {"version": 1, "status": "QUEUED", "pushed_at": now_iso(), "accelerator": machine}]}
    notes: list[str] = []
    (outcome,) = push_queue(client, ledger, [quick_rendered(tmp_path / "build", "guard-waiter", seed=1)],
                            lambda k: SHAPE, concurrency=3, poll=PollPolicy(first_s=0.1, max_s=0.2),
                            on_event=lambda kind, payload: notes.append(str(payload)) if kind == "note" else None)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    assert notes[0] == ("guard-waiter: Kaggle's accelerator session cap is reached (sessions kit did not start count "
                        "too; kit's busy: guard-ghost, guard-holder); waiting up to 30 s for a free slot")
    assert any(n.startswith("guard-ghost: Kaggle does not show kit-user/guard-ghost/1 yet") for n in notes), notes
    assert not any(n.startswith("guard-cpu") for n in notes), notes
    assert _latest_status(ledger, "guard-holder") == "COMPLETE"


def _latest_status(ledger: Ledger, name: str) -> str:
    return ledger.read()["experiments"][name]["versions"][-1]["status"]


def test_a_sweep_needs_a_concurrency_of_at_least_one_and_defaults_its_machines_and_polls(world, tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """--concurrency below 1 is one line before anything is sent; without one, the sweep asks each kernel's
    machine for Kaggle's cap; without a poll schedule it takes $KIT_POLL_S / $KIT_POLL_MAX_S."""
    make, ledger = world
    emulator = make()
    client = _client()
    kernels = [quick_rendered(tmp_path / "build", f"guard-conc-{i}", seed=i) for i in range(2)]
    for bad in (0, -2):
        with pytest.raises(KitError) as info:
            push_queue(client, ledger, kernels, lambda k: SHAPE, concurrency=bad)
        assert str(info.value) == f"--concurrency {bad}: expected an integer >= 1"
    assert emulator.stats()["versions"] == 0
    monkeypatch.setenv("KIT_POLL_S", "0.1")
    monkeypatch.setenv("KIT_POLL_MAX_S", "0.2")
    asked: list[str] = []

    def machine(kernel) -> str:
        asked.append(kernel.experiment.name)
        return "none"

    outcomes = push_queue(client, ledger, kernels, machine, poll=None)
    assert [(o.action, o.version) for o in outcomes] == [("pushed", 1), ("pushed", 1)]
    assert asked[:2] == ["guard-conc-0", "guard-conc-1"] and set(asked) == {"guard-conc-0", "guard-conc-1"}


def test_an_unchanged_kernel_in_a_full_sweep_is_skipped_at_once_without_waiting_for_a_slot(world, tmp_path: Path) -> None:
    """A sweep whose sessions are all busy still reports an unchanged kernel as skipped straight away (no wait
    for a slot it does not need, nothing sent)."""
    make, ledger = world
    emulator = make()
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-same")
    assert push_one(client, ledger, kernel, SHAPE).version == 1
    with ledger.transaction() as data:
        data["experiments"]["guard-same"]["versions"][0]["status"] = "COMPLETE"
        data["experiments"]["guard-busy"] = {"kernel": "kit-user/guard-busy", "pending": None, "versions": [
            {"version": 1, "status": "RUNNING", "pushed_at": now_iso(), "accelerator": SHAPE}]}
    events: list[tuple[str, object]] = []
    (outcome,) = push_queue(client, ledger, [kernel], lambda k: SHAPE, concurrency=1, sleep=pytest.fail,
                            poll=PollPolicy(first_s=0.1, max_s=0.2), on_event=lambda *event: events.append(event))
    assert (outcome.action, outcome.version) == ("skipped", 1)
    assert events == [("pushed", outcome)]
    assert emulator.stats()["versions"] == 1


def test_a_push_that_needs_no_new_slot_does_not_wait_for_one(world, tmp_path: Path) -> None:
    """With every session busy, a kernel on no accelerator is pushed at once, and so is a kernel whose own
    earlier run holds the busy slot (pushing it again does not wait for itself); each push is reported, and the
    queue sleeps only while a kernel really waits ('waiting' with the busy runs, and what refreshing them
    says)."""
    make, ledger = world
    emulator = make()
    client = _client()
    own = quick_rendered(tmp_path / "build", "guard-own-slot")
    assert push_one(client, ledger, own, SHAPE).version == 1
    with ledger.transaction() as data:
        data["experiments"]["guard-own-slot"]["versions"][0]["status"] = "RUNNING"
    cpu = quick_rendered(tmp_path / "build", "guard-on-cpu", shape=None)
    events: list[tuple[str, object]] = []
    outcomes = push_queue(client, ledger, [cpu, own], lambda k: "none" if k is cpu else SHAPE, concurrency=1,
                          force=True, sleep=pytest.fail, poll=PollPolicy(first_s=0.1, max_s=0.2),
                          on_event=lambda *event: events.append(event))
    assert [(o.experiment, o.action, o.version) for o in outcomes] == [("guard-on-cpu", "pushed", 1),
                                                                       ("guard-own-slot", "pushed", 2)]
    assert events == [("pushed", outcomes[0]), ("pushed", outcomes[1])]
    assert emulator.stats()["versions"] == 3

    waiter = quick_rendered(tmp_path / "build", "guard-waits", seed=1)
    with ledger.transaction() as data:  # the busy run: one Kaggle does not show yet (just pushed)
        data["experiments"]["guard-own-slot"]["versions"][-1]["status"] = "COMPLETE"
        data["experiments"]["guard-ghost"] = {"kernel": "kit-user/guard-ghost", "pending": None, "versions": [
            {"version": 1, "status": "QUEUED", "pushed_at": now_iso(), "accelerator": SHAPE}]}
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the busy run ends during the queue's second wait
        slept.append(seconds)
        if len(slept) == 2:
            with ledger.transaction() as data:
                data["experiments"]["guard-ghost"]["versions"][-1]["status"] = "COMPLETE"

    events.clear()
    (outcome,) = push_queue(client, ledger, [waiter], lambda k: SHAPE, concurrency=1, sleep=sleep,
                            poll=PollPolicy(first_s=0.1, max_s=0.2), on_event=lambda *event: events.append(event))
    assert outcome.action == "pushed" and slept == pytest.approx([0.1, 0.15])
    assert [kind for kind, _ in events] == ["waiting", "note", "waiting", "pushed"]
    assert events[0] == ("waiting", ["guard-ghost"]) and events[-1] == ("pushed", outcome)
    assert str(events[1][1]).startswith("guard-ghost: Kaggle does not show kit-user/guard-ghost/1 yet")


def test_a_pushed_version_is_recorded_where_kaggle_filed_it_with_what_the_client_said(world, tmp_path: Path) -> None:
    """Kaggle's reply URL names where it filed the kernel (here its slug rule differs from the client's): kit
    records the version there, with what was pushed, and says so; each line the kaggle client printed (a
    retired accelerator) is passed on as a note. Without a listener the push goes through all the same."""
    make, ledger = world
    emulator = make(title_slug="dashes")
    client = _client()
    kernel = _with_meta(quick_rendered(tmp_path / "build", "guard-1000-runs", shape="NvidiaTeslaP100"),
                        title="guard 1,000 runs")
    notes: list[str] = []
    outcome = push_one(client, ledger, kernel, "NvidiaTeslaP100", on_note=notes.append)
    filed = ("Kaggle filed it as kit-user/guard-1-000-runs, not kit-user/guard-1000-runs (its reply's URL says so); "
             "kit follows kit-user/guard-1-000-runs")
    assert outcome == PushOutcome("guard-1000-runs", "kit-user/guard-1-000-runs", 1, "pushed", filed)
    assert notes == ["guard-1000-runs: the kaggle client says: ⚠ Warning: 'NvidiaTeslaP100' is retired.",
                     "guard-1000-runs: the kaggle client says: Sessions run on the default GPU (NvidiaTeslaT4) "
                     "instead.", f"guard-1000-runs: {filed}"]
    entry = ledger.read()["experiments"]["guard-1000-runs"]
    assert entry["kernel"] == "kit-user/guard-1-000-runs" and entry["pending"] is None
    (version,) = entry["versions"]
    assert (version["version"], version["content_hash"], version["accelerator"]) == (
        1, kernel.content_hash, "NvidiaTeslaP100")
    assert version["body_sha256"] == source_fingerprint(kernel.code_file.read_text())
    assert ledger.read()["counters"] == {"pushes": 1}

    plain = quick_rendered(tmp_path / "build", "guard-plain", shape="NvidiaTeslaP100")
    outcome = push_one(client, ledger, plain, "NvidiaTeslaP100")
    assert (outcome.kernel, outcome.version, outcome.action) == ("kit-user/guard-plain", 1, "pushed")
    assert outcome.note.endswith("/code/kit-user/guard-plain") and emulator.stats()["versions"] == 2


def test_the_pending_record_holds_what_a_lost_reply_is_settled_by(world, tmp_path: Path) -> None:
    """While a push is in flight the ledger holds what settling it needs: the content hash, the fingerprint of
    the text sent, the machine, the start time, and the newest version known before it (Kaggle's or the
    ledger's, whichever is newer: Kaggle may lag behind)."""
    make, ledger = world
    emulator = make(lag_s=0.0)
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-inflight")
    other = quick_rendered(tmp_path / "other", "guard-inflight", seed=5)
    for _ in range(3):  # three versions on Kaggle, pushed from elsewhere
        client.push(other.directory)
    seen: list[dict] = []

    def sleep(seconds: float) -> None:  # the 429's wait: the push is in flight
        seen.append(dict(ledger.read()["experiments"]["guard-inflight"]["pending"]))

    for ledger_latest, since in ((1, 3), (7, 7)):
        with ledger.transaction() as data:
            data["experiments"]["guard-inflight"] = {"kernel": kernel.kernel_id, "pending": None, "versions": [
                {"version": ledger_latest, "status": "COMPLETE", "content_hash": "older"}]}
        emulator.answers.push(SAVE, ["429:1"])
        started = now_iso()
        assert push_one(client, ledger, kernel, SHAPE, sleep=sleep).action == "pushed"
        pending = seen.pop()
        assert started <= pending.pop("started_at") <= now_iso()
        assert pending == {"content_hash": kernel.content_hash, "since_version": since, "accelerator": SHAPE,
                           "body_sha256": source_fingerprint(kernel.code_file.read_text())}


def test_a_sweep_settles_an_earlier_lost_push_first_with_its_own_waits_and_notes(world, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """A kernel of the sweep whose earlier push lost its reply (the push landed; Kaggle lags in showing it) is
    settled before anything else: the sweep's sleep and notes serve the wait, the landed version is adopted and
    the kernel, unchanged since, is skipped: no second push."""
    make, ledger = world
    emulator = make(lag_s=0.5)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "guard-settle")
    assert client.push(kernel.directory).version == 1  # what the lost reply had sent
    _pending_push(ledger, kernel, source_fingerprint(kernel.code_file.read_text()))
    slept: list[float] = []
    events: list[tuple[str, object]] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(min(seconds, 0.1))

    (outcome,) = push_queue(client, ledger, [kernel], lambda k: SHAPE, sleep=sleep,
                            poll=PollPolicy(first_s=0.1, max_s=0.2), on_event=lambda *event: events.append(event))
    assert (outcome.action, outcome.version) == ("skipped", 1)
    assert slept and events[0][0] == "note" and str(events[0][1]).startswith(
        "kit-user/guard-settle: waiting up to 30 s for Kaggle to show whether the push landed")
    assert events[-1] == ("pushed", outcome)
    assert emulator.stats()["versions"] == 1 and ledger.read()["counters"]["reconciled_pushes"] == 1


def test_a_sweep_stops_at_an_earlier_push_still_unknown_and_keeps_it(world, tmp_path: Path, monkeypatch) -> None:
    """Without --force a sweep never drops an earlier push whose reply was lost while Kaggle still shows nothing
    of it: it stops with the one line and the record stays for a later `kit push` to settle."""
    emulator, ledger, client, kernel = _unknown_earlier_push(world, tmp_path, monkeypatch, "guard-sweep-unknown")
    with pytest.raises(PushUncertain):
        push_queue(client, ledger, [kernel], lambda k: SHAPE, poll=PollPolicy(first_s=0.1, max_s=0.2),
                   sleep=lambda s: None)
    assert ledger.read()["experiments"]["guard-sweep-unknown"]["pending"] and emulator.stats()["versions"] == 0


def test_the_experiments_session_timeout_goes_with_the_push(world, tmp_path: Path) -> None:
    """kaggle.timeout_s of the experiment is sent with the push (Kaggle stops the session after it); 0 leaves
    Kaggle's default."""
    make, ledger = world
    emulator = make()
    client = _client()
    for name, timeout_s in (("guard-timeout", 1234), ("guard-default-timeout", 0)):
        kernel = quick_rendered(tmp_path / "build", name)
        kernel = dataclasses.replace(kernel, experiment=from_dict({"name": name, "kaggle": {"timeout_s": timeout_s}}))
        assert push_one(client, ledger, kernel, SHAPE).version == 1
    sent = {ref: kernel["versions"][0]["timeout_s"] for ref, kernel in emulator.state["kernels"].items()}
    assert sent["kit-user/guard-timeout"] == 1234
    assert sent["kit-user/guard-default-timeout"] == emulator.settings.session_timeout_s != 1234


def test_a_kernel_of_another_owner_is_refused_before_anything_is_sent(world, tmp_path: Path) -> None:
    """Kaggle lets the credentials push only their own kernels: another owner's id is one line naming both and
    the file to fix, and nothing is sent or recorded."""
    make, ledger = world
    emulator = make()
    theirs = quick_rendered(tmp_path / "build", "guard-theirs", owner="someone-else")
    with pytest.raises(KitError) as info:
        push_one(_client(), ledger, theirs, SHAPE)
    assert str(info.value) == (
        "push someone-else/guard-theirs: the kernel belongs to 'someone-else' but the Kaggle credentials are "
        "'kit-user''s; Kaggle only lets you push your own kernels (fix the id in "
        f"{theirs.directory / 'kernel-metadata.json'})")
    assert emulator.stats()["versions"] == 0 and ledger.read()["experiments"] == {}


class _KaggleGoesDownOnceThePushIsPending(Ledger):
    """The real ledger, and the moment the connection to Kaggle is lost: right after kit records a pending push
    (before it sends it), the emulator stops, so the push itself meets a refused connection."""

    def __init__(self, path: Path, emulator) -> None:
        super().__init__(path)
        self.emulator = emulator

    @contextlib.contextmanager
    def transaction(self):
        with super().transaction() as data:
            yield data
        if any((e or {}).get("pending") for e in data["experiments"].values()) and self.emulator is not None:
            self.emulator.stop()
            self.emulator = None


def test_a_push_that_never_left_is_retried_without_asking_kaggle_and_given_up_cleanly(world, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Kaggle becomes unreachable just before the push is sent (refused connection): the push cannot have
    reached it, so kit retries without waiting for Kaggle to show it, then gives up with one line saying
    nothing was pushed, and leaves no pending record behind."""
    make, ledger = world
    emulator = make()
    monkeypatch.setenv("KIT_CONSISTENCY_S", "30")
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    down = _KaggleGoesDownOnceThePushIsPending(ledger.path, emulator)
    notes: list[str] = []
    waits: list[float] = []
    with pytest.raises(KaggleUnreachable) as info:
        push_one(client, down, quick_rendered(tmp_path / "build", "guard-never-left"), SHAPE, sleep=waits.append,
                 on_note=notes.append)
    line = str(info.value)
    assert line.startswith("push kit-user/guard-never-left: still failing after 3 attempts (") and "\n" not in line
    assert line.endswith("); nothing was pushed; try again later")
    assert len(waits) == 2 and notes == []  # retried at once; never 'waiting for Kaggle to show whether it landed'
    assert ledger.read()["experiments"]["guard-never-left"]["pending"] is None


def test_a_reply_without_a_version_number_is_settled_by_asking_kaggle(world, tmp_path: Path, monkeypatch) -> None:
    """Kaggle takes a push but its reply names no version: kit asks Kaggle which version holds the push and
    records that one (said so); when Kaggle shows nothing of it within the window, kit stops with the one line,
    keeps the pending record and pushes nothing again."""
    make, ledger = world
    emulator = make(lag_s=0.0)
    monkeypatch.setenv("KIT_CONSISTENCY_S", "0")
    client = _client()
    emulator.answers.push(SAVE, ["unnumbered"])
    outcome = push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-unnumbered"), SHAPE)
    assert outcome == PushOutcome("guard-unnumbered", "kit-user/guard-unnumbered", 1, "reconciled",
                                  "reply without a version number")
    entry = ledger.read()["experiments"]["guard-unnumbered"]
    assert [v["version"] for v in entry["versions"]] == [1] and entry["pending"] is None
    assert ledger.read()["counters"]["reconciled_pushes"] == 1

    emulator.behaviours.realism = dataclasses.replace(emulator.realism, lag_s=60.0)  # a new kernel stays hidden
    emulator.answers.push(SAVE, ["unnumbered"])
    with pytest.raises(PushUncertain) as info:
        push_one(client, ledger, quick_rendered(tmp_path / "build", "guard-unnumbered-hidden"), SHAPE)
    assert str(info.value).startswith("push kit-user/guard-unnumbered-hidden: Kaggle's reply had no version number, "
                                      "and Kaggle showed nothing of kit-user/guard-unnumbered-hidden for 0 s")
    assert ledger.read()["experiments"]["guard-unnumbered-hidden"]["pending"]
    assert emulator.stats()["versions"] == 2
