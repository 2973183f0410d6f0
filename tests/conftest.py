"""Suite-wide settings.

`kit push` rehearses every kernel on the target's simulated topology before it sends anything
(`kit preflight`, minutes of CPU). Tests that push through the CLI test the Kaggle path, not the
rehearsal, so the suite turns it off by default (`KIT_PREFLIGHT=0`, inherited by subprocesses);
the preflight tests turn it back on explicitly. The preflight's JAX compilation cache goes to a folder of
this test session (``KIT_CACHE_DIR``), never to the user's ~/.cache/kit. The blend cache is off
(``KIT_BLEND_CACHE=off``) so that every blend test computes what it checks; tests/test_blend_speed.py
turns it on and checks a cached blend writes the same files as a fresh one.

`world`: the Kaggle tests' emulator on 127.0.0.1 and the ledger (tests/test_kaggle_*.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _kit_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kit-cache"))


@pytest.fixture(autouse=True)
def _no_preflight_on_push(monkeypatch: pytest.MonkeyPatch, _kit_cache_dir: str) -> None:
    monkeypatch.setenv("KIT_PREFLIGHT", "0")
    monkeypatch.setenv("KIT_CACHE_DIR", _kit_cache_dir)
    monkeypatch.setenv("KIT_BLEND_CACHE", "off")  # each blend test computes its figures; test_blend_speed turns it on


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(make, ledger): ``make(faults=None, **options)`` starts one emulator for the test, in its realistic mode
    with kaggle.com's windows shrunk (`QUICK_REALISM`), and points the real kaggle client at it. An option
    named like a `Realism` field changes that behaviour (``lag_s=2.5``); any other is an `EmulatorSettings`
    field (``max_sessions=1``). Every emulator started is stopped after the test."""
    from helpers.kaggle_support import QUICK_REALISM, apply_env, client_env, start_emulator, write_credentials

    from kit.kaggle.emulator import Realism
    from kit.kaggle.ledger import Ledger

    creds = write_credentials(tmp_path / "creds")
    realism_fields = {f.name for f in dataclasses.fields(Realism)}
    made = []

    def make(faults=None, **options: object):
        realism = {k: v for k, v in options.items() if k in realism_fields}
        settings = {k: v for k, v in options.items() if k not in realism_fields}
        emulator = start_emulator(tmp_path, faults, dataclasses.replace(QUICK_REALISM, **realism), **settings)
        made.append(emulator)
        apply_env(monkeypatch, client_env(emulator, creds))
        return emulator

    yield make, Ledger(tmp_path / ".kit" / "ledger.json")
    for emulator in made:
        emulator.stop()
