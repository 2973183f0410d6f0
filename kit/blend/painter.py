"""A blend's plots, drawn in worker processes while the blend goes on.

In:  plot jobs: a plot function of `kit.blend.plots` (target path first), its arguments, the target PNG and
     the key its PNG is cached under in kit's cache (`kit.blend.memo.Memo`).
Out: the PNG files. `Painter.finish` waits for every job, raises the first failure (as drawing in this
     process would), and stores each newly drawn PNG in the cache; `Painter.written` maps each plot key to its
     file name.

Why: at the competition's size (50 runs) drawing the plots takes about 3 CPU seconds, a third of a blend
after a new run lands, because each plot shows the new run. Drawn one after the other in the blend's own
process, they come after everything else. Here the blend forks `PAINTERS` workers once its runs are aligned.
The workers import matplotlib while the blend fits its methods, draw the plots that depend only on the runs
(learning curves, the correlation heatmap) during the fits, and share the rest at the end.

The workers are forked, so the drawing code, its matplotlib settings and its fonts are this process's: the
PNGs are byte for byte the ones this process would write (the tests compare them). Forking is used only on
Linux and with more than one core; elsewhere (`PAINTERS` = 0 or a failed fork) every plot is drawn here, in
order, as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kit.blend.memo import Memo

PAINTERS = 2  # worker processes (never more than the machine's cores)
# How long `finish` waits for the workers in all. A worker that dies (killed for memory) or hangs loses its
# plot without a word from multiprocessing; past this wait the workers are stopped and what is left is drawn
# here instead (the same PNGs, later). Every plot of a 50-run blend takes well under 2 s.
PLOT_WAIT_S = 120.0
PLOT_NAMESPACE = "plot"


def _warm_up() -> None:
    """Worker initialiser: import matplotlib's figure, Agg canvas and fonts now, while the blend still computes."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    from matplotlib import font_manager

    font_manager.findfont(font_manager.FontProperties())  # reads the font list (a cached JSON file) once


def _paint(plot: Callable[..., Any], target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    plot(target, *args, **kwargs)


def painter_count(requested: int = PAINTERS) -> int:
    """How many worker processes to fork: 0 (draw here) unless on Linux with at least two cores."""
    if sys.platform != "linux":
        return 0
    return max(0, min(requested, (os.cpu_count() or 1))) if (os.cpu_count() or 1) > 1 else 0


class Painter:
    """Draws plots into a folder: from kit's cache when stored, else in the workers (or here)."""

    def __init__(self, folder: Path, memo: Memo, workers: int = 0) -> None:
        self.folder = folder
        self.memo = memo
        self.written: dict[str, str] = {}
        self._jobs: list[tuple[Any, tuple[Any, ...], Path]] = []  # (pending result, (plot, args, kwargs), target)
        self._pool: Any = None
        if workers > 0:
            import multiprocessing

            try:
                self._pool = multiprocessing.get_context("fork").Pool(workers, initializer=_warm_up)
            except OSError:
                self._pool = None  # no fork here (limits, memory): draw in this process

    def draw(self, key: str, file_name: str, plot: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Write ``folder / file_name`` with ``plot(path, *args, **kwargs)``: copied from the cache when stored,
        else started in a worker (or drawn now when there is none)."""
        self.written[key] = file_name
        target = self.folder / file_name
        parts = (plot.__name__, args, kwargs)
        if self.memo.fetch_file(PLOT_NAMESPACE, parts, target):
            return
        if self._pool is None:
            plot(target, *args, **kwargs)
            self.memo.store_file(PLOT_NAMESPACE, parts, target)
            return
        self._jobs.append((self._pool.apply_async(_paint, (plot, str(target), args, kwargs)), (plot, args, kwargs),
                           target))

    def finish(self, wait_s: float = PLOT_WAIT_S) -> dict[str, str]:
        """Wait for every plot started; store the new ones in the cache; the first failure is raised. Plots the
        workers have not delivered within `wait_s` in all are drawn here (the workers are stopped first)."""
        import multiprocessing
        import time

        jobs, self._jobs = self._jobs, []
        deadline = time.monotonic() + wait_s
        for pending, (plot, args, kwargs), target in jobs:
            try:
                pending.get(timeout=max(0.0, deadline - time.monotonic()) if self._pool is not None else 0.0)
            except multiprocessing.TimeoutError:
                self.close()
                plot(target, *args, **kwargs)
            self.memo.store_file(PLOT_NAMESPACE, (plot.__name__, args, kwargs), target)
        return dict(self.written)

    def close(self) -> None:
        """Stop the workers (at once: a failed blend does not wait for its plots)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


@contextmanager
def painter(folder: Path, memo: Memo, workers: int) -> Iterator[Painter]:
    """A `Painter` drawing into `folder` (made by the caller before the first plot), its workers stopped on
    leaving. Call it before starting threads: forking a process that runs other threads can copy a lock held."""
    paint = Painter(folder, memo, workers)
    try:
        yield paint
    finally:
        paint.close()
