"""The Kaggle emulator: an HTTP server on loopback that the real `kaggle` client talks to.

Modules, bottom up: `errors` (the error reply), `realism` (kaggle.com's unkind behaviours, on by
default), `state` (settings, state folder, counters), one module per API service (`kernels`,
`competitions`, `datasets`), `http` (the wire format; it only calls into the services), `app`
(the `Emulator`: services + server + lifecycle); `faults` picks the injected faults (`FaultConfig`).
The names below are imported on first use, so `kit`'s parser can read `realism` without loading
the services (and pandas).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"HOST": "app", "Emulator": "app", "score_submission": "competitions", "ApiError": "errors",
            "Realism": "realism", "describe_realism": "realism", "EmulatorSettings": "state"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
