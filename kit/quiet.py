"""Silence native (C++) log lines written straight to file descriptor 2 while TensorFlow loads.

In:  a block of code (context manager). Out: the block runs with fd 2 pointed at /dev/null;
Python-level errors raised inside still propagate and are printed normally afterwards.
TensorFlow prints absl/oneDNN banners on import that no environment variable turns off; they would
otherwise precede every one-line error of the CLI.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
