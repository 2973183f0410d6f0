"""Guards on submissions (a competitor's daily budget and honest scores): refreshing from Kaggle writes each
submission's own status and scores into the ledger, adopts one whose reply was lost (matched by its
message), marks one that never reached Kaggle as failed, and leaves other competitions alone; the sample
file a submission is checked against is found, or one line says why not. Real client, emulator."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.kaggle_support import COMPETITION

from kernels.contracts import file_digest
from kit.blend.recipe import load_recipe
from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.reconcile import PollPolicy
from kit.kaggle.retry import KaggleCallError, KaggleUnreachable, RetryPolicy
from kit.kaggle.submit import (
    NOT_VISIBLE,
    SAMPLE_NAME,
    find_sample,
    recipe_label,
    refresh_submissions,
    send,
    submission_message,
    validate_submission,
    wait_for_score,
)

OTHER_COMPETITION = "another-competition"
SCORED_WITHIN_S = 30.0


def _client():
    return connect(policy=RetryPolicy(attempts=8, base_s=0.01, cap_s=0.05, rate_base_s=0.05, rate_cap_s=0.3,
                                      rate_max_s=30))


def _submission(tmp_path: Path, name: str, shift: float) -> Path:
    sample = pd.read_csv(tmp_path / "competition" / SAMPLE_NAME)
    path = tmp_path / f"{name}.csv"
    pd.DataFrame({"image_name": sample["image_name"],
                  "target": [(i * 0.37 + shift) % 1.0 for i in range(len(sample))]}).to_csv(path, index=False)
    return path


def test_refresh_writes_each_submissions_own_scores_and_settles_lost_ones(world, tmp_path: Path) -> None:
    make, ledger = world
    make()
    client = _client()
    sample = tmp_path / "competition" / SAMPLE_NAME
    first = send(client, ledger, _submission(tmp_path, "first", 0.1), COMPETITION, sample)
    second = send(client, ledger, _submission(tmp_path, "second", 0.6), COMPETITION, sample)
    deadline = time.monotonic() + SCORED_WITHIN_S
    while True:
        server = {s.ref: s for s in client.submissions(COMPETITION)}
        if all(server.get(r["ref"]) and server[r["ref"]].status == "COMPLETE" for r in (first, second)):
            break
        assert time.monotonic() < deadline, "the emulator never scored the submissions"
        time.sleep(0.2)
    with ledger.transaction() as data:
        lost = next(r for r in data["submissions"] if r["ref"] == second["ref"])
        lost.update(ref=None, status="SENDING", error="stale")  # kit stopped before the reply (the ref) was recorded
        template = {**lost, "error": ""}
        mine = next(r for r in data["submissions"] if r["ref"] == first["ref"])
        mine.update(message="renamed on Kaggle", error="stale")  # known by its ref, whatever its message
        first["message"] = "renamed on Kaggle"
        # records kit does not settle come first: they must not stop the others from being settled
        data["submissions"][:0] = [{**template, "competition": OTHER_COMPETITION, "message": "other"},
                                   {**template, "message": "never reached Kaggle", "sha256": "0" * 64},
                                   {**template, "message": "still pending elsewhere", "status": "PENDING"}]

    listed = refresh_submissions(client, ledger, COMPETITION)
    assert sorted(s.ref for s in listed) == sorted([first["ref"], second["ref"]])
    records = ledger.read()["submissions"]
    by_message = {r["message"]: r for r in records}
    for mine in (first, second):
        record = by_message[mine["message"]]
        truth = server[mine["ref"]]
        assert record["ref"] == truth.ref and record["status"] == "COMPLETE" and record["error"] == truth.error
        assert (record["public_score"], record["private_score"]) == (truth.public_score, truth.private_score)
        assert record["public_score"] not in (None, "")
    assert by_message[first["message"]]["public_score"] != by_message[second["message"]]["public_score"]
    assert by_message["never reached Kaggle"]["status"] == "FAILED"
    assert by_message["never reached Kaggle"]["error"] == "not found on Kaggle"
    assert by_message["still pending elsewhere"]["status"] == "PENDING"  # only a send in flight is settled
    assert by_message["other"] == {**template, "competition": OTHER_COMPETITION, "message": "other"}


def test_the_sample_is_the_given_file_or_the_one_under_data(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(KitError) as info:
        find_sample(None, root)
    assert str(info.value) == f"{SAMPLE_NAME}: pass --sample PATH (found none under {root}/)"
    (root / "uda").mkdir(parents=True)
    one = root / "uda" / SAMPLE_NAME
    one.write_text("image_name,target\n")
    assert find_sample(None, root) == one
    (root / "synth").mkdir()
    two = root / "synth" / SAMPLE_NAME
    two.write_text("image_name,target\n")
    with pytest.raises(KitError) as info:
        find_sample(None, root)
    assert str(info.value) == f"{SAMPLE_NAME}: pass --sample PATH (found {two}, {one})"
    assert find_sample(str(one), root) == one  # --sample wins
    with pytest.raises(KitError) as info:
        find_sample(str(tmp_path / "nope.csv"), root)
    assert str(info.value) == f"--sample {tmp_path / 'nope.csv'}: file not found"
    with pytest.raises(KitError, match="found none under"):
        find_sample(None, tmp_path / "no-such-folder")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """A sample (two images) and a valid submission for it."""
    sample = tmp_path / "sample" / SAMPLE_NAME
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text("image_name,target\nISIC_1,0\nISIC_2,0\n")
    csv = tmp_path / "out" / "submission.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("image_name,target\nISIC_2,0.25\nISIC_1,0.75\n")
    return sample, csv


def test_a_submission_is_checked_against_the_sample_before_anything_is_sent(tmp_path: Path) -> None:
    """The file must exist, be UTF-8 text, and start with the sample's header (whatever its line ends);
    the sample itself must have the competition's header; a file that passes comes back as its frame."""
    sample, csv = _files(tmp_path)
    frame = validate_submission(csv, sample)
    assert list(frame.columns) == ["image_name", "target"] and sorted(frame["image_name"]) == ["ISIC_1", "ISIC_2"]
    csv.write_bytes(b"image_name,target\r\nISIC_2,0.25\r\nISIC_1,0.75\r\n")
    assert len(validate_submission(csv, sample)) == 2

    def refused(path: Path, sample_path: Path = sample) -> str:
        with pytest.raises(KitError) as info:
            validate_submission(path, sample_path)
        return str(info.value)

    assert refused(tmp_path / "none.csv") == f"{tmp_path / 'none.csv'}: file not found"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert refused(empty) == f"{empty}: header is '', expected 'image_name,target' (as in {sample})"
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("target,image_name\n0.5,ISIC_1\n0.5,ISIC_2\n")
    assert refused(swapped) == f"{swapped}: header is 'target,image_name', expected 'image_name,target' (as in {sample})"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image_name,target\nISIC_1,0.5\nISIC_\xe92,0.5\n".encode("latin-1"))
    assert refused(latin) == f"{latin}: not UTF-8 text (byte 34: invalid continuation byte); save it as UTF-8"
    odd_sample = tmp_path / "odd" / SAMPLE_NAME
    odd_sample.parent.mkdir()
    odd_sample.write_text("image,target\nISIC_1,0\n")
    odd = tmp_path / "odd.csv"
    odd.write_text("image,target\nISIC_1,0.5\n")
    assert refused(odd, odd_sample) == f"{odd_sample}: header is 'image,target', expected image_name,target"
    numbers = tmp_path / "numbers" / SAMPLE_NAME  # image names that look like numbers stay names
    numbers.parent.mkdir()
    numbers.write_text("image_name,target\n007,0\n8,0\n")
    digits = tmp_path / "digits.csv"
    digits.write_text("image_name,target\n007,0.1\n8,0.2\n")
    assert list(validate_submission(digits, numbers)["image_name"]) == ["007", "8"]


