"""Blend work that depends only on its inputs, kept once computed: the same inputs give the stored result.

In:  a namespace (``fit``, ``figures``, ``plot``, ``greedy-path``, ``frames``: a run's parsed CSVs by their
     sha256, `kit.run.folders.load_run`), the key parts (anything picklable: method names,
     params, the OOF matrix, labels, folds, a plot's arguments) and the function that computes the
     result (or, for a plot, writes the file).
Out: the result, read from ``<cache>/blend/<namespace>/<sha256>.pkl`` when an earlier blend stored it
     for exactly these inputs, else computed and stored; `Memo.hits` / `Memo.misses` count each.

The key is the sha256 of: `MEMO_SCHEMA`, the namespace, the source of the modules that compute the
results (`CODE_MODULES`: an edit to any of them is a new key), the versions of the libraries that do
the numerics and drawing, and the pickled key parts. Every fit kit blends with is deterministic (greedy,
hill climbing, Nelder-Mead from equal weights, Newton logistic regression, bootstraps with a fixed seed),
so a stored result is the result a fresh computation gives; the tests check that a warm blend writes the
same files byte for byte as a cold one.

Where: ``$KIT_CACHE_DIR/blend`` (else ``$XDG_CACHE_HOME/kit/blend``, else ``~/.cache/kit/blend``). At most
`MAX_ENTRIES` files per namespace: the least recently used go first. Entries are written to a temporary
file and renamed; an unreadable, truncated or foreign entry is ignored and recomputed; a cache folder
that cannot be written leaves the blend as it was without the cache. ``kit blend --no-cache`` (or
``KIT_BLEND_CACHE=off``) computes everything afresh and stores nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kit.run.folders import user_cache_dir

MEMO_SCHEMA = "kit.blend-memo/1"
MEMO_FOLDER = "blend"
MAX_ENTRIES = 256  # files kept per namespace (a 50-run fit is about 0.6 MB; a plot about 100 kB)
CACHE_SWITCH_ENV = "KIT_BLEND_CACHE"  # "off" disables the cache
CODE_MODULES = ("kernels.contracts", "kernels.metrics", "kit.blend.methods", "kit.blend.nested", "kit.blend.analysis",
                "kit.blend.calibrate", "kit.blend.plots", "kit.blend.memo")
LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "matplotlib")
PICKLE_PROTOCOL = 5

T = TypeVar("T")


def _code_digest() -> str:
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(MEMO_SCHEMA.encode())
    for name in CODE_MODULES:
        h.update(Path(importlib.import_module(name).__file__ or "").read_bytes())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            h.update(f"{lib}=-".encode())
    return h.hexdigest()


def _dataclass_value(name: str, values: tuple[Any, ...]) -> None:
    """Stands in for a dataclass in a key's pickle (keys are hashed, never unpickled)."""


def _array_value(dtype: str, shape: tuple[int, ...], digest: bytes) -> None:
    """Stands in for a NumPy array in a key's pickle: its dtype, shape and the sha256 of its values."""


