"""Suite-wide settings.

`kit push` rehearses every kernel on the target's simulated topology before it sends anything
(`kit preflight`, minutes of CPU). Tests that push through the CLI test the Kaggle path, not the
rehearsal, so the suite turns it off by default (`KIT_PREFLIGHT=0`, inherited by subprocesses);
the preflight tests turn it back on explicitly.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_preflight_on_push(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_PREFLIGHT", "0")