def test_a_submission_is_named_by_the_recipe_or_run_that_made_it(tmp_path: Path) -> None:
    """The blend.json `kit blend` wrote beside the CSV names it (a --recipe naming another recipe is refused;
    its name, its recipe field or a file of that name agree); else --recipe (a name or a file) names it; else a
    run's prediction file is named by its run, any other file by its name. The message carries the short
    hashes and the submission's own id."""
    _, csv = _files(tmp_path)
    assert recipe_label(None, csv) == ("submission.csv", None)
    run = tmp_path / "runs" / "effnet-b0" / "v3"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert recipe_label(None, run / "test_pred.csv") == ("run effnet-b0/v3", None)
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[method]\nname = "rank_mean"\n')
    loaded = load_recipe(str(recipe))
    assert recipe_label(str(recipe), csv) == ("mine", loaded.digest) and loaded.digest

    blend = csv.parent / "blend.json"
    blend.write_text(json.dumps({"name": "demo", "recipe_hash": "ab" * 32, "recipe": "ensembles/demo.toml"}))
    for agreeing in (None, "demo", "ensembles/demo.toml", "elsewhere/demo.toml"):
        assert recipe_label(agreeing, csv) == ("demo", "ab" * 32), agreeing
    for other in ("other", "None"):  # a recipe named None is another recipe too
        with pytest.raises(KitError) as info:
            recipe_label(other, csv)
        assert str(info.value) == f"{csv}: made by recipe 'demo' (see {blend}), not {other!r}"
    blend.write_text(json.dumps({"name": "demo", "recipe_hash": "ab" * 32}))  # no recipe recorded
    with pytest.raises(KitError, match="not 'None'"):
        recipe_label("None", csv)
    blend.write_text(json.dumps({"name": "demo", "recipe_hash": "ab" * 32, "recipe": "recipes/top.toml"}))
    assert recipe_label("recipes/top.toml", csv) == ("demo", "ab" * 32)  # the recipe kit blend recorded
    for broken in ("{not json", json.dumps({"name": "demo"}), json.dumps(["demo"])):
        blend.write_text(broken)
        with pytest.raises(KitError) as info:
            recipe_label(None, csv)
        assert str(info.value) == f"{blend}: expected kit blend's JSON with name and recipe_hash"

    file_sha, recipe_sha = "f" * 20 + "0" * 44, "a" * 10 + "b" * 54
    assert submission_message("demo", recipe_sha, file_sha, "first try", "1a2b3c4d") == (
        "kit: demo recipe aaaaaaaaaabb file ffffffffffff [1a2b3c4d] first try")
    assert submission_message("sub.csv", None, file_sha, "", "1a2b3c4d") == "kit: sub.csv file ffffffffffff [1a2b3c4d]"


