"""Guards on the ledger (the record of every push and submission): a write that dies half-way leaves the
previous ledger whole and readable, and no stray temporary file beside it; a damaged ledger is one line
naming the file and is never rewritten; entries, versions and their activity read back as recorded."""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.errors import KitError
from kit.kaggle.ledger import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Ledger,
    default_ledger_path,
    empty_ledger,
    experiment_entry,
    find_version,
    is_active,
    latest_version,
    now_iso,
)

# A kit process that hits the file-size limit (the same error as a full disk) in the middle of writing
# a ledger that has grown past it: the OS cuts the write at FSIZE_LIMIT bytes and raises.
FSIZE_LIMIT = 4096
DIES_MID_WRITE = """
import resource, signal, sys
from kit.kaggle.ledger import Ledger
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write raises OSError instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
with Ledger(sys.argv[1]).transaction() as data:
    data["sweeps"]["big-sweep"] = {{"experiments": [f"exp-{{i:05d}}" for i in range(2000)], "concurrency": 2,
                                   "updated_at": "2024-01-01T00:00:00Z"}}
"""


def test_a_write_that_dies_half_way_leaves_the_old_ledger_readable(tmp_path: Path) -> None:
    path = tmp_path / ".kit" / "ledger.json"
    ledger = Ledger(path)
    with ledger.transaction() as data:
        entry = experiment_entry(data, "exp-a", "kit-user/exp-a")
        entry["versions"].append({"version": 3, "content_hash": "c" * 64, "status": "COMPLETE"})
        data["counters"]["pushes"] = 3
    before = ledger.read()
    before_bytes = path.read_bytes()
    assert len(before_bytes) < FSIZE_LIMIT

    died = subprocess.run([sys.executable, "-c", DIES_MID_WRITE.format(limit=FSIZE_LIMIT), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert died.returncode != 0 and "File too large" in died.stderr, died.stderr  # it did die mid-write

    assert path.read_bytes() == before_bytes
    assert Ledger(path).read() == before
    assert json.loads(path.read_text())["experiments"]["exp-a"]["versions"][0]["version"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.json", "ledger.json.lock"]  # no stray temp file

    with Ledger(path).transaction() as data:  # and the next write goes through as usual
        data["counters"]["pushes"] += 1
    assert Ledger(path).read()["counters"]["pushes"] == 4


def test_the_ledger_lives_at_kit_ledger_or_under_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KIT_LEDGER", raising=False)
    assert Ledger().path == Path(".kit/ledger.json") == default_ledger_path()
    monkeypatch.setenv("KIT_LEDGER", "")  # set but empty: the default
    assert Ledger().path == Path(".kit/ledger.json")
    monkeypatch.setenv("KIT_LEDGER", str(tmp_path / "elsewhere.json"))
    assert Ledger().path == tmp_path / "elsewhere.json"
    assert Ledger(tmp_path / "given.json").path == tmp_path / "given.json"


@pytest.mark.parametrize(("text", "problem"), [
    ('{"schema": "kit.ledger/1", "experiments": []}', "experiments: expected a JSON object"),
    ('{"schema": "kit.ledger/1", "sweeps": 3}', "sweeps: expected a JSON object"),
    ('{"schema": "kit.ledger/1", "counters": "x"}', "counters: expected a JSON object"),
    ('{"schema": "kit.ledger/1", "submissions": {}}', "submissions: expected a JSON list"),
    ('{"schema": "kit.ledger/0"}', "not a kit ledger (expected a JSON object with schema 'kit.ledger/1')"),
    ("[1, 2]", "not a kit ledger"),
    ("{not json", "not valid JSON"),
])
def test_a_damaged_ledger_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(text)
    with pytest.raises(KitError) as info:
        Ledger(path).read()
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)
    assert path.read_text() == text  # never rewritten


def test_unicode_survives_a_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    with ledger.transaction() as data:
        data["submissions"].append({"message": "blend é→ü 🎯"})
    assert ledger.read()["submissions"] == [{"message": "blend é→ü 🎯"}]


def test_entries_versions_and_activity() -> None:
    data = empty_ledger()
    entry = experiment_entry(data, "exp", "kit-user/exp")
    assert data["experiments"]["exp"] == {"kernel": "kit-user/exp", "versions": [], "pending": None}
    assert experiment_entry(data, "exp") is entry and entry["kernel"] == "kit-user/exp"  # no id: kept
    experiment_entry(data, "exp", "kit-user/exp-moved")
    assert entry["kernel"] == "kit-user/exp-moved"
    assert latest_version(None) is None and latest_version(entry) is None and latest_version({}) is None
    entry["versions"] += [{"version": 2, "status": "COMPLETE"}, {"version": 5, "status": "RUNNING"},
                          {"version": 3, "status": "ERROR"}]
    assert latest_version(entry)["version"] == 5
    assert find_version(entry, 3) == {"version": 3, "status": "ERROR"}
    assert find_version(entry, 4) is None and find_version({}, 1) is None
    for status in ACTIVE_STATUSES:
        assert is_active({"status": status}) is True
    for status in TERMINAL_STATUSES:
        assert is_active({"status": status}) is False
    assert is_active(None) is False and is_active({}) is False


def test_times_are_utc_iso_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "KIT-05:30")  # a machine whose local time is not UTC (POSIX form: 5:30 ahead)
    time.tzset()
    try:
        before = time.time()
        stamp = now_iso()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
        parsed = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
        assert int(before) - 1 <= parsed <= time.time() + 1
    finally:
        monkeypatch.undo()
        time.tzset()
