"""Suite-wide settings.

`kit push` rehearses every kernel on the target's simulated topology before it sends anything
(`kit preflight`, minutes of CPU). Tests that push through the CLI test the Kaggle path, not the
rehearsal, so the suite turns it off by default (`KIT_PREFLIGHT=0`, inherited by subprocesses);
the preflight tests turn it back on explicitly. The preflight's JAX compilation cache goes to a folder of
this test session (``KIT_CACHE_DIR``), never to the user's ~/.cache/kit.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _kit_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kit-cache"))


@pytest.fixture(autouse=True)
def _no_preflight_on_push(monkeypatch: pytest.MonkeyPatch, _kit_cache_dir: str) -> None:
    monkeypatch.setenv("KIT_PREFLIGHT", "0")
    monkeypatch.setenv("KIT_CACHE_DIR", _kit_cache_dir)