class _KeyPickler(pickle.Pickler):
    """The pickle of a key's value, never of its objects' identity: no memo (two equal arrays, or one array
    met twice, pickle alike), an array as dtype, shape and the sha256 of its C-ordered values, a dataclass
    as its type name and the fields that make its value (``compare=True``: fields left out of equality,
    such as a leaderboard row's cached statistics, are left out of the key too)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self.fast = True  # no memo: the stream depends on values only (keys are never self-referential)

    def reducer_override(self, obj: Any) -> Any:
        import numpy as np

        if isinstance(obj, np.ndarray):
            values = np.ascontiguousarray(obj)
            data = (values.view(np.uint8) if values.dtype != object  # object arrays (labels): by each item's repr
                    else "\x1f".join(map(repr, values.ravel().tolist())).encode())
            digest = hashlib.sha256(data).digest()
            return _array_value, (values.dtype.str, values.shape, digest)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = tuple((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.compare)
            return _dataclass_value, (type(obj).__qualname__, fields)
        return NotImplemented


def key_of(namespace: str, parts: Any, code: str) -> str:
    """sha256 of the namespace, the code digest and the pickled key parts (dataclasses by value)."""
    buf = io.BytesIO()
    _KeyPickler(buf).dump(parts)
    h = hashlib.sha256(f"{namespace}\n{code}\n".encode())
    h.update(buf.getbuffer())
    return h.hexdigest()


@dataclass
class Memo:
    """One blend's view of the cache: `get` for values, `file` for plots; counts hits and misses."""

    root: Path | None  # None: the cache is off
    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    _code: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # runs load in threads

    @classmethod
    def open(cls, environ: Mapping[str, str] | None = None, enabled: bool = True) -> Memo:
        """The cache under the user's cache folder; off when `enabled` is False or KIT_BLEND_CACHE=off."""
        env = os.environ if environ is None else environ
        if not enabled or env.get(CACHE_SWITCH_ENV, "").lower() in {"off", "0", "no", "false"}:
            return cls(None)
        return cls(user_cache_dir(env) / MEMO_FOLDER)

    @property
    def code(self) -> str:
        with self._lock:
            if self._code is None:
                self._code = _code_digest()
        return self._code

    def _path(self, namespace: str, parts: Any, suffix: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / namespace / f"{key_of(namespace, parts, self.code)}{suffix}"

    def _count(self, table: dict[str, int], namespace: str) -> None:
        with self._lock:
            table[namespace] = table.get(namespace, 0) + 1

    def load(self, namespace: str, parts: Any) -> Any:
        """The value stored for these key parts, or None (none stored, unreadable, or the cache is off)."""
        path = self._path(namespace, parts, ".pkl")
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                stored = pickle.load(fh)  # noqa: S301 - written by this module into the user's own cache
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError,
                ValueError):
            return None
        if not (isinstance(stored, tuple) and len(stored) == 2 and stored[0] == MEMO_SCHEMA):
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        self._count(self.hits, namespace)
        return stored[1]

    def save(self, namespace: str, parts: Any, value: Any) -> None:
        """Store `value` for these key parts (nothing when the cache is off or cannot be written)."""
        path = self._path(namespace, parts, ".pkl")
        if path is not None:
            self._store(path, pickle.dumps((MEMO_SCHEMA, value), protocol=PICKLE_PROTOCOL))

    def get(self, namespace: str, parts: Any, compute: Callable[[], T]) -> T:
        """The stored result for these key parts, else `compute()` (stored for next time)."""
        stored = self.load(namespace, parts)
        if stored is not None:
            return stored
        value = compute()
        self._count(self.misses, namespace)
        self.save(namespace, parts, value)
        return value

    def file(self, namespace: str, parts: Any, target: Path, write: Callable[[Path], None]) -> None:
        """`target` copied from the stored file for these key parts, else written by `write(target)` and stored."""
        if not self.fetch_file(namespace, parts, target):
            write(target)
            self.store_file(namespace, parts, target)

    def fetch_file(self, namespace: str, parts: Any, target: Path) -> bool:
        """Copy the file stored for these key parts to `target`; False (and a miss) when there is none."""
        path = self._path(namespace, parts, target.suffix)
        if path is not None and path.is_file():
            try:
                shutil.copyfile(path, target)
                os.utime(path)
                self._count(self.hits, namespace)
                return True
            except OSError:
                pass
        self._count(self.misses, namespace)
        return False

    def store_file(self, namespace: str, parts: Any, target: Path) -> None:
        """Store the file `target` (just written) for these key parts."""
        path = self._path(namespace, parts, target.suffix)
        if path is not None:
            try:
                self._store(path, target.read_bytes())
            except OSError:
                pass

    def _store(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            _prune(path.parent)
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # no folder to leave a temporary file in

    def summary(self) -> str:
        """'reused 1 fit and 7 plots from kit's cache (identical inputs)', or '' when nothing was reused."""
        if not self.hits:
            return ""
        names = {"fit": ("blend fit", "blend fits"), "figures": ("set of figures", "sets of figures"),
                 "plot": ("plot", "plots"), "greedy-path": ("greedy path", "greedy paths"),
                 "frames": ("parsed run file", "parsed run files")}
        items = [f"{n} {names.get(k, (k, k))[n > 1]}" for k, n in sorted(self.hits.items())]
        return f"reused {', '.join(items)} from kit's cache (identical inputs; --no-cache recomputes)"


def _prune(folder: Path) -> None:
    entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime)
    for stale in entries[: len(entries) - MAX_ENTRIES]:
        stale.unlink(missing_ok=True)
