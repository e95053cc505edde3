"""Input cache: decoded window units on disk, read back with pure TensorFlow ops.

The first time a split is iterated with ``cache_dir`` set, every window's *unit* (all
candidate item groups of every input over the window's full read region, already warped
to the window grid and cast to the DataInput dtype; see ``rskeras.train.dataset``) is
decoded once and written to ``<cache_dir>/<config key>/<window key>.unit``. Later epochs
and later runs read these files with ``tf.io.read_file`` + ``tf.io.decode_raw`` inside
the ``tf.data`` graph (no Python, no GIL, no GDAL, no protobuf parsing of pixel data),
then pick the random crop and item group per example in the graph, so random crops stay
random every epoch.

Why per-window files of serialized tensors and not ``Dataset.cache``/``snapshot``, one
TFRecord or a TFDS builder: the cache must be read in a *different random order every
epoch* (train shuffles indices, samplers draw with replacement), and ``cache(filename)``
/ ``snapshot`` replay the first epoch's order (shuffling after them needs a shuffle buffer
holding decoded windows); a sequential TFRecord has the same problem. One file per window
is random-access by index, is filled incrementally and in parallel, survives partial
epochs (``limit_train_batches``), and is invalidated per window: a window's key hashes the
paths, sizes and mtimes of its ``metadata.json`` and of the layer files its inputs read,
so editing one window re-decodes only that window. A TFDS builder adds a second copy of
the dataset description for no gain here.

Keys. ``config key`` = SHA-256 of the cache format version, the dataset path, every
DataInput's reading options (layers, bands, dtype, groups, resolution factor), the bands
resolved from the dataset config, the task's vector property names, and the split options
that shape units (crop size, all-crops mode, skip_targets, ...). ``window key`` = SHA-256
of the config key, the window's group/name/bounds and its file fingerprint. Files of other
windows found in the same config directory are deleted when the cache is refreshed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf

from rskeras.utils.fileio import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 2


MAX_RANK = 5
FIELDS = 3 + MAX_RANK  # offset, nbytes, rank, dims...


def header_size(num_components: int) -> int:
    return 8 * (1 + FIELDS * num_components)


def serialize_unit(unit: Any) -> bytes:
    """Packs a unit (nested dict of numpy arrays) into one byte string.

    Layout: an int64 header ``[n, (offset, nbytes, rank, dim0..dim4) * n]`` then every
    flattened component: numeric arrays as raw little-endian C-order bytes (read back
    with ``tf.io.decode_raw``, no protobuf parsing), string arrays as a serialized
    TensorProto. The header size is fixed by the number of components, which the graph
    knows from the unit signature.
    """
    flat = [np.asarray(v) for v in tf.nest.flatten(unit)]
    blobs = []
    for array in flat:
        if array.dtype.kind in ("S", "U", "O"):
            blobs.append(tf.make_tensor_proto(array.astype(object), dtype=tf.string, shape=array.shape).SerializeToString())
        else:
            if array.ndim > MAX_RANK:
                raise ValueError(f"input cache: arrays of rank > {MAX_RANK} are not supported, got shape {array.shape}")
            blobs.append(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    header = np.zeros((1 + FIELDS * len(flat),), np.int64)
    header[0] = len(flat)
    offset = header_size(len(flat))
    for i, (array, blob) in enumerate(zip(flat, blobs)):
        row = 1 + FIELDS * i
        header[row : row + 3] = (offset, len(blob), array.ndim)
        header[row + 3 : row + 3 + array.ndim] = array.shape
        offset += len(blob)
    return header.astype("<i8").tobytes() + b"".join(blobs)


def parse_unit(data: tf.Tensor, signature: Any) -> Any:
    """Graph inverse of :func:`serialize_unit` for a unit with the given TensorSpecs."""
    specs = tf.nest.flatten(signature)
    header = tf.io.decode_raw(tf.strings.substr(data, 0, header_size(len(specs))), tf.int64, little_endian=True)
    flat = []
    for i, spec in enumerate(specs):
        row = 1 + FIELDS * i
        blob = tf.strings.substr(data, header[row], header[row + 1])
        if spec.dtype == tf.string:
            t = tf.io.parse_tensor(blob, tf.string)
        else:
            rank = spec.shape.rank
            t = tf.reshape(tf.io.decode_raw(blob, spec.dtype, little_endian=True), header[row + 3 : row + 3 + rank])
        t.set_shape(spec.shape)
        flat.append(t)
    return tf.nest.pack_sequence_as(signature, flat)


def config_key(description: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class InputCache:
    """Per-window unit files of one split configuration.

    Args:
        cache_dir: root directory of the cache.
        description: JSON-able description of everything that shapes a unit (see the
            module docstring); hashed into the config key.
    """

    def __init__(self, cache_dir: str, description: dict[str, Any]):
        self.key = config_key(description)
        self.directory = os.path.join(os.path.abspath(cache_dir), self.key[:24])
        self.description = description

    def window_key(self, label: str, bounds: tuple[int, ...], fingerprint: str) -> str:
        return hashlib.sha256(f"{self.key}|{label}|{list(bounds)}|{fingerprint}".encode()).hexdigest()

    def unit_path(self, window_key: str) -> str:
        return os.path.join(self.directory, window_key + ".unit")

    def bad_path(self, window_key: str) -> str:
        return os.path.join(self.directory, window_key + ".bad")

    def build(self, md, num_workers: int = 0, progress: bool = True, read=None) -> tuple[list[str], list[int]]:
        """Makes sure every window of ``md`` (a ModelDataset) is cached.

        Args:
            md: the ModelDataset of the split.
            num_workers: decoding threads (0: one per CPU).
            progress: show a progress bar.
            read: ``read(window_idx) -> unit`` (default ``md.cache_unit``; the data module
                passes one with its retries).

        Returns (unit file path per window, indexes of windows skipped as bad). Raises
        the read error of a bad window unless ``md.skip_bad_windows``.
        """
        read = read or md.cache_unit
        os.makedirs(self.directory, exist_ok=True)
        atomic_write_text(os.path.join(self.directory, "config.json"), json.dumps(self.description, indent=1, default=str))
        keys = [self.window_key(w.label, w.bounds, md.window_file_fingerprint(i)) for i, w in enumerate(md.windows)]
        paths = [self.unit_path(k) for k in keys]
        bad: list[int] = []
        todo = []
        for i, k in enumerate(keys):
            if os.path.exists(self.bad_path(k)) and md.skip_bad_windows:
                bad.append(i)
                with open(self.bad_path(k)) as f:
                    md.bad_windows.append((md.windows[i].label, f.read()))
            elif not os.path.exists(paths[i]):
                todo.append(i)
        if bad:
            logger.warning("input cache: %d bad windows skipped (recorded in %s)", len(bad), self.directory)
        if todo:
            workers = num_workers if num_workers > 0 else max(os.cpu_count() or 1, 1)
            logger.info("input cache: decoding %d of %d windows into %s", len(todo), len(keys), self.directory)
            bar = None
            if progress:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=len(todo), desc="caching windows", unit="win")
                except ImportError:
                    bar = None

            def work(i: int) -> tuple[int, str | None]:
                unit = md.guarded(i, lambda: read(i))
                if not bool(unit["ok"]):
                    atomic_write_text(self.bad_path(keys[i]), md.bad_windows[-1][1] if md.bad_windows else "bad window")
                    return i, "bad"
                atomic_write_bytes(paths[i], serialize_unit(unit))
                return i, None

            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for i, status in pool.map(work, todo):
                    if status == "bad":
                        bad.append(i)
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
        self.prune(set(keys))
        return paths, sorted(bad)

    def prune(self, keep: set[str]) -> None:
        """Deletes unit/bad files of windows no longer in the split."""
        for name in os.listdir(self.directory):
            stem, ext = os.path.splitext(name)
            if ext in (".unit", ".bad") and stem not in keep:
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass


class MemoryCache:
    """The in-memory variant (``use_in_memory_dataset``): units kept in a dict, filled on
    first use."""

    def __init__(self):
        self.units: dict[int, Any] = {}

    def get(self, md, window_idx: int, read=None) -> Any:
        unit = self.units.get(window_idx)
        if unit is None:
            read = read or md.cache_unit
            unit = md.guarded(window_idx, lambda: read(window_idx))
            self.units[window_idx] = unit
        return unit
