"""Torch zip files (``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin``) as numpy, with or without torch.

:func:`load_torch_file` uses ``torch.load(..., weights_only=True)`` when torch is
installed, otherwise :func:`read_torch_zip`: the zip's ``data.pkl`` is unpickled with an
Unpickler that only resolves ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the
``torch.<Type>Storage`` classes and ``argparse.Namespace`` (as an inert attribute holder),
and tensors are rebuilt from the raw ``data/<n>``
storages (offset, shape, strides; bfloat16 widened to float32). Anything else in the
pickle is refused, so reading an untrusted file executes no code. Legacy (pre-1.6,
non-zip) torch files need torch.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np

from rskeras.weights.errors import CheckpointError

# torch storage class name -> numpy dtype ("bfloat16" is widened to float32)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A flat numpy array holding one torch storage."""

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    flat = storage.array
    size = tuple(int(s) for s in size)
    if not size:
        return flat[storage_offset].copy()
    if any(s == 0 for s in size):
        return np.zeros(size, flat.dtype)
    strides = tuple(int(s) * flat.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=size, strides=strides, writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _InertNamespace:
    """Stand-in for ``argparse.Namespace`` (training arguments saved next to the weights,
    e.g. in DINO checkpoints): keeps the pickled attributes as a dict, runs no code."""

    def __setstate__(self, state):
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of a torch ``data.pkl`` that resolves only tensor-rebuild globals."""

    def __init__(self, file, zf: zipfile.ZipFile, root: str, path: str, big_endian: bool):
        super().__init__(file)
        self._zf = zf
        self._root = root
        self._path = path
        self._big_endian = big_endian
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("argparse", "Namespace"):
            return _InertNamespace
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to unpickle global {module}.{name} (only tensors and OrderedDicts "
            "are allowed without torch; install torch to read this file with torch.load(weights_only=True))"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if key not in self._storages:
            dtype = storage_type.dtype
            raw = self._zf.read(f"{self._root}data/{key}")
            if dtype == "bfloat16":
                array = np.frombuffer(raw, dtype=">u2" if self._big_endian else "<u2")
                array = bfloat16_to_float32(array.astype(np.uint16))
            else:
                dt = np.dtype(dtype).newbyteorder(">" if self._big_endian else "<")
                array = np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=False)
            self._storages[key] = _Storage(array)
        return self._storages[key]


def read_torch_zip(path: str) -> Any:
    """Loads a torch zip checkpoint without torch; tensors become numpy arrays."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: not a torch zip checkpoint (legacy torch format?); install torch to read it"
        ) from e
    with zf:
        pickles = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the torch zip, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        big_endian = False
        if f"{root}byteorder" in zf.namelist():
            big_endian = zf.read(f"{root}byteorder").decode().strip() == "big"
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), zf, root, path, big_endian)
        return unpickler.load()


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(obj, Mapping):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def load_torch_file(path: str, use_torch: bool | None = None) -> Any:
    """Loads a torch ``.pth`` / ``.ckpt`` object with every tensor as a numpy array.

    Args:
        path: local file.
        use_torch: True: ``torch.load(weights_only=True)`` (error if torch is missing);
            False: the pure-Python reader; None (default): torch when installed.
    """
    if use_torch is None:
        use_torch = _torch_available()
    if use_torch:
        import torch

        return _to_numpy(torch.load(path, map_location="cpu", weights_only=True))
    return read_torch_zip(path)
