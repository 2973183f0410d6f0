"""kit: the toolkit that runs on the user's machine (render, run, push, pull, blend, submit, predict)."""

__version__ = "0.1.0"
