"""Kaggle's accelerators as data: the one table every part of kit and the kernel reads.

In:  nothing (plain data).
Out: `ACCELERATORS` (name -> `Accelerator`: kind, devices, rehearsal route, sessions at once, session and
     weekly hours, source), `UNAVAILABLE` (names Kaggle shows but a user cannot get, with the reason),
     `accelerator_kind(name)`, `accelerator_problem(name)` (None when usable, else what is wrong and what
     to use) and `ACCELERATOR_HELP`, the one ``--accelerator`` help text.

Used by the config's edge checks (`kernels.config`), the kernel's hardware check (`kernels.strategy`),
`kit render`, `kit preflight`, `kit plan`, `kit push` and the emulator. The limits are practitioners'
reports and the Kaggle CLI maintainers' words, not Kaggle's docs (re-check before relying on a number):
the project's notes on Kaggle's images (TPU v5e-8 image: `Kaggle/docker-python` tpu/; GPU image: the Colab
base of 2026-05; limits: kaggle-cli issues #1196, PRs #1192 and #1198).
"""

from __future__ import annotations

from dataclasses import dataclass

NO_ACCELERATOR = "none"


@dataclass(frozen=True)
class Accelerator:
    """One accelerator a kernel can ask for (``kaggle.accelerator``)."""

    name: str  # the name the kaggle client's push takes (machine_shape / --accelerator)
    kind: str  # tpu | gpu | cpu
    devices: int  # replicas the kernel trains on
    rehearse: str  # kit preflight's simulated topology (KIT_REHEARSE value; "" = this CPU as it is)
    sessions_at_once: int  # batch sessions Kaggle runs at once for one user
    session_hours: float  # longest session
    weekly_hours: float | None  # weekly quota (None = not metered)
    source: str  # where the figures come from


ACCELERATORS: dict[str, Accelerator] = {
    "TpuV5E8": Accelerator(
        "TpuV5E8", "tpu", 8, "tpu", sessions_at_once=1, session_hours=9.0, weekly_hours=20.0,
        source="kaggle-images notes: one batch TPU session at a time ('Maximum batch TPU session count of 1 "
               "reached'), 9 h a session, 20 h a week; `kaggle quota` reports what is left"),
    "NvidiaTeslaT4": Accelerator(
        "NvidiaTeslaT4", "gpu", 2, "gpu", sessions_at_once=2, session_hours=12.0, weekly_hours=30.0,
        source="kaggle-images notes: two T4s (a single T4 is no longer offered: kaggle-cli #1196, PR #1198); "
               "about 30 h a week (it floats), 12 h a session, 2 sessions at once"),
    NO_ACCELERATOR: Accelerator(
        NO_ACCELERATOR, "cpu", 1, "", sessions_at_once=5, session_hours=12.0, weekly_hours=None,
        source="kaggle-images notes: CPU sessions, 5 at once, not metered"),
}

UNAVAILABLE: dict[str, str] = {
    "NvidiaTeslaP100": "retired by Kaggle (a push asking for it silently gets another accelerator: "
                       "kaggle-cli PR #1192); use NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem": "an internal, admin-only Kaggle pool that users cannot get; use NvidiaTeslaT4",
}

ACCELERATOR_HELP = (f"{' | '.join(ACCELERATORS)} (TpuV5E8: TPU v5e-8, 8 devices; NvidiaTeslaT4: two T4 GPUs; "
                    f"{NO_ACCELERATOR}: CPU only); default: the config's kaggle.accelerator")


def accelerator_problem(name: str) -> str | None:
    """None when `name` is an accelerator a user can push to; else what is wrong, with what to use."""
    if name in ACCELERATORS:
        return None
    if name in UNAVAILABLE:
        return f"got {name!r}: {UNAVAILABLE[name]}"
    return f"got {name!r}, expected one of {', '.join(ACCELERATORS)}"


def accelerator_kind(name: str) -> str:
    """tpu | gpu | cpu for a usable accelerator name (cpu for "none"); KeyError for any other name."""
    return ACCELERATORS[name].kind
