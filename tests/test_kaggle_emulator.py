"""The Kaggle layer against the emulator, through the real `kaggle` client, with quick hand-written kernels.

Each test starts an emulator on 127.0.0.1 in this process and points the real client at it with
KAGGLE_API_ENVIRONMENT=LOCALHOST + HTTP_PROXY, with a fake key in a 0600 kaggle.json. The kernels
are plain Python scripts writing contract-valid outputs (the TensorFlow kernels run in
test_kaggle_loop.py), so these tests stay fast.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
from helpers.kaggle_support import (
    COMPETITION,
    FAKE_KEY,
    ctrl_c_works,
    env_without_kaggle,
    quick_kernel_dir,
    quick_rendered,
    solution_targets,
    start_emulator,
    tree_text,
    write_competition,
    write_credentials,
)
from sklearn.metrics import roc_auc_score

from kernels.contracts import ContractError, read_manifest, verify_files
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.emulator.faults import FaultConfig, fault_figures
from kit.kaggle.ledger import Ledger
from kit.kaggle.pull import pull_all, pull_version
from kit.kaggle.push import push_one, push_queue, reconcile_pending
from kit.kaggle.reconcile import source_fingerprint
from kit.kaggle.retry import RetryPolicy
from kit.kaggle.status import PollPolicy, refresh, status_rows, wait_until_done
from kit.kaggle.submit import refresh_submissions, send, wait_for_score

FAST_POLL = PollPolicy(first_s=0.1, max_s=0.3)
SHAPE = "TpuV5E8"


def _client(attempts: int = 8):
    return connect(policy=RetryPolicy(attempts=attempts, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                      rate_max_s=30))


def _wait_terminal(client, ledger, names=None):
    return wait_until_done(client, ledger, names, poll=FAST_POLL, timeout_s=60)


def test_wire_format_push_status_pull(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    # The emulator answers Kaggle's 401 body when no Authorization header is sent.
    reply = requests.post(f"{emulator.url}/api/v1/kernels.KernelsApiService/GetKernelSessionStatus",
                          json={"userName": "kit-user", "kernelSlug": "nothing"}, timeout=5)
    assert reply.status_code == 401 and reply.json() == {"code": 401, "message": "Unauthenticated"}

    client = _client()
    assert client.username == "kit-user"
    kernel = quick_rendered(tmp_path / "build", "quick-one", datasets=["someone/extra-data"])
    (tmp_path / "datasets" / "extra-data").mkdir()
    outcome = push_one(client, ledger, kernel, SHAPE)
    assert (outcome.action, outcome.version) == ("pushed", 1)
    rows = _wait_terminal(client, ledger)
    assert [r["status"] for r in rows] == ["COMPLETE"]

    info = client.kernel_info("kit-user", "quick-one")
    assert info.current_version == 1 and info.source == kernel.code_file.read_text()
    outputs = client.list_outputs("kit-user", "quick-one", 1)
    assert {f.name for f in outputs.files} >= {"manifest.json", "oof.csv", "test_pred.csv", "plots/padding.bin"}
    # The kernel saw the attached dataset and the competition (without its solution) as /kaggle/input.
    assert "['extra-data', 'siim-isic-melanoma-classification']" in outputs.log
    assert not (emulator.version_dir("kit-user/quick-one", 1) / "input" / COMPETITION / "solution.csv").exists()

    (outcome,) = pull_all(client, ledger, None, tmp_path / "runs")
    folder = tmp_path / "runs" / "quick-one" / "v1"
    assert (outcome.action, outcome.folder) == ("pulled", folder)
    verify_files(folder, read_manifest(folder / "manifest.json"))
    assert "quick kernel done" in (folder / "kernel.log").read_text()
    record = json.loads((folder / "run.json").read_text())
    assert record == {**record, "experiment": "quick-one", "version": 1, "source": "kaggle",
                      "kernel": "kit-user/quick-one", "content_hash": kernel.content_hash}
    assert ledger.read()["experiments"]["quick-one"]["versions"][0]["run_dir"] == str(folder)
    # Idempotent: a second pull changes nothing and downloads nothing.
    downloads = emulator.stats()["downloads"]
    (again,) = pull_all(client, ledger, None, tmp_path / "runs")
    assert again.action == "already" and emulator.stats()["downloads"] == downloads
    assert not list((tmp_path / "runs" / "quick-one").glob(".*"))  # no staging left behind
    # A local run (kit run) holding the same version folder is never overwritten.
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-two"), SHAPE)
    _wait_terminal(client, ledger)
    local = tmp_path / "runs" / "quick-two" / "v1"
    local.mkdir(parents=True)
    (local / "run.json").write_text(json.dumps({"source": "local", "version": 1}))
    outcomes = {o.experiment: o for o in pull_all(client, ledger, None, tmp_path / "runs")}
    assert outcomes["quick-two"].action == "failed"
    assert "runs/quick-two/v1: already holds another run (local)" in outcomes["quick-two"].note
    assert sorted(p.name for p in local.iterdir()) == ["run.json"]


def test_push_error_reply_unchanged_refusal_and_force(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    client = _client()
    bad = quick_rendered(tmp_path / "build", "quick-bad", shape="TpuV9000")
    with pytest.raises(KitError, match=r"Kaggle refused it: Invalid machine shape 'TpuV9000'"):
        push_one(client, ledger, bad, "TpuV9000")
    assert ledger.read()["experiments"]["quick-bad"] == {"kernel": "kit-user/quick-bad", "versions": [],
                                                          "pending": None}
    kernel = quick_rendered(tmp_path / "build", "quick-same")
    assert push_one(client, ledger, kernel, SHAPE).action == "pushed"
    again = push_one(client, ledger, kernel, SHAPE)
    assert again.action == "skipped" and "unchanged since v1" in again.note
    forced = push_one(client, ledger, kernel, SHAPE, force=True)
    assert (forced.action, forced.version) == ("pushed", 2)
    assert emulator.stats()["versions"] == 2


def test_lost_push_reply_is_reconciled_not_duplicated(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(FaultConfig(rate_lost_reply=1.0, max_streak=1))
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-lost")
    outcome = push_one(client, ledger, kernel, SHAPE)
    assert (outcome.action, outcome.version) == ("reconciled", 1)
    assert "HTTP 500" in outcome.note
    stats = emulator.stats()
    assert stats["versions"] == 1 and stats["faults"]["lost_reply"] >= 1
    assert ledger.read()["counters"]["reconciled_pushes"] == 1


def test_push_interrupted_after_sending_is_reconciled_on_next_run(world, tmp_path: Path) -> None:
    """kit killed after the push reached Kaggle but before the ledger recorded it: the next push adopts it."""
    make, ledger = world
    emulator = make()
    client = _client()
    kernel = quick_rendered(tmp_path / "build", "quick-crash")
    reply = client.push(kernel.directory)  # what the killed process managed to send
    assert reply.version == 1
    with ledger.transaction() as data:  # what it had written before sending
        data["experiments"]["quick-crash"] = {"kernel": kernel.kernel_id, "versions": [], "pending": {
            "content_hash": kernel.content_hash, "body_sha256": source_fingerprint(kernel.code_file.read_text()),
            "since_version": 0, "accelerator": SHAPE, "started_at": "2024-01-01T00:00:00Z"}}
    outcome = push_one(client, ledger, kernel, SHAPE)
    assert (outcome.action, outcome.version) == ("skipped", 1)
    assert emulator.stats()["versions"] == 1
    # A pending push that never reached Kaggle is cleared instead (and then pushed for real).
    other = quick_rendered(tmp_path / "build", "quick-never", seed=3)
    with ledger.transaction() as data:
        data["experiments"]["quick-never"] = {"kernel": other.kernel_id, "versions": [], "pending": {
            "content_hash": other.content_hash, "body_sha256": "0" * 64, "since_version": 0,
            "accelerator": SHAPE, "started_at": "2024-01-01T00:00:00Z"}}
    assert reconcile_pending(client, ledger, "quick-never", sleep=lambda s: None) is None
    assert push_one(client, ledger, other, SHAPE).action == "pushed"
    assert emulator.stats()["versions"] == 2


def test_pull_refuses_output_names_escaping_the_run_folder(world, tmp_path: Path) -> None:
    make, ledger = world
    make(FaultConfig(escape_names=True))
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-escape"), SHAPE)
    _wait_terminal(client, ledger)
    runs = tmp_path / "runs"
    with pytest.raises(KitError, match=r"^kit-user/quick-escape/1: output name '\.\./\.\./escaped-by-emulator\.txt' escapes the run folder"):
        pull_version(client, "kit-user/quick-escape", 1, "quick-escape", "h", runs)
    assert not runs.exists()  # refused before anything was written
    assert not list(tmp_path.rglob("escaped-by-emulator.txt"))
    (outcome,) = pull_all(client, ledger, None, runs)
    assert outcome.action == "failed" and "escapes the run folder" in outcome.note


def test_pull_survives_truncation_and_resumes_after_interruption(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(FaultConfig(rate_truncate=1.0, max_streak=1))
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-trunc", pad=3_000_000), SHAPE)
    _wait_terminal(client, ledger)
    runs = tmp_path / "runs"
    # An impatient client (one attempt) gives up on the first truncated file: one line, partial kept.
    with pytest.raises(KitError, match=r"download kit-user/quick-trunc/1/manifest\.json: .*truncated: connection broke after \d+ of \d+ bytes"):
        pull_version(_client(attempts=1), "kit-user/quick-trunc", 1, "quick-trunc", "h", runs)
    staging = runs / "quick-trunc" / ".v1.partial"
    part = staging / "manifest.json.part"
    assert part.exists() and not (runs / "quick-trunc" / "v1").exists()
    # A corrupted complete file in the staging folder is noticed (checksum) and fetched again.
    (staging / "oof.csv").write_text("image_name,target,pred,fold\nforged,1,0.5,0\n")
    outcome = pull_version(client, "kit-user/quick-trunc", 1, "quick-trunc", "h", runs)
    assert outcome.action == "pulled"
    final = runs / "quick-trunc" / "v1"
    verify_files(final, read_manifest(final / "manifest.json"))
    source = emulator.version_dir("kit-user/quick-trunc", 1) / "output"
    for path in source.rglob("*"):
        if path.is_file():
            assert (final / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert emulator.stats()["faults"]["truncate"] >= 3
    assert "206" in (tmp_path / "emulator" / "emulator.log").read_text()  # resumed with Range


def test_error_runs_show_failure_message_and_log_tail(world, tmp_path: Path) -> None:
    make, ledger = world
    make(FaultConfig(rate_kernel_error=0.5, seed=1))
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-boom", fail="out of memory (boom)"), SHAPE)
    rows = {r["experiment"]: r for r in _wait_terminal(client, ledger)}
    row = rows["quick-boom"]
    assert row["status"] == "ERROR"
    assert "Kernel exited with code 1" in row["failure"] or "injected" in row["failure"]
    assert any("boom" in line or "injected" in line for line in row["log_tail"])
    (outcome,) = pull_all(client, ledger, None, tmp_path / "runs")
    assert outcome.action == "failed" and "ended in ERROR on Kaggle" in outcome.note


def test_submit_validates_scores_and_refuses_resubmission(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make()
    comp = tmp_path / "competition"
    sample = comp / "sample_submission.csv"
    names = pd.read_csv(sample)["image_name"].tolist()
    truth = solution_targets(comp)
    good = tmp_path / "ensembles" / "demo" / "submission.csv"
    good.parent.mkdir(parents=True)
    preds = [0.9 if truth[n] else 0.1 for n in names]
    preds[0], preds[5] = 1 - preds[0], 1 - preds[5]  # not perfect
    pd.DataFrame({"image_name": names, "target": preds}).to_csv(good, index=False)
    client = _client()

    bad_cases = {
        "header": ("name,target\n" + "".join(f"{n},0.5\n" for n in names), r"header is 'name,target'"),
        "missing": ("image_name,target\n" + "".join(f"{n},0.5\n" for n in names[1:]), r"1 image name\(s\) missing"),
        "dupes": ("image_name,target\n" + "".join(f"{n},0.5\n" for n in names + names[:1]), "duplicate image_name"),
        "nan": ("image_name,target\n" + "".join(f"{n},{'nan' if i == 3 else 0.5}\n" for i, n in enumerate(names)),
                "row 5: target"),
        "inf": ("image_name,target\n" + "".join(f"{n},{'inf' if i == 0 else 0.5}\n" for i, n in enumerate(names)),
                "expected a finite number"),
    }
    for case, (text, message) in bad_cases.items():
        path = tmp_path / f"{case}.csv"
        path.write_text(text)
        with pytest.raises((KitError, ContractError), match=message):  # both are one-line CLI errors
            send(client, ledger, path, COMPETITION, sample)
    assert emulator.stats()["submissions"] == 0 and ledger.read()["submissions"] == []

    (good.parent / "blend.json").write_text(json.dumps({"name": "demo", "recipe_hash": "ab12" * 16}))
    with pytest.raises(KitError, match="made by recipe 'demo'"):
        send(client, ledger, good, COMPETITION, sample, recipe="other")
    record = send(client, ledger, good, COMPETITION, sample, recipe="demo")
    assert record["status"] == "PENDING" and record["message"].startswith("kit: demo recipe ab12ab12ab12 file ")
    record = wait_for_score(client, ledger, record, poll=FAST_POLL, timeout_s=30)
    solution = pd.read_csv(comp / "solution.csv")
    merged = solution.merge(pd.read_csv(good), on="image_name", suffixes=("", "_pred"))
    public = merged["Usage"] == "Public"
    expected_public = roc_auc_score(merged["target"][public], merged["target_pred"][public])
    expected_private = roc_auc_score(merged["target"][~public], merged["target_pred"][~public])
    assert record["status"] == "COMPLETE"
    assert float(record["public_score"]) == pytest.approx(expected_public, abs=1e-4)
    assert float(record["private_score"]) == pytest.approx(expected_private, abs=1e-4)
    assert ledger.read()["submissions"][0]["public_score"] == record["public_score"]
    with pytest.raises(KitError, match=r"already submitted as ref \d+ \(COMPLETE"):
        send(client, ledger, good, COMPETITION, sample)
    listed = refresh_submissions(client, ledger, COMPETITION)
    assert [s.ref for s in listed] == [record["ref"]]


def test_lost_submission_reply_is_adopted_not_resubmitted(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(FaultConfig(rate_lost_reply=1.0, max_streak=1, seed=4))
    comp = tmp_path / "competition"
    sub = tmp_path / "sub.csv"
    sub.write_text((comp / "sample_submission.csv").read_text())
    record = send(_client(), ledger, sub, COMPETITION, comp / "sample_submission.csv")
    stats = emulator.stats()
    assert stats["submissions"] == 1 and stats["duplicate_submissions"] == 0
    assert record["ref"] is not None


def test_sweep_queue_respects_concurrency_and_resumes_after_interrupt(world, tmp_path: Path) -> None:
    """Kaggle refuses a third accelerator session here (max_sessions=2); the queue never asks for one.
    Interrupted after two pushes, a second run pushes only the rest."""
    make, ledger = world
    emulator = make(max_sessions=2)
    client = _client()
    # Kernels that take a moment, so sessions overlap.
    kernels = [quick_rendered(tmp_path / "build", f"quick-sweep-{i}", seed=i, sleep_s=0.6) for i in range(5)]

    class Interrupt(Exception):
        pass

    seen: list[str] = []

    def stop_after_two(kind: str, payload: object) -> None:
        if kind == "pushed":
            seen.append(payload.action)  # type: ignore[attr-defined]
            if len(seen) == 2:
                raise Interrupt

    with pytest.raises(Interrupt):
        push_queue(client, ledger, kernels, lambda k: SHAPE, concurrency=2, poll=FAST_POLL, on_event=stop_after_two)
    assert sorted(ledger.read()["experiments"]) == ["quick-sweep-0", "quick-sweep-1"]
    waits: list[object] = []
    outcomes = push_queue(client, ledger, kernels, lambda k: SHAPE, concurrency=2, poll=FAST_POLL,
                          on_event=lambda kind, p: waits.append(p) if kind == "waiting" else None)
    assert [o.action for o in outcomes] == ["skipped", "skipped", "pushed", "pushed", "pushed"]
    assert waits, "the queue should have waited for a free slot"
    rows = _wait_terminal(client, ledger)
    assert [r["status"] for r in rows] == ["COMPLETE"] * 5
    stats = emulator.stats()
    assert stats["versions"] == 5 and stats["identical_versions"] == 0


def test_fault_run_quick_kernels(world, tmp_path: Path, record_property) -> None:
    """10 quick kernels under a 30 % fault rate: all pushed once, all pulled intact, all scored."""
    make, ledger = world
    emulator = make(FaultConfig.uniform(0.3, seed=7, slow_s=0.05), workers=2)
    client = _client()
    kernels = [quick_rendered(tmp_path / "build", f"quick-fault-{i}", seed=i) for i in range(10)]
    outcomes = push_queue(client, ledger, kernels, lambda k: SHAPE, concurrency=10, poll=FAST_POLL)
    assert all(o.action in ("pushed", "reconciled") for o in outcomes)
    _wait_terminal(client, ledger)
    pulled = pull_all(client, ledger, None, tmp_path / "runs")
    assert [o.action for o in pulled] == ["pulled"] * 10, [o.note for o in pulled]
    comp = tmp_path / "competition"
    for outcome in pulled:
        record = send(client, ledger, outcome.folder / "test_pred.csv", COMPETITION, comp / "sample_submission.csv")
        wait_for_score(client, ledger, record, poll=FAST_POLL, timeout_s=30)
    data = ledger.read()
    assert all(s["status"] == "COMPLETE" and s["public_score"] for s in data["submissions"])
    figures = fault_figures(emulator.stats())
    assert figures["faults_injected"] > 20
    assert figures["versions"] == 10 and figures["identical_versions"] == 0
    assert figures["submissions"] == 10 and figures["duplicate_submissions"] == 0
    record_property("fault_figures", figures)
    print("fault figures (quick kernels):", figures)
    # No secret anywhere kit or the emulator wrote.
    for path, data_bytes in tree_text(tmp_path / "runs", tmp_path / ".kit", tmp_path / "emulator", tmp_path / "build"):
        assert FAKE_KEY.encode() not in data_bytes, path


def test_status_rows_from_ledger_without_kaggle(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    with ledger.transaction() as data:
        data["experiments"]["a"] = {"kernel": "u/a-kernel", "pending": None, "versions": [
            {"version": 1, "status": "COMPLETE", "pushed_at": "2024-01-01T00:00:00Z", "accelerator": SHAPE},
            {"version": 2, "status": "ERROR", "failure": "oops", "log_tail": ["x"], "pushed_at": "", "accelerator": ""},
        ]}
    (row,) = status_rows(ledger.read())
    assert (row["version"], row["status"], row["failure"], row["log_tail"]) == (2, "ERROR", "oops", ["x"])
    with pytest.raises(KitError, match="no pushed experiment named 'b'"):
        status_rows(ledger.read(), ["b"])


def test_not_found_right_after_push_counts_as_queued(world, tmp_path: Path) -> None:
    make, ledger = world
    emulator = make(FaultConfig(rate_not_found=1.0, max_streak=2), lag_s=0.0)
    client = _client()
    push_one(client, ledger, quick_rendered(tmp_path / "build", "quick-young"), SHAPE)
    refresh(client, ledger)
    (row,) = status_rows(ledger.read())
    assert row["status"] == "QUEUED"  # Kaggle said 404 for the version just created: not an error yet
    assert emulator.stats()["faults"]["not_found"] >= 1
    assert [r["status"] for r in _wait_terminal(client, ledger)] == ["COMPLETE"]


SLOW_KERNEL_S = 120  # a kernel still running when the emulator is stopped


def test_kit_emulator_command_serves_the_kaggle_cli_and_keeps_state(tmp_path: Path) -> None:
    """`kit emulator` as a user starts it, driven by the `kaggle` command itself; Ctrl-C returns at once
    though a kernel is still running (it is killed and re-queued), and a restart keeps the state."""
    comp = write_competition(tmp_path / "data" / "synth-32")
    creds = write_credentials(tmp_path / "creds")
    state = tmp_path / "state"
    server = subprocess.Popen(
        [sys.executable, "-m", "kit.cli", "emulator", "--port", "0", "--datasets-root", str(tmp_path / "data"),
         "--state", str(state), "--score-delay", "0", "--lag-s", "0", "--stall-rate", "0", "--throttle-rate", "0",
         "--submission-lag-s", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**env_without_kaggle(), "COLUMNS": "200"},
        preexec_fn=ctrl_c_works,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", first).group(0)  # type: ignore[union-attr]
        env = {**env_without_kaggle(), "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": url,
               "KAGGLE_CONFIG_DIR": str(creds)}
        kaggle = [str(Path(sys.executable).with_name("kaggle"))]
        folder = quick_kernel_dir(tmp_path / "k", "quick-cli")

        def run(*args: str) -> str:
            proc = subprocess.run(kaggle + list(args), env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc.stdout

        assert "Kernel version 1 successfully pushed" in run("kernels", "push", "-p", str(folder))
        assert 'kit-user/quick-cli has status "KernelWorkerStatus.' in run("kernels", "status", "kit-user/quick-cli")
        out = run("competitions", "submit", "-c", COMPETITION, "-f", str(comp / "sample_submission.csv"),
                  "-m", "dry run")
        assert "Successfully submitted" in out
        assert "dry run" in run("competitions", "submissions", "-c", COMPETITION)
        slow = quick_kernel_dir(tmp_path / "k", "slow-cli", sleep_s=SLOW_KERNEL_S)
        assert "Kernel version 1 successfully pushed" in run("kernels", "push", "-p", str(slow))
        stats = requests.get(f"{url}/emulator/stats", timeout=5).json()
        assert stats["versions"] == 2 and stats["submissions"] == 1
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=SLOW_KERNEL_S / 4)
    assert server.returncode == 0 and "emulator stopped" in rest
    restarted = start_emulator(tmp_path, competition_dir=comp, state_dir=state)
    try:
        assert restarted.stats()["versions"] == 2
        (slow_version,) = restarted.state["kernels"]["kit-user/slow-cli"]["versions"]
        assert slow_version["status"] in ("QUEUED", "RUNNING")  # killed, not failed: it runs again
        assert restarted.get_kernel({"userName": "kit-user", "kernelSlug": "quick-cli"})["metadata"][
            "currentVersionNumber"] == 1
        (listed,) = restarted.list_submissions({"competitionName": COMPETITION})["submissions"]
        assert listed["description"] == "dry run" and listed["status"] == "COMPLETE"
    finally:
        restarted.stop()
