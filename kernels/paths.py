"""Where a kernel's data and outputs live: Kaggle, a local folder, or a bucket.

In:  a dataset spec from the config (Kaggle slug "owner/name", local folder, or URL such as
     gs://bucket/path) and the environment.
Out: a location string that `tf.io.gfile` can glob and read, and the output folder.

Environment (set by `kit run` / the emulator; absent on Kaggle):
  KIT_DATA_DIR    the main dataset's location (overrides data.dataset)
  KIT_EXTERNAL_DIR the external dataset's location (overrides data.external)
  KIT_INPUT_ROOT  stands in for /kaggle/input (datasets resolved as <root>/<name>)
  KIT_OUTPUT_DIR  stands in for /kaggle/working
"""

from __future__ import annotations

import os
from collections.abc import Mapping

KAGGLE_INPUT = "/kaggle/input"
KAGGLE_WORKING = "/kaggle/working"


class DataLocationError(FileNotFoundError):
    """A dataset location does not exist or holds no matching files (one-line message)."""


def is_url(spec: str) -> bool:
    """True for scheme-qualified locations (gs://, ram://, s3://, ...)."""
    return "://" in spec


def resolve_dataset(spec: str, override_var: str = "KIT_DATA_DIR", environ: Mapping[str, str] | None = None) -> str:
    """Turn a dataset spec into a readable location (see module docstring for the order)."""
    env = os.environ if environ is None else environ
    if env.get(override_var):
        return env[override_var]
    if is_url(spec):
        return spec.rstrip("/")
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    root = env.get("KIT_INPUT_ROOT", KAGGLE_INPUT)
    name = spec.rstrip("/").split("/")[-1]
    for candidate in (os.path.join(root, name), os.path.join(root, "datasets", spec)):
        if os.path.isdir(candidate):
            return candidate
    raise DataLocationError(f"dataset {spec!r}: not found (looked in {os.path.join(root, name)}; "
                            f"set {override_var} or attach the dataset)")


def output_dir(environ: Mapping[str, str] | None = None) -> str:
    """The folder outputs are written to (created if needed)."""
    env = os.environ if environ is None else environ
    out = env.get("KIT_OUTPUT_DIR") or (KAGGLE_WORKING if os.path.isdir(KAGGLE_WORKING) else os.getcwd())
    os.makedirs(out, exist_ok=True)
    return out
