"""Where a kernel's data and outputs live: a local folder, Kaggle's /kaggle/input, or a bucket.

In:  a dataset spec from the config (Kaggle slug "owner/name", a local folder, or a URL such as
     gs://bucket/path that any TensorFlow filesystem can read), the bucket named in the config
     (``data.gcs_path``) and the environment.
Out: a location string that `tf.io.gfile` can glob and read (checked to exist and hold files),
     and the output folder. A wrong or empty location raises `DataLocationError` with one line
     naming it.

Order (first match wins):
  1. the override variable (KIT_DATA_DIR / KIT_EXTERNAL_DIR, set by `kit run` and the emulator);
  2. a URL spec (gs://, ram://, s3://, ...) as given;
  3. on Colab: the bucket in ``data.gcs_path`` (a Colab TPU node can read nothing else);
  4. on Kaggle, when the image needs a bucket (the ``kaggle_datasets`` helper is present and the
     TPU is a TPU node, not a TPU VM): ``KaggleDatasets().get_gcs_path(<mount name>)``;
  5. a local folder, then Kaggle's input layouts (2026 images mount each attachment in several):
     <input root>/<name>, <input root>/datasets/<owner>/<name>, <input root>/competitions/<name>.

Environment (set by `kit run` / the emulator; absent on Kaggle):
  KIT_DATA_DIR    the main dataset's location (overrides data.dataset)
  KIT_EXTERNAL_DIR the external dataset's location (overrides data.external)
  KIT_INPUT_ROOT  stands in for /kaggle/input (datasets resolved as <root>/<name>)
  KIT_OUTPUT_DIR  stands in for /kaggle/working
Runtime markers read: KAGGLE_KERNEL_RUN_TYPE (Kaggle), COLAB_RELEASE_TAG / COLAB_GPU (Colab),
  ISTPUVM / TPU_ACCELERATOR_TYPE / TPU device files (TPU VM), TPU_NAME / COLAB_TPU_ADDR (TPU node).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

KAGGLE_INPUT = "/kaggle/input"
KAGGLE_WORKING = "/kaggle/working"
KAGGLE_MARKER_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE")
COLAB_MARKER_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION")
TPU_VM_VARS = ("ISTPUVM", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")
TPU_NODE_VARS = ("TPU_NAME", "COLAB_TPU_ADDR")
TPU_LOCAL_NAME = "local"  # TPU_NAME on a TPU VM
TPU_VM_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
KAGGLE_GCS_MODULE = "kaggle_datasets"
BUCKET_SCHEME = "gs://"
PRIVATE_BUCKET_HINT = " (a private bucket needs credentials: on Colab run google.colab.auth.authenticate_user())"
PLATFORMS = ("kaggle", "colab", "local")
TPU_KINDS = ("", "vm", "node")  # none, attached to this VM (reads local files), remote node (reads buckets only)


class DataLocationError(FileNotFoundError):
    """A dataset location does not exist or holds no matching files (one-line message)."""


@dataclass(frozen=True)
class Platform:
    """Where the kernel runs, as far as reading data is concerned."""

    name: str = "local"  # one of PLATFORMS
    tpu: str = ""  # one of TPU_KINDS
    gcs_helper: bool = False  # Kaggle's kaggle_datasets.KaggleDatasets is importable

    @property
    def needs_bucket(self) -> bool:
        """True when the accelerator can only read data from a bucket (a TPU node)."""
        return self.tpu == "node"


def is_url(spec: str) -> bool:
    """True for scheme-qualified locations (gs://, ram://, s3://, ...)."""
    return "://" in spec


def _paths_module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def tpu_kind(environ: Mapping[str, str] | None = None) -> str:
    """'vm' for a TPU attached to this machine, 'node' for a remote TPU (gRPC), '' for none."""
    env = os.environ if environ is None else environ
    if env.get("TPU_NAME") == TPU_LOCAL_NAME or any(env.get(v) for v in TPU_VM_VARS):
        return "vm"
    if any(env.get(v) for v in TPU_NODE_VARS):
        return "node"
    if environ is None and any(glob.glob(p) for p in TPU_VM_DEVICE_GLOBS):
        return "vm"
    return ""


def detect_platform(environ: Mapping[str, str] | None = None) -> Platform:
    """Kaggle, Colab or a plain machine, its TPU kind, and whether Kaggle's GCS helper is there.

    With an explicit `environ` only that mapping is read for the platform and TPU (no device files),
    so the answer is reproducible in tests.
    """
    env = os.environ if environ is None else environ
    if any(env.get(v) for v in KAGGLE_MARKER_VARS):
        name = "kaggle"
    elif any(env.get(v) for v in COLAB_MARKER_VARS):
        name = "colab"
    else:
        name = "local"
    helper = name == "kaggle" and _paths_module_available(KAGGLE_GCS_MODULE)
    return Platform(name=name, tpu=tpu_kind(environ), gcs_helper=helper)


def mount_name(spec: str) -> str:
    """The folder a Kaggle dataset is mounted as: 'owner/name' and '/kaggle/input/name' give 'name'."""
    return spec.rstrip("/").split("/")[-1]


def kaggle_gcs_path(name: str) -> str:
    """Ask Kaggle for the bucket holding an attached dataset (only works inside a Kaggle kernel)."""
    from kaggle_datasets import KaggleDatasets  # present in Kaggle's images only

    return KaggleDatasets().get_gcs_path(name)


def _paths_first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_location(location: str, label: str) -> str:
    """Return `location` if it is a folder (local or on a TensorFlow filesystem) holding files.

    `label` says where the location came from (a config key or variable) for the error message.
    """
    if not is_url(location):
        if not os.path.isdir(location):
            raise DataLocationError(f"{label}: location {location!r} does not exist or is not a folder")
        if not os.listdir(location):
            raise DataLocationError(f"{label}: location {location!r} is empty (expected the dataset's files)")
        return location
    import tensorflow as tf

    try:  # glob (unlike listdir) tells an unknown filesystem scheme from a missing folder
        found = bool(tf.io.gfile.glob(f"{location.rstrip('/')}/*"))
    except tf.errors.NotFoundError:
        found = False
    except (tf.errors.OpError, ValueError) as exc:
        raise DataLocationError(f"{label}: location {location!r} cannot be read ({_paths_first_line(exc)})") from None
    if not found:
        hint = PRIVATE_BUCKET_HINT if location.startswith(BUCKET_SCHEME) else ""
        raise DataLocationError(f"{label}: location {location!r} does not exist or is empty{hint}")
    return location


def input_candidates(spec: str, root: str = KAGGLE_INPUT) -> list[str]:
    """Where Kaggle may mount `spec` ("owner/slug" dataset, or a competition slug) under `root`, in order:
    /kaggle/input/<slug>, /kaggle/input/datasets/<owner>/<slug>, /kaggle/input/competitions/<slug>."""
    name = mount_name(spec)
    found = [os.path.join(root, name)]
    if "/" in spec.strip("/"):
        found.append(os.path.join(root, "datasets", *spec.strip("/").split("/")[-2:]))
    found.append(os.path.join(root, "competitions", name))
    return found


def _paths_local(spec: str, env: Mapping[str, str], override_var: str) -> str:
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    root = env.get("KIT_INPUT_ROOT", KAGGLE_INPUT)
    candidates = input_candidates(spec, root)
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise DataLocationError(f"dataset {spec!r}: not found (looked in {spec}, {', '.join(candidates)}; "
                            f"set {override_var}, attach the dataset, or give a gs:// URL)")


def resolve_dataset(
    spec: str,
    override_var: str = "KIT_DATA_DIR",
    environ: Mapping[str, str] | None = None,
    gcs_path: str = "",
    platform: Platform | None = None,
    gcs_lookup: Callable[[str], str] | None = None,
) -> str:
    """Turn a dataset spec into a readable, non-empty location (see the module docstring for the order).

    `gcs_path` is the config's ``data.gcs_path`` (main dataset only); `platform` defaults to
    `detect_platform(environ)`; `gcs_lookup` maps a Kaggle mount name to its bucket (default: Kaggle's
    ``KaggleDatasets().get_gcs_path``).
    """
    env = os.environ if environ is None else environ
    if env.get(override_var):
        return check_location(env[override_var], override_var)
    if not spec:
        raise DataLocationError(f"dataset location is empty (set it in the config or {override_var})")
    place = platform or detect_platform(environ)
    if is_url(spec):
        return check_location(spec.rstrip("/"), f"dataset {spec!r}")
    if place.name == "colab" and gcs_path:
        if not is_url(gcs_path):
            raise DataLocationError(f"data.gcs_path {gcs_path!r}: expected a bucket URL such as gs://bucket/folder")
        print(f"[kit] Colab{' TPU' if place.tpu else ''}: reading dataset {spec!r} from {gcs_path}")
        return check_location(gcs_path.rstrip("/"), "data.gcs_path")
    if place.name == "colab" and place.needs_bucket:
        raise DataLocationError(f"dataset {spec!r}: a Colab TPU node reads only from a bucket; "
                                "set data.gcs_path to the gs:// URL holding the dataset")
    if place.name == "kaggle" and place.needs_bucket and place.gcs_helper:
        name = mount_name(spec)
        try:
            bucket = (gcs_lookup or kaggle_gcs_path)(name)
        except Exception as exc:  # the helper raises whatever its HTTP client raises
            raise DataLocationError(f"dataset {spec!r}: Kaggle's GCS path lookup for {name!r} failed "
                                    f"({_paths_first_line(exc)}); is the dataset attached?") from None
        if not bucket:
            raise DataLocationError(f"dataset {spec!r}: Kaggle returned no GCS path for {name!r}")
        print(f"[kit] Kaggle TPU node: reading dataset {spec!r} from {bucket}")
        return check_location(bucket.rstrip("/"), f"dataset {spec!r} (GCS path {bucket})")
    return check_location(_paths_local(spec, env, override_var), f"dataset {spec!r}")


def output_dir(environ: Mapping[str, str] | None = None) -> str:
    """The folder outputs are written to (created if needed)."""
    env = os.environ if environ is None else environ
    out = env.get("KIT_OUTPUT_DIR") or (KAGGLE_WORKING if os.path.isdir(KAGGLE_WORKING) else os.getcwd())
    os.makedirs(out, exist_ok=True)
    return out
