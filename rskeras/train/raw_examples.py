"""The raw examples of a split as ``tf.data``: unit sources, crop expansion, examples.

A *unit* is the raw data of one window over a region (see ``rskeras.train.dataset``).
``RslearnDataModule.raw_dataset`` picks one source per mode and :func:`raw_examples`
turns it into ``(raw_inputs, metadata)`` examples::

    positions (shuffled / sampled) -> source.element: the unit + item-group choice
      (+ crop, for units of one example)
      -> [bad windows dropped, when a source only knows them once read]
      -> units of a whole window: one element per crop (crop_element)
      -> example: raw inputs sliced to the crop + metadata (materialize)

Sources (``UnitSource``): ``FileCacheSource`` (units decoded once into ``cache_dir``, read
in the graph), ``MemoryCacheSource`` (``use_in_memory_dataset``: decoded on first use,
kept in memory) and ``HostReadSource`` (no cache: rslearn's random draws on the host, then
only the chosen item groups over the crop are read; for the large windows of
``ModelDataset.read_crops_separately`` every crop is read on its own, clipped to the
window). A cached source reads whole windows
and draws crops and item groups in the graph, so random crops stay random every epoch.

Elements between the steps are dicts: ``unit``, ``choice`` (int32 ``[num_inputs]``: item
group per input, -1 all) and, per example, ``crop`` (int64 ``[4]``, window grid),
``crop_idx`` and ``num_crops``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from rskeras.models.time_inputs import TIMESTAMPS_SUFFIX
from rskeras.train import randomness
from rskeras.train.dataset import ModelDataset
from rskeras.train.host_calls import host_call
from rskeras.train.input_cache import MemoryCache, parse_unit


class WindowTable:
    """The split's windows as tensors, indexed by window index in the graph: ``group``,
    ``name`` (string) and ``bounds`` (int64 ``[n, 4]``)."""

    def __init__(self, md: ModelDataset):
        columns = md.window_table()
        self.group = tf.constant(columns["group"])
        self.name = tf.constant(columns["name"])
        self.bounds = tf.constant(columns["bounds"])


def slice_region(image: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, h: int | tf.Tensor, w: int | tf.Tensor) -> tf.Tensor:
    """``image[:, y0:y0+h, x0:x0+w]`` of a ``[T, H, W, C]`` tensor, zero-filled where the
    box leaves the image."""
    shape = tf.shape(image, out_type=tf.int64)
    H, W = shape[1], shape[2]
    h = tf.cast(h, tf.int64)
    w = tf.cast(w, tf.int64)
    ys, ye = tf.clip_by_value(y0, 0, H), tf.clip_by_value(y0 + h, 0, H)
    xs, xe = tf.clip_by_value(x0, 0, W), tf.clip_by_value(x0 + w, 0, W)
    part = image[:, ys:ye, xs:xe, :]
    top, left = tf.maximum(ys - y0, 0), tf.maximum(xs - x0, 0)
    bottom = tf.maximum(h - top - (ye - ys), 0)
    right = tf.maximum(w - left - (xe - xs), 0)
    zero = tf.zeros([], tf.int64)
    padded = tf.pad(part, [[zero, zero], [top, bottom], [left, right], [zero, zero]])
    return padded[:, :h, :w, :]


# The pipeline's map functions (tasks' process_inputs, transforms, unit slicing) are
# graph-mode TF without Python control flow on tensors (docs/design.md), so AutoGraph's
# source conversion, which took most of the time a pipeline takes to build, is skipped.
graph_fn = tf.autograph.experimental.do_not_convert


def py_unit(md: ModelDataset, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A graph function (args int64 scalars) calling ``fn(*python ints) -> unit`` on the host."""
    signature = md.unit_signature()
    flat_specs = tf.nest.flatten(signature)

    @host_call  # errors surfaced by surface_errors; no hang at exit (rskeras.train.host_calls)
    def call(*args):
        unit = fn(*[int(a.numpy()) for a in args])
        return [np.asarray(v) for v in tf.nest.flatten(unit)]

    def graph_fn(*args):
        flat = tf.py_function(call, list(args), [s.dtype for s in flat_specs])
        for tensor, spec in zip(flat, flat_specs):
            tensor.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(signature, flat)

    return graph_fn


