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

:func:`write_torch_zip` writes a state dict in the same format without torch (what
``torch.save(state_dict, path)`` writes; e.g. OlmoEarth bundles' ``weights.pth``).
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
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


# ---- writing torch zip files without torch ------------------------------------------------

_NUMPY_TO_STORAGE = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if v != "bfloat16"}


class _Global:
    """A module-level name pickled as GLOBAL ``module name`` without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions to be callable
        raise NotImplementedError


class _StorageRef:
    """One tensor's storage, pickled as torch's persistent id."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _TensorRef:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())``."""

    def __init__(self, storage: _StorageRef):
        self.storage = storage

    def __reduce__(self):
        shape = tuple(int(s) for s in self.storage.array.shape)
        stride, acc = [], 1
        for size in reversed(shape):
            stride.insert(0, acc)
            acc *= size
        return (_Global("torch._utils", "_rebuild_tensor_v2"), (self.storage, 0, shape, tuple(stride), False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: save() can write GLOBALs by name
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            storage_type = _Global("torch", _NUMPY_TO_STORAGE[obj.array.dtype])
            return ("storage", storage_type, obj.key, "cpu", int(obj.array.size))
        return None


def write_torch_zip(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict in torch's zip format (as ``torch.save(state_dict, path)``;
    ``torch.load`` and :func:`read_torch_zip` read it) without torch. Written to a
    temporary file, then renamed."""
    path = os.fspath(path)
    storages = {}
    for i, (key, value) in enumerate(state_dict.items()):
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype not in _NUMPY_TO_STORAGE:
            raise CheckpointError(f"cannot store {key} of dtype {array.dtype} in a torch file")
        storages[str(key)] = _StorageRef(str(i), array)
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(collections.OrderedDict((k, _TensorRef(v)) for k, v in storages.items()))
    root = os.path.splitext(os.path.basename(path))[0] or "archive"
    tmp = path + ".tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{root}/data.pkl", buffer.getvalue())
            zf.writestr(f"{root}/byteorder", "little")
            for ref in storages.values():
                zf.writestr(f"{root}/data/{ref.key}", ref.array.astype(ref.array.dtype.newbyteorder("<")).tobytes())
            zf.writestr(f"{root}/version", "3\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