CREATE = "competitions.CompetitionApiService/CreateSubmission"


def test_the_same_file_is_not_submitted_twice_to_one_competition_unless_forced(world, tmp_path: Path) -> None:
    """Daily submissions are scarce: a file (by sha256) already sent to this competition is refused with one
    line naming the last such submission; one that failed, or went to another competition, does not count;
    --force sends it again."""
    make, ledger = world
    emulator = make()
    client = _client()
    sample = tmp_path / "competition" / SAMPLE_NAME
    csv = _submission(tmp_path, "again", 0.3)
    earlier = {"id": "earlier", "ref": 7, "competition": COMPETITION, "file": str(csv),
               "sha256": file_digest(csv)["sha256"], "message": "kit: earlier", "recipe": "again.csv",
               "recipe_hash": None, "status": "FAILED", "public_score": "", "private_score": "", "error": "x",
               "submitted_at": "2024-01-01T00:00:00Z"}
    with ledger.transaction() as data:
        data["submissions"] += [earlier, {**earlier, "id": "other", "ref": 8, "competition": OTHER_COMPETITION,
                                          "status": "COMPLETE", "public_score": "0.9"}]
    first = send(client, ledger, csv, COMPETITION, sample)
    assert first["status"] == "PENDING" and first["ref"] is not None
    assert first["message"] == f"kit: again.csv file {earlier['sha256'][:12]} [{first['id']}]"  # no note: none

    def refused() -> str:
        with pytest.raises(KitError) as info:
            send(client, ledger, csv, COMPETITION, sample)
        return str(info.value)

    assert refused() == f"{csv}: already submitted as ref {first['ref']} (PENDING, public -); --force submits it again"
    second = send(client, ledger, csv, COMPETITION, sample, force=True)
    assert second["ref"] != first["ref"] and second["message"] != first["message"]
    with ledger.transaction() as data:
        next(r for r in data["submissions"] if r["id"] == second["id"]).update(status="COMPLETE", public_score="0.93")
    assert refused() == f"{csv}: already submitted as ref {second['ref']} (COMPLETE, public 0.93); --force submits it again"
    assert emulator.stats()["submissions"] == 2


