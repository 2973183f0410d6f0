"""The Kaggle emulator put together: the API services on one state, served over HTTP on loopback.

In:  `EmulatorSettings` (a state folder, a competition folder, a datasets root, limits), a
     `FaultConfig` (injected faults), a `Realism` (kaggle.com's behaviours, on by default) and a
     port (0 = any).
Out: a running server. Point the client at it with KAGGLE_API_ENVIRONMENT=LOCALHOST and
     HTTP_PROXY=http://127.0.0.1:<port> (`Emulator.client_env()`); every call then arrives as a
     proxy request. State lives in the state folder, so a restarted emulator carries on (runs
     that were queued or running when it stopped are queued again).
"""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from kit.kaggle.emulator.competitions import CompetitionsService
from kit.kaggle.emulator.datasets import DatasetsService
from kit.kaggle.emulator.faults import FaultConfig
from kit.kaggle.emulator.http import EmulatorServer
from kit.kaggle.emulator.kernels import KernelsService
from kit.kaggle.emulator.realism import Realism
from kit.kaggle.emulator.state import EmulatorSettings
from kit.run.local import stop_kernel

HOST = "127.0.0.1"


class Emulator(KernelsService, CompetitionsService, DatasetsService):
    """The server and its state. `start()` serves in a background thread; `serve_forever()` blocks."""

    def __init__(self, settings: EmulatorSettings, faults: FaultConfig | None = None,
                 port: int = 0, host: str = HOST, realism: Realism | None = None) -> None:
        super().__init__(settings, faults, realism)
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="emu-kernel")
        self._server = EmulatorServer((host, port), self)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None
        self._running: dict[tuple[str, int], subprocess.Popen[str]] = {}  # kernel processes now running
        self._stopping = False
        self._requeue_unfinished()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment that points the real `kaggle` client at this emulator."""
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": self.url, "http_proxy": self.url,
                "NO_PROXY": "", "no_proxy": ""}

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self.stop()

    def stop(self, wait_kernels: bool = False) -> None:
        """Stop serving. Queued kernels are dropped; running ones are waited for with `wait_kernels`,
        else killed (Ctrl-C on `kit emulator` returns at once). Dropped and killed ones stay QUEUED /
        RUNNING in the state folder and are re-queued at the next start."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
        if not wait_kernels:
            with self._lock:
                self._stopping = True
                running = list(self._running.values())
            for proc in running:
                stop_kernel(proc)
        self._pool.shutdown(wait=wait_kernels, cancel_futures=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
