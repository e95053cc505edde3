"""RslearnDataModule: rslearn datasets as ``tf.data`` pipelines.

Per stage (train/val/test/predict) the module merges ``default_config`` with the stage's
SplitConfig, selects windows (``rskeras.train.dataset``), and builds one of::

    no cache:   indices -> [shuffle/sample] -> read unit (host, parallel py_function)
    file cache: indices -> [shuffle/sample] -> read unit file (graph: read_file+parse)
    memory:     indices -> [shuffle/sample] -> unit from a dict (py_function)
      -> drop bad windows (skip_bad_windows)
      -> choose item group + crop (graph; all crops: flat_map over the window's crops)
      -> task.process_inputs + passthrough + transforms (graph)
      -> padded_batch -> prefetch

A *unit* is the raw data of one window over a region (see ``rskeras.train.dataset``).
Elements are ``(inputs, targets)`` for Keras fit/evaluate, or
``(inputs, targets, metadata)`` with ``with_metadata=True`` (prediction, visualisation).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf

from rskeras.dataset.dataset import Dataset
from rskeras.train.dataset import DataInput, ModelDataset, SplitConfig
from rskeras.train.input_cache import InputCache, MemoryCache, parse_unit
from rskeras.train.tasks.task import Task

logger = logging.getLogger(__name__)

STAGES = ("train", "val", "test", "predict")


def _slice_region(image: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, h: int | tf.Tensor, w: int | tf.Tensor) -> tf.Tensor:
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


class RslearnDataModule:
    """Reads an rslearn dataset for training and prediction (rslearn ``RslearnDataModule``).

    Args:
        inputs: DataInputs by key (one named ``targets`` holds the task's labels).
        task: the task (its ``process_inputs`` runs as a tf.data map function).
        path: dataset root.
        path_options: accepted for compatibility (local paths only).
        batch_size: examples per batch (global batch under tf.distribute).
        num_workers: parallel reads (0 = let tf.data autotune).
        init_workers: accepted for compatibility.
        default_config: SplitConfig shared by all stages.
        train_config, val_config, test_config, predict_config: per-stage overrides.
        name: dataset name (SampleMetadata.dataset_source).
        retries: retry a failing example read this many times (5 s apart), then a last
            unguarded attempt.
        use_in_memory_dataset: keep decoded window units in memory after the first read
            (random crops and item groups are still drawn per epoch).
        use_in_memory_all_crops_dataset: deprecated alias of use_in_memory_dataset.
        use_map_all_crops_dataset: with load_all_crops, read every crop from disk (crops
            overhanging the window get stored pixels/nodata and vector features are not
            filtered by crop), as rslearn's map-style dataset; default: read the window
            once, zero-pad overhanging crops, keep the features intersecting each crop.
        index_mode: accepted for compatibility ("off", "use", "refresh").
        cache_dir: rskeras extension: cache decoded window units under this directory
            (see ``rskeras.train.input_cache``); off by default.
        skip_bad_windows: rskeras extension: skip windows that cannot be read (malformed
            metadata.json, missing or corrupt rasters, invalid GeoJSON, NaN pixels with
            ``check_nan``) with a warning naming them, instead of failing.
        check_nan: rskeras extension: NaN pixels in raster inputs are bad input (error,
            or skipped window with ``skip_bad_windows``). Off by default, as rslearn
            passes NaN through (e.g. NaN elevation nodata for ElevationToSlopeAspect).
        predict_shard: rskeras extension: ``"i/N"``, predict only shard i of N of the
            predict split's windows (``train.py predict --shard i/N`` or ``TF_CONFIG`` set
            it; see ``rskeras.train.sharding`` and docs/scale.md).
        large_window_pixels: rskeras extension: an all-crops predict split with a window
            of more pixels than this reads every crop from disk on its own (instead of
            the whole window at once) and ``RslearnWriter`` writes such windows block by
            block, so memory does not grow with the window (docs/scale.md). Default
            4096 x 4096.
        data_service: rskeras extension: run the input pipeline of some stages on a
            ``tf.data`` service (``tools/data_service.py`` starts the dispatcher and
            workers): ``{address: "grpc://host:port", processing_mode:
            distributed_epoch | parallel_epochs, job_name: null, stages: [train]}``. Needs
            ``cache_dir`` (the service workers run the graph-only cached pipeline).
    """

    def __init__(
        self,
        inputs: dict[str, DataInput],
        task: Task,
        path: str,
        path_options: dict[str, Any] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        init_workers: int = 0,
        default_config: SplitConfig | None = None,
        train_config: SplitConfig | None = None,
        val_config: SplitConfig | None = None,
        test_config: SplitConfig | None = None,
        predict_config: SplitConfig | None = None,
        name: str | None = None,
        retries: int = 0,
        use_in_memory_dataset: bool = False,
        use_in_memory_all_crops_dataset: bool | None = None,
        use_map_all_crops_dataset: bool = False,
        index_mode: str = "off",
        cache_dir: str | None = None,
        skip_bad_windows: bool = False,
        check_nan: bool = False,
        predict_shard: str | None = None,
        large_window_pixels: int = 4096 * 4096,
        data_service: dict[str, Any] | None = None,
    ):
        if not path:
            raise ValueError("path (the dataset root) is required")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if index_mode not in ("off", "use", "refresh"):
            raise ValueError(f"index_mode must be one of off/use/refresh, got {index_mode!r}")
        if use_in_memory_all_crops_dataset is not None:
            import warnings

            warnings.warn("use_in_memory_all_crops_dataset is deprecated, use use_in_memory_dataset", DeprecationWarning, stacklevel=2)
            use_in_memory_dataset = use_in_memory_all_crops_dataset
        if use_in_memory_dataset and cache_dir:
            raise ValueError("use_in_memory_dataset and cache_dir are exclusive: choose the memory or the disk cache")
        if large_window_pixels < 1:
            raise ValueError(f"large_window_pixels must be >= 1, got {large_window_pixels}")
        from rskeras.train.data_service import DataServiceConfig
        from rskeras.train.sharding import parse_shard

        self.predict_shard = parse_shard(predict_shard, "data.init_args.predict_shard")
        self.large_window_pixels = int(large_window_pixels)
        self.data_service = DataServiceConfig.parse(data_service) if data_service is not None else None
        if self.data_service is not None and not cache_dir:
            raise ValueError(
                "data_service needs cache_dir: the tf.data service workers run the input pipeline in other processes, "
                "which can run the graph-only pipeline of the input cache but not the Python GeoTIFF reads of the no-cache path"
            )
        self.inputs = dict(inputs)
        self.task = task
        self.path = str(path)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.name = name
        self.retries = retries
        self.use_in_memory_dataset = use_in_memory_dataset
        self.use_map_all_crops_dataset = use_map_all_crops_dataset
        self.cache_dir = cache_dir
        self.skip_bad_windows = skip_bad_windows
        self.check_nan = check_nan
        default = default_config or SplitConfig()
        self.split_configs = {
            stage: SplitConfig.merge_and_validate([default, cfg or SplitConfig()])
            for stage, cfg in (("train", train_config), ("val", val_config), ("test", test_config), ("predict", predict_config))
        }
        self._dataset: Dataset | None = None
        self._model_datasets: dict[str, ModelDataset] = {}
        self._memory: dict[str, MemoryCache] = {}
        self._cache_files: dict[str, tuple[list[str], list[int]]] = {}

    # ---- host side ----------------------------------------------------------------------

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = Dataset(self.path)
        return self._dataset

    def model_dataset(self, stage: str) -> ModelDataset:
        """The (cached) examples of a stage: 'train', 'val', 'test' or 'predict'."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}, expected one of {STAGES}")
        if stage not in self._model_datasets:
            start = time.time()
            md = ModelDataset(
                self.dataset,
                self.inputs,
                self.split_configs[stage],
                self.task.vector_property_names(),
                deterministic=stage != "train",
                dataset_source=self.name,
                skip_bad_windows=self.skip_bad_windows,
                check_nan=self.check_nan,
                map_all_crops=self.use_map_all_crops_dataset,
                shard=self.predict_shard if stage == "predict" else None,
            )
            if stage == "predict" and md.all_crops and self.large_windows(md):
                # Whole-window reads of these would need memory growing with the window.
                md.read_crops_separately()
            self._model_datasets[stage] = md
            logger.info("%s split: %d windows, %d examples (%.1fs)", stage, len(md.windows), len(md), time.time() - start)
        return self._model_datasets[stage]

    def large_windows(self, md: ModelDataset) -> list[int]:
        """Indexes of the windows of ``md`` with more than ``large_window_pixels`` pixels."""
        return [i for i, w in enumerate(md.windows) if w.width * w.height > self.large_window_pixels]

    def num_batches(self, stage: str) -> int:
        md = self.model_dataset(stage)
        n = md.split.sampler.num_samples if md.split.sampler is not None and md.split.sampler.num_samples else len(md)
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def bad_windows(self) -> list[tuple[str, str]]:
        """(window, message) of every window skipped so far (``skip_bad_windows``)."""
        out = []
        for md in self._model_datasets.values():
            out.extend(md.bad_windows)
        return out

    def cache_description(self, stage: str) -> dict[str, Any]:
        md = self.model_dataset(stage)
        return {
            "dataset": os.path.abspath(self.path),
            "inputs": {k: {**di.describe(), "resolved_bands": md.bands.get(k)} for k, di in md.inputs.items()},
            "property_names": md.property_names,
            "split": md.split.describe(),
            "map_all_crops": md.map_all_crops,
            "check_nan": md.check_nan,
        }

    def build_cache(self, stage: str, progress: bool = True) -> tuple[list[str], list[int]]:
        """Decodes the windows of ``stage`` missing from ``cache_dir`` (done automatically
        by :meth:`tf_dataset`); returns (unit file per window, bad window indexes)."""
        if not self.cache_dir:
            raise ValueError("build_cache needs cache_dir")
        if stage not in self._cache_files:
            md = self.model_dataset(stage)
            cache = InputCache(self.cache_dir, self.cache_description(stage))
            self._cache_files[stage] = cache.build(md, self.num_workers, progress, read=lambda i: self._host_read(md.cache_unit, i))
        return self._cache_files[stage]

    def _host_read(self, fn, *args):
        attempt = 0
        while True:
            try:
                return fn(*args)
            except Exception:
                if attempt >= self.retries:
                    raise
                attempt += 1
                logger.warning("read failed, retrying (%d/%d) in 5 s", attempt, self.retries, exc_info=True)
                time.sleep(5)

    # ---- graph pieces -------------------------------------------------------------------

    def _py_unit(self, md: ModelDataset, fn):
        """A graph function (args int64 scalars) calling ``fn(*python ints) -> unit``."""
        signature = md.unit_signature()
        flat_specs = tf.nest.flatten(signature)

        def call(*args):
            values = [int(a.numpy()) for a in args]
            unit = fn(*values)
            return [np.asarray(v) for v in tf.nest.flatten(unit)]

        def graph_fn(*args):
            flat = tf.py_function(call, list(args), [s.dtype for s in flat_specs])
            for tensor, spec in zip(flat, flat_specs):
                tensor.set_shape(spec.shape)
            return tf.nest.pack_sequence_as(signature, flat)

        return graph_fn

    def _materialize(self, md: ModelDataset, unit, crop_bounds, choice, crop_idx, num_crops, all_crops_slicing: bool, crop_filter: bool, mask_idx=None):
        """Raw inputs + metadata of one example from a unit (graph).

        Args:
            unit: the window unit.
            crop_bounds: int64 [4] crop (window grid).
            choice: int32 [num_inputs] candidate index per input (-1: all).
            all_crops_slicing: offsets computed as rslearn's all-crops datasets do
                (``int((crop - window) * factor)``) instead of on the factor's grid.
            crop_filter: keep only vector features intersecting crop ``crop_idx`` (row
                ``mask_idx`` of the unit's crop mask when given).
        """
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
                if all_crops_slicing:
                    x0 = (crop_bounds[0] - region[0]) * n // d
                    y0 = (crop_bounds[1] - region[1]) * n // d
                else:
                    x0 = crop_bounds[0] * n // d - region[0] * n // d
                    y0 = crop_bounds[1] * n // d - region[1] * n // d
                image = _slice_region(image, y0, x0, k_h, k_w)
                image.set_shape([None, None, None, len(md.bands[key])])
                raw[key] = image
                if di.load_timestamps:
                    raw[key + "_timestamps"] = ts
            else:
                group = u["group"]
                if di.load_all_layers:
                    keep = tf.ones_like(group, tf.bool)
                else:
                    keep = tf.equal(group, tf.maximum(choice[i], 0))
                if crop_filter:
                    keep = keep & tf.gather(u["crop_mask"], crop_idx if mask_idx is None else mask_idx)
                raw[key] = {
                    "bounds": tf.boolean_mask(u["bounds"], keep),
                    "centroid": tf.boolean_mask(u["centroid"], keep),
                    "geometry_type": tf.boolean_mask(u["geometry_type"], keep),
                    "properties": {p: tf.boolean_mask(v, keep) for p, v in u["properties"].items()},
                    "has_property": {p: tf.boolean_mask(v, keep) for p, v in u["has_property"].items()},
                }
        table = self._window_tables[id(md)]
        wi = unit["window_index"]
        metadata = {
            "window_index": wi,
            "window_group": tf.gather(table["group"], wi),
            "window_name": tf.gather(table["name"], wi),
            "window_bounds": tf.gather(table["bounds"], wi),
            "crop_bounds": tf.cast(crop_bounds, tf.int64),
            "crop_idx": tf.cast(crop_idx, tf.int64),
            "num_crops_in_window": tf.cast(num_crops, tf.int64),
            "dataset_source": tf.constant(self.name or ""),
        }
        return raw, metadata

    def _process_fn(self, md: ModelDataset):
        skip_targets = md.split.get_skip_targets()
        passthrough = [k for k, di in md.inputs.items() if di.passthrough]
        stamps = [k + "_timestamps" for k, di in md.inputs.items() if di.passthrough and di.load_timestamps and di.data_type == "raster"]
        transforms = list(md.split.transforms or [])
        task = self.task

        def process(raw, metadata):
            input_dict, target_dict = task.process_inputs(raw, metadata, load_targets=not skip_targets)
            # MultiTask nests per-task input dicts, which are empty for every rslearn task:
            # they carry nothing, and empty structures cannot be model inputs.
            input_dict = {k: v for k, v in input_dict.items() if not (isinstance(v, dict) and not v)}
            target_dict = dict(target_dict)
            for key in passthrough + stamps:
                input_dict[key] = raw[key]
            for transform in transforms:
                input_dict, target_dict = transform(input_dict, target_dict)
            return input_dict, target_dict, metadata

        return process

    def padding_values(self, element_spec) -> Any:
        """Padding values for padded_batch: zeros, overridden by the task for targets."""
        zeros = tf.nest.map_structure(lambda s: tf.constant(b"" if s.dtype == tf.string else 0, s.dtype), element_spec)
        overrides = self.task.target_padding_values()

        def apply(target_zeros, override):
            for key, value in override.items():
                if key in target_zeros:
                    if isinstance(value, dict):
                        apply(target_zeros[key], value)
                    else:
                        target_zeros[key] = tf.constant(value, target_zeros[key].dtype)

        apply(zeros[1], overrides)
        return zeros

    # ---- tf.data ------------------------------------------------------------------------

    def _index_dataset(
        self, md: ModelDataset, n: int, per_window: bool, shuffle: bool, seed: int | None, subset: np.ndarray | None = None
    ) -> tf.data.Dataset:
        """Positions 0..n-1 in epoch order: shuffled, or drawn by the split's sampler
        (``subset``: the example indexes behind the positions, for sampler weights)."""
        sampler = md.split.sampler
        if sampler is not None and not per_window:
            weights = sampler.example_weights(md)
            if weights is not None and subset is not None:
                weights = weights[subset]
            rng = np.random.default_rng(seed)

            def gen():
                yield from sampler.draw(n, rng, weights).astype(np.int64)

            return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.int64))
        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return ds

    def tf_dataset(
        self,
        stage: str,
        batch: bool = True,
        with_metadata: bool = False,
        shuffle: bool | None = None,
        seed: int | None = None,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """The tf.data pipeline of a stage.

        Args:
            stage: 'train', 'val', 'test' or 'predict'.
            batch: batch with ``batch_size`` (padded_batch).
            with_metadata: yield ``(inputs, targets, metadata)`` instead of ``(inputs, targets)``.
            shuffle: shuffle example order each epoch (default: only for train).
            seed: seed of the shuffling/sampling.
            drop_remainder: drop a last partial batch (the trainer does this for training
                under several replicas, where a batch smaller than the replica count would
                leave a replica without examples).
        """
        ds = self.raw_dataset(stage, shuffle=shuffle, seed=seed)
        md = self.model_dataset(stage)
        train = stage == "train"
        parallel = self.num_workers if self.num_workers > 0 else tf.data.AUTOTUNE
        ds = ds.map(self._process_fn(md), num_parallel_calls=parallel, deterministic=not train)
        if not with_metadata:
            ds = ds.map(lambda inputs, targets, metadata: (inputs, targets))
        if batch:
            ds = ds.padded_batch(
                self.batch_size, padding_values=self.padding_values(ds.element_spec), drop_remainder=drop_remainder
            )
        options = tf.data.Options()
        options.deterministic = not train
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
        if self.data_service is not None and stage in self.data_service.stages:
            ds = self.data_service.distribute(ds, stage, md)
        return ds.prefetch(tf.data.AUTOTUNE)

    def raw_dataset(self, stage: str, shuffle: bool | None = None, seed: int | None = None) -> tf.data.Dataset:
        """The ``(raw_inputs, metadata)`` examples of a stage, before the task and the
        transforms (what rslearn's ``get_raw_inputs`` returns, per crop)."""
        md = self.model_dataset(stage)
        if len(md) == 0:
            done, elsewhere = md.selection_stats.get("skipped_completed", 0), md.selection_stats.get("other_shards", 0)
            if stage == "predict" and (done or elsewhere):
                from rskeras.train.prediction_writer import NothingToPredict

                what = [f"{done} window(s) already have their output layer completed"] if done else []
                what += [f"{elsewhere} belong to other shards than {md.shard}"] if elsewhere else []
                raise NothingToPredict(f"nothing to predict in {self.path}: {' and '.join(what)}")
            raise ValueError(f"the {stage} split of dataset {self.path} has no examples (check groups/tags/required inputs)")
        train = stage == "train"
        shuffle = train if shuffle is None else shuffle
        deterministic = not train
        parallel = self.num_workers if self.num_workers > 0 else tf.data.AUTOTUNE
        if not hasattr(self, "_window_tables"):
            self._window_tables: dict[int, dict[str, tf.Tensor]] = {}
        self._window_tables[id(md)] = {k: tf.constant(v) for k, v in md.window_table().items()}
        all_crops = md.all_crops
        clipped = md.clip_crops  # crops read one by one, clipped to the window
        iterable_crops = all_crops and not md.map_all_crops and not clipped
        cached = (bool(self.cache_dir) or self.use_in_memory_dataset) and not clipped
        examples = md.examples
        ex_window = np.asarray([e[0] for e in examples], np.int64)
        ex_crop_idx = np.asarray([e[2] for e in examples], np.int64)
        ex_num = np.asarray([e[3] for e in examples], np.int64)

        # 1. Units.
        per_window = iterable_crops  # one unit per window, expanded into its crops later
        if cached:
            per_window = all_crops
            det_bounds, det_choice = md.deterministic_params()
            if self.cache_dir:
                paths, bad = self.build_cache(stage)
            else:
                paths, bad = None, []
            bad_set = set(bad)
            if per_window:
                ids = np.asarray([i for i in range(len(md.windows)) if i not in bad_set], np.int64)
                first_example = np.zeros((max(len(md.windows), 1),), np.int64)
                for i in range(len(examples) - 1, -1, -1):
                    first_example[examples[i][0]] = i
            else:
                ids = np.asarray([i for i in range(len(examples)) if examples[i][0] not in bad_set], np.int64)
            if len(ids) == 0:
                raise ValueError(f"the {stage} split of dataset {self.path} has no readable windows ({len(bad)} bad)")
            index_ds = self._index_dataset(md, len(ids), per_window, shuffle, seed, None if per_window else ids)
            ids_t = tf.constant(ids)
            index_ds = index_ds.map(lambda j: tf.gather(ids_t, j))
            ex_window_t = tf.constant(ex_window)
            signature = md.unit_signature()
            if paths is not None:
                paths_t = tf.constant(paths)

                def load(wi):
                    return parse_unit(tf.io.read_file(tf.gather(paths_t, wi)), signature)

            else:
                memory = self._memory.setdefault(stage, MemoryCache())
                load = self._py_unit(md, lambda wi: memory.get(md, wi, read=lambda i: self._host_read(md.cache_unit, i)))
            det_bounds_t, det_choice_t = tf.constant(det_bounds), tf.constant(det_choice)
            if per_window:
                first_t = tf.constant(first_example)

                def unit_fn(wi):
                    unit = load(wi)
                    choice = tf.gather(det_choice_t, tf.gather(first_t, wi)) if deterministic else self._random_choice(md, unit)
                    return unit, choice

            else:

                def unit_fn(i):
                    wi = tf.gather(ex_window_t, i)
                    unit = load(wi)
                    if deterministic:
                        crop, choice = tf.gather(det_bounds_t, i), tf.gather(det_choice_t, i)
                    else:
                        crop, choice = self._random_crop(md, unit), self._random_choice(md, unit)
                    return unit, crop, choice, i

            ds = index_ds.map(unit_fn, num_parallel_calls=parallel, deterministic=deterministic)
            if self.skip_bad_windows and paths is None:  # the memory cache decodes lazily
                ds = ds.filter(lambda unit, *rest: unit["ok"])
            kept = ids if per_window else np.asarray([examples[i][0] for i in ids], np.int64)
        else:
            if per_window:
                n = len(md.windows)
                read = lambda wi, seed: md.guarded(wi, lambda: self._host_read(md.host_unit, wi, None if seed < 0 else seed))  # noqa: E731
            elif md.map_all_crops or clipped:
                n = len(examples)
                crop_read = md.host_clipped_crop_unit if clipped else md.host_crop_unit
                read = lambda i, seed: md.guarded(  # noqa: E731
                    int(ex_window[i]), lambda: self._host_read(crop_read, i, None if seed < 0 else seed)
                )
            else:
                n = len(examples)
                read = lambda i, seed: md.guarded(int(ex_window[i]), lambda: self._host_read(md.host_unit, i, None if seed < 0 else seed))  # noqa: E731
            index_ds = self._index_dataset(md, n, per_window, shuffle, seed)
            ex_window_t = tf.constant(ex_window)
            if per_window:
                seeds = lambda i: i if deterministic else tf.constant(-1, tf.int64)  # noqa: E731
            elif md.map_all_crops or clipped:
                seeds = lambda i: tf.gather(ex_window_t, i) if deterministic else tf.constant(-1, tf.int64)  # noqa: E731
            else:
                seeds = lambda i: i if deterministic else tf.constant(-1, tf.int64)  # noqa: E731
            host = self._py_unit(md, read)

            if per_window:

                def unit_fn(wi):
                    unit = host(wi, seeds(wi))
                    return unit, unit["choice"]

            else:

                def unit_fn(i):
                    unit = host(i, seeds(i))
                    return unit, unit["crop_bounds"], unit["choice"], i

            ds = index_ds.map(unit_fn, num_parallel_calls=parallel, deterministic=deterministic)
            if self.skip_bad_windows:
                ds = ds.filter(lambda unit, *rest: unit["ok"])
            kept = np.arange(len(md.windows), dtype=np.int64) if per_window else ex_window

        # 2. Examples.
        ex_crop_idx_t, ex_num_t = tf.constant(ex_crop_idx), tf.constant(ex_num)
        if per_window:

            def expand(unit, choice):
                crops = unit["crops"]
                count = tf.shape(crops, out_type=tf.int64)[0]

                def one(k):
                    return self._materialize(
                        md, unit, crops[k], choice, k, count, all_crops_slicing=iterable_crops, crop_filter=iterable_crops
                    )

                return tf.data.Dataset.range(count).map(one)

            ds = ds.flat_map(expand)
            if train and shuffle:
                ds = ds.shuffle(max(4 * self.batch_size, 16), seed=seed)
        else:

            def example(unit, crop, choice, i):
                return self._materialize(
                    md,
                    unit,
                    crop,
                    choice,
                    tf.gather(ex_crop_idx_t, i),
                    tf.gather(ex_num_t, i),
                    all_crops_slicing=clipped,
                    crop_filter=clipped,
                    mask_idx=0 if clipped else None,
                )

            ds = ds.map(example, num_parallel_calls=parallel, deterministic=deterministic)
        # Tell Keras the epoch length when it is known up front (no lazy bad-window
        # filtering): progress bars and steps work from the first epoch.
        lazily_filtered = self.skip_bad_windows and (not cached or not self.cache_dir)
        # A tf.data service worker runs only its splits of the epoch: no fixed count.
        served = self.data_service is not None and stage in self.data_service.stages
        if not lazily_filtered and not served:
            if per_window:
                count = int(sum(len(md.window_crops[w]) for w in kept))
            elif md.split.sampler is not None:
                count = md.split.sampler.num_samples or len(kept)
            else:
                count = len(kept)
            ds = ds.apply(tf.data.experimental.assert_cardinality(count))
        return ds

    def _random_crop(self, md: ModelDataset, unit) -> tf.Tensor:
        """A uniformly random crop of the unit's window (graph; spec §7.4)."""
        wi = unit["window_index"]
        bounds = tf.gather(self._window_tables[id(md)]["bounds"], wi)
        if md.crop_size is None:
            return bounds
        out = []
        for axis, k in ((0, md.crop_size[0]), (1, md.crop_size[1])):
            n = bounds[axis + 2] - bounds[axis]
            lo = tf.minimum(tf.constant(0, tf.int64), n - k)
            hi = tf.maximum(tf.constant(0, tf.int64), n - k)
            offset = tf.random.uniform([], lo, hi + 1, dtype=tf.int64)
            out.append(bounds[axis] + offset)
        return tf.stack([out[0], out[1], out[0] + md.crop_size[0], out[1] + md.crop_size[1]])

    def _random_choice(self, md: ModelDataset, unit) -> tf.Tensor:
        """A uniformly random item group per input (-1 for load_all_layers) (graph)."""
        out = []
        for key, di in md.inputs.items():
            if di.load_all_layers:
                out.append(tf.constant(-1, tf.int32))
                continue
            u = unit["inputs"][key]
            g = tf.shape(u["group_t"], out_type=tf.int32)[0] - 1 if di.data_type == "raster" else u["num_groups"]
            out.append(tf.random.uniform([], 0, tf.maximum(g, 1), dtype=tf.int32))
        return tf.stack(out) if out else tf.zeros([1], tf.int32)