def test_a_submission_kaggle_refuses_or_never_takes_is_recorded_as_failed_with_why(world, tmp_path: Path) -> None:
    """A refusal (4xx) is not retried; failures that may be passing (5xx) are retried, each time first asking
    Kaggle whether the submission arrived after all; when the tries run out nothing was submitted. Either way
    the ledger's record says FAILED and why, and the one line names the file."""
    make, ledger = world
    emulator = make()
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30))
    sample = tmp_path / "competition" / SAMPLE_NAME
    refused = _submission(tmp_path, "refused", 0.2)
    emulator.answers.push(CREATE, ["400"])
    with pytest.raises(KaggleCallError) as info:
        send(client, ledger, refused, COMPETITION, sample, sleep=lambda s: None)
    line = str(info.value)
    assert line.startswith(f"submit {refused}: HTTP 400"), line
    assert line.endswith("; nothing was submitted; Kaggle refused the request: fix what it names, then run the command "
                         "again"), line
    (record,) = ledger.read()["submissions"]
    assert record["status"] == "FAILED" and record["error"].startswith("HTTP 400"), record

    failing = _submission(tmp_path, "failing", 0.4)
    emulator.answers.push(CREATE, ["500"] * 3)
    waits: list[float] = []
    with pytest.raises(KaggleUnreachable) as info:
        send(client, ledger, failing, COMPETITION, sample, sleep=waits.append)
    line = str(info.value)
    assert line.startswith(f"submit {failing}: still failing after 3 attempts (HTTP 500")
    assert line.endswith("; nothing was submitted; try again later")
    assert len(waits) == 2  # between the three tries
    record = ledger.read()["submissions"][-1]
    assert record["status"] == "FAILED" and record["error"].startswith("HTTP 500") and record["ref"] is None
    assert emulator.stats()["submissions"] == 0

    for count, shift in ((1, 0.6), (2, 0.8)):  # each adoption counted
        emulator.answers.push(CREATE, ["lost"])
        adopted = send(client, ledger, _submission(tmp_path, f"lost-{count}", shift), COMPETITION, sample,
                       sleep=lambda s: None)
        assert adopted["status"] == "PENDING" and adopted["ref"] is not None
        assert ledger.read()["counters"]["reconciled_submissions"] == count
    assert emulator.stats()["submissions"] == 2


