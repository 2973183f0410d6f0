"""Faults for the Kaggle emulator: what can go wrong, how often, reproducibly.

In:  rates per kind (`FaultConfig`, or `FaultConfig.uniform(rate, seed)`), then one `decide(key, kinds)`
     per call, where the key names the call and what it is about (method + kernel, file, ...).
Out: the fault to inject for this call (None for none), and `fault_figures` for a run's report.

A fault is picked by a hash of (seed, key, how many times the key was seen), so the same seed and the
same sequence of calls per key give the same faults, whatever the threads interleave. At most
`max_streak` faults in a row hit one key, so bounded retries always get through (Kaggle is flaky,
not hostile).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from kit.errors import KitError

API_FAULTS = ("429", "500", "lost_reply", "slow")
FILE_FAULTS = ("429", "500", "slow", "truncate")


@dataclass(frozen=True)
class FaultConfig:
    """Fault rates (probabilities per call) and the seed that makes them reproducible."""

    seed: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0  # answer 500 before doing anything
    rate_lost_reply: float = 0.0  # do the work, then answer 500 (the client never sees the reply)
    rate_slow: float = 0.0
    slow_s: float = 1.0
    rate_truncate: float = 0.0  # downloads: promise N bytes, send fewer, hang up
    rate_not_found: float = 0.0  # status/get of a kernel version younger than NOT_FOUND_WINDOW_S: 404
    rate_kernel_error: float = 0.0  # a pushed version ends in ERROR without running
    escape_names: bool = False  # output listings carry a name that escapes the download folder
    max_streak: int = 3  # at most this many faults in a row for one call

    @classmethod
    def uniform(cls, rate: float, seed: int = 0, **overrides: Any) -> FaultConfig:
        """`rate` = chance that an API call or download misbehaves, spread evenly over the kinds
        (429, 500, lost reply, slow for API calls; 429, 500, slow, truncated for downloads);
        a just-created kernel answers 404 at `rate` too. Kernel errors stay off unless given."""
        if not 0.0 <= rate < 1.0:
            raise KitError(f"fault rate {rate}: expected a number in [0, 1)")
        share = rate / len(API_FAULTS)
        base = cls(seed=seed, rate_429=share, rate_500=share, rate_lost_reply=share, rate_slow=share,
                   rate_truncate=share, rate_not_found=rate, slow_s=0.2)
        return replace(base, **overrides)

    def rate(self, kind: str) -> float:
        return {"429": self.rate_429, "500": self.rate_500, "lost_reply": self.rate_lost_reply,
                "slow": self.rate_slow, "truncate": self.rate_truncate, "not_found": self.rate_not_found,
                "kernel_error": self.rate_kernel_error}[kind]


class FaultPlan:
    """Decides faults: a hash of (seed, call key, how many times this key was seen) picks the kind."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._streak: dict[str, int] = {}

    def _uniform(self, key: str, n: int) -> float:
        digest = hashlib.sha256(f"{self.config.seed}|{key}|{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def decide(self, key: str, kinds: tuple[str, ...]) -> str | None:
        """The fault for this call of `key` among `kinds`, or None."""
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            if self._streak.get(key, 0) >= self.config.max_streak:
                self._streak[key] = 0
                return None
            u = self._uniform(key, n)
            edge = 0.0
            for kind in kinds:
                edge += self.config.rate(kind)
                if u < edge:
                    self._streak[key] = self._streak.get(key, 0) + 1
                    return kind
            self._streak[key] = 0
            return None


def describe_faults(config: FaultConfig) -> str:
    """One line naming the non-zero fault settings."""
    active = {k: v for k, v in asdict(config).items() if v and k not in ("seed", "max_streak", "slow_s")}
    return ", ".join(f"{k}={v}" for k, v in active.items()) or "none"


def fault_figures(stats: Mapping[str, Any]) -> dict[str, int]:
    """The numbers a fault run reports: faults injected (total and by kind), versions, identical versions."""
    faults = {str(k): int(v) for k, v in stats.get("faults", {}).items()}
    return {"faults_injected": sum(faults.values()), **{f"fault_{k}": v for k, v in faults.items()},
            "versions": int(stats.get("versions", 0)), "identical_versions": int(stats.get("identical_versions", 0)),
            "submissions": int(stats.get("submissions", 0)),
            "duplicate_submissions": int(stats.get("duplicate_submissions", 0))}