def random_crop(md: ModelDataset, table: WindowTable, unit: dict[str, Any]) -> tf.Tensor:
    """A uniformly random crop of the unit's window (graph; spec §7.4)."""
    bounds = tf.gather(table.bounds, unit["window_index"])
    if md.crop_size is None:
        return bounds
    out = []
    for axis, k in ((0, md.crop_size[0]), (1, md.crop_size[1])):
        n = bounds[axis + 2] - bounds[axis]
        lo = tf.minimum(tf.constant(0, tf.int64), n - k)
        hi = tf.maximum(tf.constant(0, tf.int64), n - k)
        offset = randomness.uniform([], lo, hi + 1, dtype=tf.int64)
        out.append(bounds[axis] + offset)
    return tf.stack([out[0], out[1], out[0] + md.crop_size[0], out[1] + md.crop_size[1]])


def random_choice(md: ModelDataset, unit: dict[str, Any]) -> tf.Tensor:
    """A uniformly random item group per input (-1 for load_all_layers) (graph)."""
    out = []
    for key, di in md.inputs.items():
        if di.load_all_layers:
            out.append(tf.constant(-1, tf.int32))
            continue
        u = unit["inputs"][key]
        g = tf.shape(u["group_t"], out_type=tf.int32)[0] - 1 if di.data_type == "raster" else u["num_groups"]
        out.append(randomness.uniform([], 0, tf.maximum(g, 1), dtype=tf.int32))
    return tf.stack(out) if out else tf.zeros([1], tf.int32)


# ---- sources ----------------------------------------------------------------------------


class UnitSource:
    """Where the units of a split come from.

    Attributes:
        md: the split.
        deterministic: fixed crops and item groups (rslearn's seeded draws; val/test/predict).
        per_window: one unit per window, expanded into its crops later (all crops), instead
            of one unit per example.
        ids: what the positions of the index dataset stand for: window indexes
            (``per_window``) or example indexes, bad windows known up front left out.
        bad: windows known to be bad before reading.
        filters_lazily: bad windows are only known once read (they are filtered then, and
            the epoch length is unknown up front).
        table: the split's window table.
    """

    def __init__(self, md: ModelDataset, deterministic: bool, per_window: bool, bad: list[int] = (), filters_lazily: bool = False):
        self.md = md
        self.deterministic = deterministic
        self.per_window = per_window
        self.bad = list(bad)
        self.filters_lazily = filters_lazily
        self.table = WindowTable(md)
        bad_set = set(self.bad)
        self.example_window = np.asarray([e[0] for e in md.examples], np.int64)
        if per_window:
            self.ids = np.asarray([i for i in range(len(md.windows)) if i not in bad_set], np.int64)
        else:
            self.ids = np.asarray([i for i, wi in enumerate(self.example_window) if wi not in bad_set], np.int64)
        self._example_window_t = tf.constant(self.example_window)
        self._crop_idx_t = tf.constant(np.asarray([e[2] for e in md.examples], np.int64))
        self._num_crops_t = tf.constant(np.asarray([e[3] for e in md.examples], np.int64))

    def element(self, index: tf.Tensor) -> dict[str, Any]:  # pragma: no cover - interface
        """The element of window or example ``index`` (graph)."""
        raise NotImplementedError

    def _example_element(self, index: tf.Tensor, unit: dict[str, Any], crop: tf.Tensor, choice: tf.Tensor) -> dict[str, Any]:
        crop_idx = tf.gather(self._crop_idx_t, index)
        num_crops = tf.gather(self._num_crops_t, index)
        return {"unit": unit, "choice": choice, "crop": crop, "crop_idx": crop_idx, "num_crops": num_crops}


