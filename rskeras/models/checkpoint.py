"""Reading and writing PyTorch state dicts without (or with) torch, and restoring them.

Readers return ``{torch key: numpy array}``:

* ``.npz``: every array; golden-fixture files (keys ``w/<key>`` next to ``in/``, ``out/``)
  give their ``w/`` entries with the prefix removed.
* ``.safetensors``: parsed directly (8-byte header length, JSON header, raw
  little-endian data); no package needed.
* ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` (torch zip format): ``torch.load(...,
  weights_only=True)`` when torch is installed, otherwise a pure-Python reader: the zip's
  ``data.pkl`` is unpickled with an Unpickler that only resolves
  ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_parameter`` and the ``torch.<Type>Storage`` classes, and tensors are
  rebuilt from the raw ``data/<n>`` storages (offset, shape, strides). Anything else in
  the pickle is refused, so reading an untrusted file executes no code.
  Lightning checkpoints hold the model weights under ``"state_dict"`` with keys
  ``model.<module path>`` (``model.encoder.0.model.features.0.0.weight``).

:func:`apply_restore_config` reproduces rslearn's ``RestoreConfig`` key handling
(selector, ignore_prefixes, remap_prefixes), :func:`restore_into` loads the result
non-strictly (missing / unexpected keys reported by name, shape mismatches are errors).
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import logging
import os
import pickle
import struct
import zipfile
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # keep this module (and tools/convert_weights.py) free of TF imports
    from rskeras.models.torch_weights import LoadReport

logger = logging.getLogger(__name__)

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

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bfloat16",
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items() if v != "bfloat16"}


class CheckpointError(ValueError):
    """A weights file cannot be read; the message names the file and the problem."""


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


# ---- pure-Python torch zip reader -------------------------------------------------------


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
                array = _bfloat16_to_float32(array.astype(np.uint16))
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


# ---- safetensors ------------------------------------------------------------------------


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into numpy arrays (no package needed)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        header = json.loads(f.read(length))
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if dtype == "bfloat16":
            array = _bfloat16_to_float32(np.frombuffer(data[start:end], "<u2"))
        else:
            array = np.frombuffer(data[start:end], np.dtype(dtype).newbyteorder("<")).astype(dtype)
        out[key] = array.reshape(tuple(info["shape"]))
    return out


def write_safetensors(state_dict: Mapping[str, np.ndarray], f) -> None:
    """Writes arrays in the safetensors format to an open binary file."""
    header, chunks, offset = {}, [], 0
    for key, value in state_dict.items():
        array = np.asarray(value)
        if array.dtype not in _NUMPY_TO_SAFETENSORS:
            raise CheckpointError(f"cannot store {key} of dtype {array.dtype} in safetensors")
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": _NUMPY_TO_SAFETENSORS[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for raw in chunks:
        f.write(raw)


# ---- state dicts --------------------------------------------------------------------------


def select(obj: Any, selector: Sequence[str] | None, path: str = "<object>") -> Any:
    """Descends ``obj[k]`` for each key of ``selector`` (rslearn RestoreConfig.selector)."""
    for key in selector or ():
        if not isinstance(obj, Mapping) or key not in obj:
            available = sorted(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: selector key {key!r} not found (available: {available})")
        obj = obj[key]
    return obj


def as_state_dict(obj: Any, path: str = "<object>") -> dict[str, np.ndarray]:
    """Checks that ``obj`` is a flat mapping of names to arrays and returns it as a dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (mapping), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, (np.ndarray, np.generic)):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; use a selector to pick the state dict"
            )
        out[str(key)] = np.asarray(value)
    return out


