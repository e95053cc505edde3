"""State dicts (``{torch key: numpy array}``) in files, and rslearn's key rules.

Readers:

* ``.npz``: every array; golden-fixture files (keys ``w/<key>`` next to ``in/``, ``out/``)
  give their ``w/`` entries with the prefix removed.
* ``.safetensors``: parsed directly (8-byte header length, JSON header, raw
  little-endian data); no package needed.
* torch files (``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin``): see
  :mod:`rskeras.weights.torch_pickle`. Lightning checkpoints hold the model weights under
  ``"state_dict"`` with keys ``model.<module path>``
  (``model.encoder.0.model.features.0.0.weight``).

:func:`apply_key_rules` reproduces rslearn's ``RestoreConfig`` key handling (selector,
ignore_prefixes, remap_prefixes); :func:`read_with_key_rules` reads a file and applies
them (``restore_config`` and ``tools/convert_weights.py``). numpy only: no TensorFlow.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rskeras.weights.errors import CheckpointError
from rskeras.weights.torch_pickle import bfloat16_to_float32, load_torch_file

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



# ---- safetensors ------------------------------------------------------------------------


# The largest safetensors header accepted (the JSON index of the tensors).
MAX_SAFETENSORS_HEADER = 100 * 2**20


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into numpy arrays (no package needed).

    The header is validated against the file before anything is allocated: its length,
    every tensor's dtype, shape and ``data_offsets`` (inside the data section, matching
    the shape); a malformed file raises CheckpointError naming the file and the tensor.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: too short for a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(f"{path}: malformed safetensors file: the header claims {length} bytes, the file has {size - 8} after the length field")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: malformed safetensors header: not a JSON object")
        data_size = size - 8 - length
        entries = []
        for key, info in header.items():
            if key == "__metadata__":
                continue
            entries.append((key, _safetensors_entry(path, key, info, data_size)))
        data = f.read(data_size)
    out = {}
    for key, (dtype, shape, start, end) in entries:
        if dtype == "bfloat16":
            array = bfloat16_to_float32(np.frombuffer(data[start:end], "<u2"))
        else:
            array = np.frombuffer(data[start:end], np.dtype(dtype).newbyteorder("<")).astype(dtype)
        out[key] = array.reshape(shape)
    return out


def _safetensors_entry(path: str, key: str, info: Any, data_size: int) -> tuple[Any, tuple[int, ...], int, int]:
    where = f"{path}: tensor {key!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: malformed header entry {info!r:.80}")
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: malformed shape {shape!r:.80}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: malformed data_offsets {offsets!r:.80}")
    start, end = offsets
    if end > data_size:
        raise CheckpointError(f"{where}: data_offsets [{start}, {end}] reach past the end of the file's {data_size} data bytes (truncated or corrupt file)")
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    count = 1
    for d in shape:
        count *= d
    if count * itemsize != end - start:
        raise CheckpointError(f"{where}: shape {shape} of {info['dtype']} needs {count * itemsize} bytes, data_offsets give {end - start}")
    return dtype, tuple(shape), start, end


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
        return read_npz(path)
    if lower.endswith(".safetensors"):
        return read_safetensors(path)
    obj = load_torch_file(path, use_torch=use_torch)
    return as_state_dict(select(obj, selector or _lightning_selector(obj), path), path)


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (``w/``-prefixed golden-fixture entries without the
    prefix). Pickled object arrays are never loaded: they are an error naming the entry."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if any(k.startswith("w/") for k in keys):
                keys = [k for k in keys if k.startswith("w/")]
            out = {}
            for k in keys:
                try:
                    out[k[2:] if k.startswith("w/") else k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e) or "Object arrays" in str(e):
                        raise CheckpointError(
                            f"{path}: entry {k!r} is an object array (pickled Python objects), which rskeras never "
                            "loads: save plain numeric arrays"
                        ) from None
                    raise CheckpointError(f"{path}: entry {k!r} cannot be read: {e}") from None
            return out
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"cannot read {path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def _lightning_selector(obj: Any) -> list[str]:
    """``["state_dict"]`` for a Lightning checkpoint (a mapping with a mapping under
    ``"state_dict"``), else no selector."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return ["state_dict"]
    return []


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


def apply_key_rules(
    state_dict: Any,
    selector: Sequence[str] | None = None,
    ignore_prefixes: Iterable[str] | None = None,
    remap_prefixes: Iterable[Sequence[str]] | None = None,
    path: str = "<object>",
) -> dict[str, np.ndarray]:
    """rslearn ``RestoreConfig`` key handling, in its order.

    1. descend ``selector`` keys into the loaded object;
    2. delete every key starting with any of ``ignore_prefixes``;
    3. for each ``[old, new]`` of ``remap_prefixes`` in order, rename every key starting
       with ``old`` to ``new + rest`` (a renamed key can be renamed again by a later pair).
    """
    obj = select(state_dict, selector, path)
    out = dict(as_state_dict(obj, path))
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


def read_with_key_rules(
    path: str,
    selector: Sequence[str] | None = None,
    ignore_prefixes: Iterable[str] | None = None,
    remap_prefixes: Iterable[Sequence[str]] | None = None,
    use_torch: bool | None = None,
    lightning_state_dict: bool = False,
) -> dict[str, np.ndarray]:
    """Reads ``path`` and applies :func:`apply_key_rules` to what it holds.

    ``.npz`` / ``.safetensors`` files are read as flat state dicts; torch files as the whole
    saved object, into which ``selector`` descends. With ``lightning_state_dict`` and no
    selector, a Lightning checkpoint's ``"state_dict"`` is selected (the converter's
    default; rslearn's restore_config selects nothing unless told).
    """
    path = os.fspath(path)
    if path.lower().endswith((".npz", ".safetensors")):
        obj: Any = read_state_dict(path)
    else:
        obj = load_torch_file(path, use_torch=use_torch)
        if selector is None and lightning_state_dict:
            selector = _lightning_selector(obj)
    return apply_key_rules(obj, selector, ignore_prefixes, remap_prefixes, path)


def summarize(state_dict: Mapping[str, np.ndarray]) -> str:
    """One line per tensor: key, shape, dtype; then totals."""
    lines = [f"{k}  {tuple(v.shape)}  {v.dtype}" for k, v in state_dict.items()]
    total = sum(int(np.prod(v.shape)) for v in state_dict.values())
    lines.append(f"{len(state_dict)} tensors, {total:,} numbers")
    return "\n".join(lines)