class CachedSource(UnitSource):
    """Whole-window units (every item group over the window's full read region) from a
    cache; crops and item groups are drawn in the graph (``load``: window index -> unit)."""

    def __init__(self, md: ModelDataset, deterministic: bool, bad: list[int] = (), filters_lazily: bool = False):
        super().__init__(md, deterministic, per_window=md.all_crops, bad=bad, filters_lazily=filters_lazily)
        det_bounds, det_choice = md.deterministic_params()
        self._det_bounds_t, self._det_choice_t = tf.constant(det_bounds), tf.constant(det_choice)
        first_example = np.zeros((max(len(md.windows), 1),), np.int64)
        for i in range(len(md.examples) - 1, -1, -1):
            first_example[md.examples[i][0]] = i
        self._first_example_t = tf.constant(first_example)

    def load(self, window_index: tf.Tensor) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def element(self, index):
        if self.per_window:
            unit = self.load(index)
            if self.deterministic:
                choice = tf.gather(self._det_choice_t, tf.gather(self._first_example_t, index))
            else:
                choice = random_choice(self.md, unit)
            return {"unit": unit, "choice": choice}
        unit = self.load(tf.gather(self._example_window_t, index))
        if self.deterministic:
            crop, choice = tf.gather(self._det_bounds_t, index), tf.gather(self._det_choice_t, index)
        else:
            crop, choice = random_crop(self.md, self.table, unit), random_choice(self.md, unit)
        return self._example_element(index, unit, crop, choice)


class FileCacheSource(CachedSource):
    """Units from the input cache files (``cache_dir``), read with ``tf.io.read_file``
    (``paths``: unit file per window; ``bad``: windows the cache build could not read)."""

    def __init__(self, md: ModelDataset, deterministic: bool, paths: list[str], bad: list[int]):
        super().__init__(md, deterministic, bad=bad)
        self._paths_t = tf.constant(paths)
        self._signature = md.unit_signature()

    def load(self, window_index):
        return parse_unit(tf.io.read_file(tf.gather(self._paths_t, window_index)), self._signature)


class MemoryCacheSource(CachedSource):
    """Units decoded on first use and kept in ``memory`` (``read``: window index -> unit,
    on the host); with ``skip_bad_windows`` bad windows are filtered once read."""

    def __init__(self, md: ModelDataset, deterministic: bool, memory: MemoryCache, read: Callable[[int], Any], skip_bad_windows: bool):
        super().__init__(md, deterministic, filters_lazily=skip_bad_windows)
        self._memory = memory
        self._read = read
        self._load = py_unit(md, self._unit)

    def _unit(self, window_index: int) -> Any:
        return self._memory.get(self.md, window_index, read=self._read)

    def load(self, window_index):
        return self._load(window_index)


class HostReadSource(UnitSource):
    """Units read on the host for every element, with rslearn's draws: random crops read
    only the chosen item groups over the crop; all crops read the window once (iterable
    style) or, with ``map_all_crops``, every crop from disk.

    Args:
        read: ``read(fn, *args)`` calls the ModelDataset reader ``fn`` (with retries).
        skip_bad_windows: bad windows give bad units, filtered once read.
    """

    def __init__(self, md: ModelDataset, deterministic: bool, read: Callable[..., Any], skip_bad_windows: bool):
        per_window = md.all_crops and not md.map_all_crops and not md.clip_crops
        super().__init__(md, deterministic, per_window=per_window, filters_lazily=skip_bad_windows)
        self._read = read
        self._host = py_unit(md, self._unit)

    def _unit(self, index: int, seed: int) -> Any:
        seed_or_none = None if seed < 0 else seed
        if self.per_window:
            return self.md.guarded(index, functools.partial(self._read, self.md.host_unit, index, seed_or_none))
        if self.md.clip_crops:
            reader = self.md.host_clipped_crop_unit
        else:
            reader = self.md.host_crop_unit if self.md.map_all_crops else self.md.host_unit
        return self.md.guarded(int(self.example_window[index]), functools.partial(self._read, reader, index, seed_or_none))

    def _seed(self, index: tf.Tensor) -> tf.Tensor:
        """rslearn's seed of the element's draws (the example index, or the window index for
        all crops); for train the element's seed when the run is seeded
        (``rskeras.train.randomness``), else -1 for fresh randomness."""
        if not self.deterministic:
            element = randomness.current_seed()
            return tf.constant(-1, tf.int64) if element is None else randomness.host_seed(element)
        if self.md.map_all_crops or self.md.clip_crops:
            return tf.gather(self._example_window_t, index)
        return index

    def element(self, index):
        unit = self._host(index, self._seed(index))
        if self.per_window:
            return {"unit": unit, "choice": unit["choice"]}
        return self._example_element(index, unit, unit["crop_bounds"], unit["choice"])