def test_waiting_for_a_score_is_bounded_by_the_grace_for_404s_and_the_callers_timeout(world, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Right after a submit Kaggle may answer 404 for it: that counts as 'not visible yet' for
    $KIT_SUBMISSION_GRACE_S, then one line says so; a submission Kaggle shows but has not scored within the
    caller's timeout ends in one line too, and the ledger keeps it pending for `kit submissions`."""
    make, ledger = world
    emulator = make(submission_lag_s=30.0, score_delay_s=30.0)
    client = _client()
    record = send(client, ledger, _submission(tmp_path, "slow", 0.5), COMPETITION,
                  tmp_path / "competition" / SAMPLE_NAME)
    fast = PollPolicy(first_s=0.05, max_s=0.05)
    monkeypatch.setenv("KIT_SUBMISSION_GRACE_S", "0.3")
    seen: list[str] = []
    with pytest.raises(KitError) as info:
        wait_for_score(client, ledger, record, poll=fast, on_poll=seen.append)
    assert str(info.value) == (f"submission {record['ref']}: Kaggle still answers 404 for it after 0 s "
                               "($KIT_SUBMISSION_GRACE_S); `kit submissions` shows whether it exists")
    assert seen and set(seen) == {NOT_VISIBLE}

    monkeypatch.setenv("KIT_SUBMISSION_GRACE_S", "120")
    emulator.behaviours.realism = dataclasses.replace(emulator.realism, submission_lag_s=0.0)  # shown at once
    record = send(client, ledger, _submission(tmp_path, "unscored", 0.7), COMPETITION,
                  tmp_path / "competition" / SAMPLE_NAME)
    seen.clear()
    with pytest.raises(KitError) as info:
        wait_for_score(client, ledger, record, poll=fast, timeout_s=0.3, on_poll=seen.append)
    assert str(info.value) == f"submission {record['ref']}: not scored after 0 s; `kit submissions` shows it later"
    assert seen and set(seen) == {"PENDING"}
    assert next(r for r in ledger.read()["submissions"] if r["id"] == record["id"])["status"] == "PENDING"


def test_a_sent_submission_is_recorded_whole_and_every_wait_is_announced(world, tmp_path: Path) -> None:
    """The ledger's record says what was sent (file, hash, message, recipe, competition, time) and that it awaits
    its score; a 429 is waited out as Retry-After asks (announced, then sent once), and past the budget the record
    says FAILED with Kaggle's answer; 5xx retries are announced with their count, reason and wait; a refusal kit
    words itself (not joined) is recorded with those words."""
    make, ledger = world
    emulator = make()
    events: list[tuple] = []
    client = connect(policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, rate_base_s=0.05, rate_cap_s=0.3,
                                        rate_max_s=30), on_retry=lambda *event: events.append(event))
    sample = tmp_path / "competition" / SAMPLE_NAME
    csv = _submission(tmp_path, "whole", 0.15)
    emulator.answers.push(CREATE, ["429:3", "500"])
    waits: list[float] = []
    in_flight: list[str] = []

    def sleep(seconds: float) -> None:  # while kit waits to send again, the ledger says the send is in flight
        waits.append(seconds)
        in_flight.append(ledger.read()["submissions"][-1]["status"])

    record = send(client, ledger, csv, COMPETITION, sample, note="guard", sleep=sleep)
    assert in_flight == ["SENDING", "SENDING"]
    assert waits[0] == 3.0 and len(waits) == 2 and 0 < waits[1] <= 0.02
    what = f"submit {csv}"
    assert events == [(what, 1, "http-429", 3.0), (what, 1, "http-500", waits[1])]
    stamp = record.pop("submitted_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    sha = file_digest(csv)["sha256"]
    assert re.fullmatch(r"[0-9a-f]{8}", record["id"]) and isinstance(record["ref"], int)
    assert record == {"id": record["id"], "ref": record["ref"], "competition": COMPETITION, "file": str(csv),
                      "sha256": sha, "message": f"kit: whole.csv file {sha[:12]} [{record['id']}] guard",
                      "recipe": "whole.csv", "recipe_hash": None, "status": "PENDING", "public_score": "",
                      "private_score": "", "error": ""}
    assert ledger.read()["submissions"] == [{**record, "submitted_at": stamp}]
    assert emulator.stats()["submissions"] == 1

    limited = _submission(tmp_path, "limited", 0.35)
    emulator.answers.push(CREATE, ["429:1000"])
    with pytest.raises(KaggleUnreachable) as info:
        send(client, ledger, limited, COMPETITION, sample, sleep=lambda s: None)
    assert str(info.value) == (f"submit {limited}: Kaggle kept rate-limiting (HTTP 429) for 0 s; nothing was "
                               "submitted; try again later")
    failed = ledger.read()["submissions"][-1]
    assert failed["status"] == "FAILED" and failed["error"].startswith("HTTP 429")

    emulator.behaviours.realism = dataclasses.replace(emulator.realism, joined=False)
    refused = _submission(tmp_path, "not-joined", 0.55)
    with pytest.raises(KaggleCallError) as info:
        send(client, ledger, refused, COMPETITION, sample)
    assert ledger.read()["submissions"][-1]["error"] == str(info.value) and "HTTP 403" in str(info.value)
    assert emulator.stats()["submissions"] == 1


def test_a_submission_record_removed_from_the_ledger_meanwhile_is_one_line(world, tmp_path: Path) -> None:
    """Another kit process rewrites the ledger while this one waits to retry a submit (its record gone): the
    submit that then goes through stops with one line naming the record, not a traceback."""
    make, ledger = world
    emulator = make()
    client = _client()
    emulator.answers.push(CREATE, ["500"])

    def someone_else_rewrites_the_ledger(seconds: float) -> None:
        with ledger.transaction() as data:
            data["submissions"] = []

    with pytest.raises(KitError) as info:
        send(client, ledger, _submission(tmp_path, "vanishing", 0.45), COMPETITION,
             tmp_path / "competition" / SAMPLE_NAME, sleep=someone_else_rewrites_the_ledger)
    assert re.fullmatch(r"ledger: submission [0-9a-f]{8} vanished", str(info.value))


def test_a_score_is_waited_for_through_404s_and_pending_polls_and_written_whole(world, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """With the defaults ($KIT_POLL_S schedule, the 120 s grace for 404s) and a generous timeout or none, the wait rides
    out the 404 right after the submit and the PENDING polls, then writes Kaggle's status, both scores and its
    error (none: an earlier error is cleared) into the ledger."""
    make, ledger = world
    make(submission_lag_s=0.3, score_delay_s=0.8)
    client = _client()
    monkeypatch.delenv("KIT_SUBMISSION_GRACE_S", raising=False)
    monkeypatch.setenv("KIT_POLL_S", "0.1")
    monkeypatch.setenv("KIT_POLL_MAX_S", "0.1")
    for name, shift, timeout_s in (("scored", 0.25, 60.0), ("scored-too", 0.65, None)):  # a generous timeout, none
        record = send(client, ledger, _submission(tmp_path, name, shift), COMPETITION,
                      tmp_path / "competition" / SAMPLE_NAME)
        with ledger.transaction() as data:
            data["submissions"][-1]["error"] = "stale"
        seen: list[str] = []
        scored = wait_for_score(client, ledger, record, timeout_s=timeout_s, on_poll=seen.append)
        assert seen[0] == NOT_VISIBLE and "PENDING" in seen and seen[-1] == "COMPLETE"
        truth = client.submission(int(record["ref"]))
        assert (scored["status"], scored["public_score"], scored["private_score"], scored["error"]) == (
            "COMPLETE", truth.public_score, truth.private_score, "") and truth.public_score
        assert ledger.read()["submissions"][-1] == scored
