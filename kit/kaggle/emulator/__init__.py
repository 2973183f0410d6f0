"""The Kaggle emulator: an HTTP server on loopback that the real `kaggle` client talks to.

Modules, bottom up: `errors` (the error reply), `realism` (kaggle.com's unkind behaviours, on by
default), `state` (settings, state folder, counters), one module per API service (`kernels`,
`competitions`, `datasets`), `http` (the wire format; it only calls into the services), `app`
(the `Emulator`: services + server + lifecycle). Faults are picked by `kit.kaggle.faults`.
"""

from kit.kaggle.emulator.app import HOST, Emulator
from kit.kaggle.emulator.competitions import score_submission
from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.realism import Realism, describe_realism
from kit.kaggle.emulator.state import EmulatorSettings

__all__ = ["HOST", "ApiError", "Emulator", "EmulatorSettings", "Realism", "describe_realism", "score_submission"]
