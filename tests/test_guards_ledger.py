"""Guards on the ledger (the record of every push and submission): a write that dies half-way leaves the
previous ledger whole and readable, and no stray temporary file beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kit.kaggle.ledger import Ledger, experiment_entry

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
