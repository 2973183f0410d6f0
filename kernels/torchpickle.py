"""Reading a PyTorch state dict saved in the legacy (non-zip) format, with `pickle` and NumPy only.

In:  the path of a ``.pth`` file written by ``torch.save`` with ``_use_new_zipfile_serialization=False``
     (or by PyTorch < 1.6), holding a dict of tensors (a ``state_dict``).
Out: ``{name: numpy array}`` in the file's order (float32 / int64 ... as stored, C-contiguous).

The format is the one ``torch.serialization._legacy_load`` reads (PyTorch's torch/serialization.py): five
pickles in a row (magic number 0x1950a86a20f9469cfc6c, protocol version 1001, system info, the object with
each storage replaced by a persistent id ``("storage", StorageType, key, location, numel[, view])``, then the
list of storage keys in the order their data follows), then per key an 8-byte little-endian element count and
the raw little-endian elements. Tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)``; here that becomes a strided view of the storage's NumPy array. No PyTorch is needed and
no code from the file runs: the unpickler accepts only the handful of globals a state dict uses.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001
TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
TORCH_COUNT_BYTES = 8  # each storage's data is preceded by its element count as a little-endian int64


class TorchPickleError(ValueError):
    """The file is not a legacy PyTorch state dict this reader understands (one-line message)."""


class _TorchpickleStorageType:
    """Stands in for ``torch.FloatStorage`` etc. while unpickling: only its NumPy dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(TORCH_STORAGE_DTYPES[name])


def _torchpickle_rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> Any:
    return ("tensor", storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _torchpickle_ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


_torchpickle_globals = {
    ("torch._utils", "_rebuild_tensor_v2"): _torchpickle_rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _torchpickle_rebuild_tensor,
    ("collections", "OrderedDict"): _torchpickle_ordered_dict,
}


class _TorchpickleUnpickler(pickle.Unpickler):
    """A restricted unpickler: storages become ("storage", dtype, key, numel) records, tensors stay lazy."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _torchpickle_globals:
            return _torchpickle_globals[(module, name)]
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return _TorchpickleStorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        return ("storage", storage_type.dtype, str(key), int(numel))


def _torchpickle_load(handle: BinaryIO) -> Any:
    return _TorchpickleUnpickler(handle, encoding="latin1").load()


def _torchpickle_tensor(record: Any, storages: dict[str, np.ndarray]) -> np.ndarray:
    _, storage, offset, size, stride = record
    data = storages[storage[2]]
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.ascontiguousarray(view)


def read_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a legacy-format ``.pth`` file as NumPy arrays (see the module docstring)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            magic = _torchpickle_load(handle)
            if magic != TORCH_LEGACY_MAGIC:
                raise TorchPickleError(f"{path}: not a legacy PyTorch file (magic {magic!r}; a zip-format .pth "
                                       "needs torch.load)")
            protocol = _torchpickle_load(handle)
            if protocol != TORCH_LEGACY_PROTOCOL:
                raise TorchPickleError(f"{path}: protocol version {protocol!r}, expected {TORCH_LEGACY_PROTOCOL}")
            _torchpickle_load(handle)  # system info: endianness and type sizes (little-endian assumed)
            obj = _torchpickle_load(handle)
            keys = _torchpickle_load(handle)
            kinds = _torchpickle_storage_kinds(obj)
            storages: dict[str, np.ndarray] = {}
            for key in keys:
                (count,) = struct.unpack("<q", handle.read(TORCH_COUNT_BYTES))
                dtype = kinds.get(str(key), np.dtype(np.float32))
                raw = handle.read(count * dtype.itemsize)
                if len(raw) != count * dtype.itemsize:
                    raise TorchPickleError(f"{path}: storage {key} is cut short")
                storages[str(key)] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    except (pickle.UnpicklingError, EOFError, struct.error) as exc:
        raise TorchPickleError(f"{path}: cannot read as a legacy PyTorch state dict ({exc})") from None
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    return {name: _torchpickle_tensor(rec, storages) for name, rec in obj.items()
            if isinstance(rec, tuple) and rec and rec[0] == "tensor"}


def _torchpickle_storage_kinds(obj: Any) -> dict[str, np.dtype]:
    kinds: dict[str, np.dtype] = {}
    for rec in obj.values() if isinstance(obj, dict) else ():
        if isinstance(rec, tuple) and rec and rec[0] == "tensor":
            kinds[rec[1][2]] = rec[1][1]
    return kinds
