"""Silence native (C++) log lines written straight to file descriptor 2 while TensorFlow loads.

In:  a block of code (context manager). Out: the block runs with fd 2 pointed at /dev/null;
Python-level errors raised inside still propagate and are printed normally afterwards.
TensorFlow prints absl/oneDNN banners on import that no environment variable turns off; they would
otherwise precede every one-line error of the CLI. `quiet_tensorflow()` imports TensorFlow and Keras
that way and turns off their Python-level warnings (tf.function retracing) for commands that run models.
"""

from __future__ import annotations

import contextlib
import logging
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


TF_LOG_LEVEL = "3"  # TF_CPP_MIN_LOG_LEVEL: errors only
QUIET_LOGGERS = ("tensorflow", "absl", "keras")


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras with no banner, and keep their warnings (retracing, absl) out of the
    output; errors still raise. Call at the start of a command, before anything imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    with native_stderr_silenced():
        import keras  # noqa: F401
        import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