# ---- steps ------------------------------------------------------------------------------


def index_dataset(md: ModelDataset, ids: np.ndarray, per_window: bool, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    """``ids`` in epoch order: shuffled, or drawn by the split's sampler (per-example
    units; the sampler's weights are those of the examples ``ids``)."""
    n = len(ids)
    sampler = md.split.sampler
    if sampler is not None and not per_window:
        weights = sampler.example_weights(md)
        if weights is not None:
            weights = weights[ids]
        rng = np.random.default_rng(seed)

        def gen():
            yield from sampler.draw(n, rng, weights).astype(np.int64)

        positions = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.int64))
    else:
        positions = tf.data.Dataset.range(n)
        if shuffle:
            positions = positions.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ids_t = tf.constant(ids)
    return positions.map(functools.partial(tf.gather, ids_t))


def crop_element(element: dict[str, Any], k: tf.Tensor) -> dict[str, Any]:
    """Crop ``k`` of a whole-window element."""
    crops = element["unit"]["crops"]
    return {
        "unit": element["unit"],
        "choice": element["choice"],
        "crop": crops[k],
        "crop_idx": k,
        "num_crops": tf.shape(crops, out_type=tf.int64)[0],
    }


def materialize(md: ModelDataset, table: WindowTable, dataset_source: str, iterable_crops: bool, element: dict[str, Any], clipped: bool = False):
    """Raw inputs + metadata of one example from its element (graph).

    Args:
        iterable_crops: the unit is a whole window read once, its crops taken from it as
            rslearn's iterable all-crops dataset does: offsets ``int((crop - window) *
            factor)`` instead of on the factor's grid, vector features filtered by crop.
        clipped: the unit is the crop's part of the window (``read_crops_separately``):
            sliced as the whole window would be, features filtered by its one crop.
    """
    unit, crop_bounds, choice = element["unit"], element["crop"], element["choice"]
    raw: dict[str, Any] = {}
    region = unit["region"]
    for i, (key, di) in enumerate(md.inputs.items()):
        u = unit["inputs"][key]
        if di.data_type == "raster":
            image, gt, ts = u["image"], u["group_t"], u["timestamps"]
            g_count = tf.shape(gt, out_type=tf.int32)[0] - 1
            if di.load_all_layers:
                t0, t1 = gt[0], gt[-1]
            else:
                g = tf.maximum(choice[i], 0)
                t0 = tf.gather(gt, tf.minimum(g, g_count))
                t1 = tf.gather(gt, tf.minimum(g + 1, g_count))
            image = image[t0:t1]
            ts = ts[t0:t1]
            rf = di.resolution_factor
            n, d = rf.numerator, rf.denominator
            k_w = (crop_bounds[2] - crop_bounds[0]) * n // d
            k_h = (crop_bounds[3] - crop_bounds[1]) * n // d
            if iterable_crops or clipped:
                x0 = (crop_bounds[0] - region[0]) * n // d
                y0 = (crop_bounds[1] - region[1]) * n // d
            else:
                x0 = crop_bounds[0] * n // d - region[0] * n // d
                y0 = crop_bounds[1] * n // d - region[1] * n // d
            image = slice_region(image, y0, x0, k_h, k_w)
            size = md.example_size()  # every example's (w, h): static, so traced steps see fixed sizes
            hw = [None, None] if size is None else [size[1] * n // d, size[0] * n // d]
            image.set_shape([None, *hw, len(md.bands[key])])
            raw[key] = image
            if di.load_timestamps:
                raw[key + TIMESTAMPS_SUFFIX] = ts
        else:
            group = u["group"]
            if di.load_all_layers:
                keep = tf.ones_like(group, tf.bool)
            else:
                keep = tf.equal(group, tf.maximum(choice[i], 0))
            if iterable_crops:
                keep = keep & tf.gather(u["crop_mask"], element["crop_idx"])
            elif clipped:
                keep = keep & u["crop_mask"][0]
            raw[key] = {
                "bounds": tf.boolean_mask(u["bounds"], keep),
                "centroid": tf.boolean_mask(u["centroid"], keep),
                "geometry_type": tf.boolean_mask(u["geometry_type"], keep),
                "properties": {p: tf.boolean_mask(v, keep) for p, v in u["properties"].items()},
                "has_property": {p: tf.boolean_mask(v, keep) for p, v in u["has_property"].items()},
            }
    wi = unit["window_index"]
    metadata = {
        "window_index": wi,
        "window_group": tf.gather(table.group, wi),
        "window_name": tf.gather(table.name, wi),
        "window_bounds": tf.gather(table.bounds, wi),
        "crop_bounds": tf.cast(crop_bounds, tf.int64),
        "crop_idx": tf.cast(element["crop_idx"], tf.int64),
        "num_crops_in_window": tf.cast(element["num_crops"], tf.int64),
        "dataset_source": tf.constant(dataset_source),
    }
    return raw, metadata


def raw_examples(
    source: UnitSource,
    shuffle: bool,
    seed: int | None,
    parallel: int,
    crop_shuffle_buffer: int | None = None,
    dataset_source: str = "",
    run_seed: int | None = None,
    known_length: bool = True,
    reproducible: bool | None = None,
) -> tf.data.Dataset:
    """The ``(raw_inputs, metadata)`` examples of ``source``'s split.

    Args:
        shuffle: shuffle the units every epoch (samplers draw instead).
        seed: seed of the shuffling / sampling.
        parallel: parallel calls of the maps.
        crop_shuffle_buffer: shuffle the crops of whole-window units with this buffer.
        dataset_source: the ``dataset_source`` metadata.
        run_seed: the seed of the train split's per-element draws (``seed_everything``'s,
            or a fresh one per pipeline without it).
        reproducible: keep example order and seed the shuffle from ``run_seed`` (default:
            whether ``run_seed`` is given); false for a fresh, unlogged ``run_seed``.
        known_length: assert the epoch's length when it is known up front (not on a
            tf.data service worker, which produces only its share).
    """
    md = source.md
    # The train split draws from per-element seeds (``run_seed``); under seed_everything
    # (``reproducible``) it also keeps example order. val/test/predict draws are fixed by
    # the example index.
    if reproducible is None:
        reproducible = run_seed is not None
    ordered = source.deterministic or reproducible
    if seed is None and reproducible:
        seed = run_seed
    iterable_crops = md.all_crops and not md.map_all_crops and not md.clip_crops
    example = functools.partial(materialize, md, source.table, dataset_source, iterable_crops, clipped=md.clip_crops)
    ds = index_dataset(md, source.ids, source.per_window, shuffle, seed)
    element = source.element
    if run_seed is not None and not source.deterministic:
        ds = randomness.with_element_seeds(ds, run_seed, 1)
        element = randomness.seeded(element)
    ds = ds.map(graph_fn(element), num_parallel_calls=parallel, deterministic=ordered)
    if source.filters_lazily:
        ds = ds.filter(_unit_ok)
    if source.per_window:

        def expand(element):
            count = tf.shape(element["unit"]["crops"], out_type=tf.int64)[0]
            return tf.data.Dataset.range(count).map(graph_fn(lambda k: example(crop_element(element, k))))

        ds = ds.flat_map(graph_fn(expand))
        if crop_shuffle_buffer:
            ds = ds.shuffle(crop_shuffle_buffer, seed=seed)
    else:
        ds = ds.map(graph_fn(example), num_parallel_calls=parallel, deterministic=ordered)
    # Tell Keras the epoch length when it is known up front (no lazy bad-window
    # filtering): progress bars and steps work from the first epoch.
    if not source.filters_lazily and known_length:
        if source.per_window:
            count = int(sum(len(md.window_crops[w]) for w in source.ids))
        elif md.split.sampler is not None:
            count = md.split.sampler.num_samples or len(source.ids)
        else:
            count = len(source.ids)
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return ds


def _unit_ok(element: dict[str, Any]) -> tf.Tensor:
    return element["unit"]["ok"]