def read_state_dict(path: str, selector: Sequence[str] | None = None, use_torch: bool | None = None) -> dict[str, np.ndarray]:
    """Reads ``{torch key: array}`` from a ``.npz``, ``.safetensors`` or torch file.

    Args:
        path: local file.
        selector: keys to descend into a torch object first (e.g. ``["state_dict"]``).
            Without one, a Lightning checkpoint's ``"state_dict"`` is selected.
        use_torch: see :func:`load_torch_file`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"weights file {path} does not exist")
    lower = path.lower()
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if any(k.startswith("w/") for k in keys):
                return {k[2:]: z[k] for k in keys if k.startswith("w/")}
            return {k: z[k] for k in keys}
    if lower.endswith(".safetensors"):
        return read_safetensors(path)
    obj = load_torch_file(path, use_torch=use_torch)
    if selector:
        obj = select(obj, selector, path)
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    return as_state_dict(obj, path)


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict as ``.npz`` or ``.safetensors`` (atomically: temp file + rename)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            if path.lower().endswith(".safetensors"):
                write_safetensors(state_dict, f)
            elif path.lower().endswith(".npz"):
                np.savez(f, **{k: np.asarray(v) for k, v in state_dict.items()})
            else:
                raise CheckpointError(f"{path}: output must end in .npz or .safetensors")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def apply_restore_config(
    state_dict: Any,
    selector: Sequence[str] | None = None,
    ignore_prefixes: Iterable[str] | None = None,
    remap_prefixes: Iterable[Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    """rslearn ``RestoreConfig`` key handling, in its order.

    1. descend ``selector`` keys into the loaded object;
    2. delete every key starting with any of ``ignore_prefixes``;
    3. for each ``[old, new]`` of ``remap_prefixes`` in order, rename every key starting
       with ``old`` to ``new + rest`` (a renamed key can be renamed again by a later pair).
    """
    obj = select(state_dict, selector)
    out = dict(as_state_dict(obj))
    for prefix in ignore_prefixes or ():
        for key in [k for k in out if k.startswith(prefix)]:
            del out[key]
    for pair in remap_prefixes or ():
        if len(pair) != 2:
            raise ValueError(f"remap_prefixes entries must be [old, new] pairs, got {pair!r}")
        old, new = pair
        for key in [k for k in out if k.startswith(old)]:
            out[new + key[len(old) :]] = out.pop(key)
    return out


def load_state_dict_nonstrict(model: Any, state_dict: Mapping[str, np.ndarray], prefix: str = "") -> LoadReport:
    """Loads what fits, logs missing / unexpected keys by name; shape mismatches raise."""
    from rskeras.models.torch_weights import load_torch_state_dict

    report = load_torch_state_dict(model, dict(state_dict), prefix=prefix, strict=False)
    if report.missing or report.unexpected:
        logger.warning("restore yielded missing_keys=%s and unexpected_keys=%s", report.missing, report.unexpected)
    return report


def restore_into(
    model: Any,
    path: str,
    selector: Sequence[str] | None = None,
    ignore_prefixes: Iterable[str] | None = None,
    remap_prefixes: Iterable[Sequence[str]] | None = None,
    use_torch: bool | None = None,
) -> LoadReport:
    """rslearn ``restore_config``: read ``path``, apply the key rules, load non-strictly.

    Keys are relative to the model (``encoder.0.model.features.0.0.weight``), as rslearn
    loads into the wrapped model rather than the Lightning module.
    """
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".npz", ".safetensors")):
        obj: Any = read_state_dict(path)
    else:
        obj = load_torch_file(path, use_torch=use_torch)
    state = apply_restore_config(obj, selector, ignore_prefixes, remap_prefixes)
    return load_state_dict_nonstrict(model, state)


def load_lightning_checkpoint(model: Any, path: str, strict: bool = True, use_torch: bool | None = None) -> LoadReport:
    """Loads an rslearn Lightning ``.ckpt`` (``state_dict`` keys ``model.*``) into a model
    (SingleTaskModel / MultiTaskModel) whose ``torch_params`` use rslearn's module tree."""
    from rskeras.models.torch_weights import load_torch_state_dict

    state = read_state_dict(path, selector=["state_dict"], use_torch=use_torch)
    return load_torch_state_dict(model, state, prefix="model", strict=strict)


def summarize(state_dict: Mapping[str, np.ndarray]) -> str:
    """One line per tensor: key, shape, dtype; then totals."""
    lines = [f"{k}  {tuple(v.shape)}  {v.dtype}" for k, v in state_dict.items()]
    total = sum(int(np.prod(v.shape)) for v in state_dict.values())
    lines.append(f"{len(state_dict)} tensors, {total:,} numbers")
    return "\n".join(lines)
