"""Guards on submissions (a competitor's daily budget and honest scores): refreshing from Kaggle writes each
submission's own status and scores into the ledger, adopts one whose reply was lost (matched by its
message), marks one that never reached Kaggle as failed, and leaves other competitions alone; the sample
file a submission is checked against is found, or one line says why not. Real client, emulator."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.kaggle_support import COMPETITION

from kit.errors import KitError
from kit.kaggle.client import connect
from kit.kaggle.retry import RetryPolicy
from kit.kaggle.submit import SAMPLE_NAME, find_sample, refresh_submissions, send

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
        lost.update(ref=None, status="SENDING")  # kit stopped before the reply (the ref) was recorded
        template = dict(lost)
        data["submissions"].append({**template, "message": "never reached Kaggle", "sha256": "0" * 64})
        data["submissions"].append({**template, "message": "still pending elsewhere", "status": "PENDING"})
        data["submissions"].append({**template, "competition": OTHER_COMPETITION, "message": "other"})

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
