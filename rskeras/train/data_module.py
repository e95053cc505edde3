"""RslearnDataModule: rslearn datasets as ``tf.data`` pipelines.

Per stage (train/val/test/predict) the module merges ``default_config`` with the stage's
SplitConfig, selects windows (``rskeras.train.dataset``), picks the source of the
split's units and builds::

    raw examples (rskeras.train.raw_examples: one source per mode, then crop expansion
    and examples)
      no cache:   indices -> [shuffle/sample] -> read unit (host, parallel py_function)
      file cache: indices -> [shuffle/sample] -> read unit file (graph: read_file+parse)
      memory:     indices -> [shuffle/sample] -> unit from a dict (py_function)
        -> drop bad windows (skip_bad_windows)
        -> choose item group + crop (graph; all crops: one element per crop of the window)
    -> task.process_inputs + passthrough + transforms (graph)
    -> padded_batch -> prefetch

A *unit* is the raw data of one window over a region (see ``rskeras.train.dataset``).
Elements are ``(inputs, targets)`` for Keras fit/evaluate, or
``(inputs, targets, metadata)`` with ``with_metadata=True`` (prediction, visualisation).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import tensorflow as tf

from rskeras.dataset.dataset import Dataset
from rskeras.models.time_inputs import TIMESTAMPS_SUFFIX, TIMESTEP_MASK_SUFFIX
from rskeras.train import randomness
from rskeras.train.dataset import DataInput, DataReadError, ModelDataset, SplitConfig
from rskeras.train.input_cache import InputCache, MemoryCache
from rskeras.train.raw_examples import FileCacheSource, HostReadSource, MemoryCacheSource, UnitSource, graph_fn, raw_examples
from rskeras.train.tasks.task import Task

logger = logging.getLogger(__name__)

STAGES = ("train", "val", "test", "predict")


def timed_inputs(md: ModelDataset) -> list[str]:
    """Passthrough raster inputs with ``load_timestamps``: their model inputs carry
    ``<key>_timestamps`` and ``<key>_timestep_mask``."""
    return [k for k, di in md.inputs.items() if di.passthrough and di.load_timestamps and di.data_type == "raster"]


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
        check_nan: rskeras extension: non-finite pixels (NaN, +-Inf) in raster inputs are
            bad input (error, or skipped window with ``skip_bad_windows``). Off by default,
            as rslearn passes NaN through (e.g. NaN elevation nodata for
            ElevationToSlopeAspect); a non-finite training loss then names the windows
            whose pixels were not finite.
        strict: rskeras extension: a raster that does not cover its whole window (wrong
            CRS or transform: the rest reads as nodata) is an error; by default a raster
            covering none of its window is a warning naming the window.
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
        strict: bool = False,
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
        self.strict = strict
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
                strict=self.strict,
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

    def num_examples(self, stage: str) -> int:
        """Examples per epoch of a stage (the sampler's ``num_samples`` when it sets one)."""
        md = self.model_dataset(stage)
        return md.split.sampler.num_samples if md.split.sampler is not None and md.split.sampler.num_samples else len(md)

    def num_batches(self, stage: str) -> int:
        return (self.num_examples(stage) + self.batch_size - 1) // self.batch_size

    def whole_batches(self, stage: str) -> bool:
        """Whether every batch of an epoch of ``stage`` is full, known before reading: the
        examples per epoch are a multiple of the batch size, and none can drop out on the way
        (no ``skip_bad_windows``, no tf.data service). Batching such a split with
        ``drop_remainder`` drops nothing and gives the batches a static size, which the traced
        steps then see: a Swin-v2-T train step has 20 % fewer graph nodes (a dynamic batch
        makes TensorFlow compute the gradients of broadcasting ops with run-time shapes), and
        its first call (trace + instantiation) costs 1.4 s less."""
        if self.skip_bad_windows or self.served(stage):
            return False
        n = self.num_examples(stage)
        return n > 0 and n % self.batch_size == 0

    @property
    def bad_windows(self) -> list[tuple[str, str]]:
        """(window, message) of every window skipped so far (``skip_bad_windows``)."""
        out = []
        for md in self._model_datasets.values():
            out.extend(md.bad_windows)
        return out

    def non_finite_windows(self, stage: str = "train", budget_s: float = 60.0) -> tuple[dict[str, int], int, bool]:
        """Windows of ``stage`` whose raster inputs hold non-finite pixels (NaN, +-Inf):
        ``(window -> pixel count, windows checked, whether all were)``. The windows read so
        far are known (``check_nan`` off: the reads record them); when none was recorded,
        the split's windows are read again, for at most ``budget_s`` seconds."""
        md = self.model_dataset(stage)
        if md.checks.non_finite:
            return dict(md.checks.non_finite), len(md.windows), True
        start = time.monotonic()
        for wi in range(len(md.windows)):
            if time.monotonic() - start > budget_s:
                return dict(md.checks.non_finite), wi, False
            try:
                md.cache_unit(wi)
            except Exception:  # noqa: BLE001 - unreadable windows are another error
                continue
        return dict(md.checks.non_finite), len(md.windows), True

    def cache_description(self, stage: str) -> dict[str, Any]:
        md = self.model_dataset(stage)
        return {
            "dataset": os.path.abspath(self.path),
            "inputs": {k: {**di.describe(), "resolved_bands": md.bands.get(k)} for k, di in md.inputs.items()},
            "property_names": md.property_names,
            "split": md.split.describe(),
            "map_all_crops": md.map_all_crops,
            "check_nan": md.check_nan,
            **({"strict": True} if md.checks.strict else {}),
        }

    def build_cache(self, stage: str, progress: bool = True) -> tuple[list[str], list[int]]:
        """Decodes the windows of ``stage`` missing from ``cache_dir`` (done automatically
        by :meth:`tf_dataset`); returns (unit file per window, bad window indexes)."""
        if not self.cache_dir:
            raise ValueError("build_cache needs cache_dir")
        if stage not in self._cache_files:
            md = self.model_dataset(stage)
            cache = InputCache(self.cache_dir, self.cache_description(stage))
            self._cache_files[stage] = cache.build(md, self.num_workers, progress, read=functools.partial(self._host_read, md.cache_unit))
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

    def _process_fn(self, md: ModelDataset):
        skip_targets = md.split.get_skip_targets()
        passthrough = [k for k, di in md.inputs.items() if di.passthrough]
        timed = timed_inputs(md)
        stamps = [k + TIMESTAMPS_SUFFIX for k in timed]
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
            # Every timestep of one example is real; padded_batch pads the mask with False
            # (the time-series contract of docs/design.md).
            for key in timed:
                input_dict[key + TIMESTEP_MASK_SUFFIX] = tf.ones(tf.shape(raw[key])[:1], tf.bool)
            for transform in transforms:
                input_dict, target_dict = transform(input_dict, target_dict)
            return input_dict, target_dict, metadata

        return process

    def padding_values(self, element_spec) -> Any:
        """Padding values for padded_batch: zeros, overridden by the task for targets;
        ``<key>_timestamps`` inputs pad with NaN (``<key>_timestep_mask`` with False)."""
        def zero(spec):
            return tf.constant(b"" if spec.dtype == tf.string else False if spec.dtype == tf.bool else 0, spec.dtype)

        zeros = tf.nest.map_structure(zero, element_spec)
        for key, value in zeros[0].items():
            if key.endswith(TIMESTAMPS_SUFFIX) and value.dtype.is_floating:
                zeros[0][key] = tf.constant(float("nan"), value.dtype)
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

    def _run_seed(self, stage: str) -> int | None:
        """The seed of the train pipeline's per-element draws (None for the other splits):
        ``seed_everything``'s, else a fresh one per pipeline. Without one the transforms
        drew from TF's stateful ops, which repeat the same draws every epoch once a
        global TF seed is set (``tf.random.set_seed`` outside ``seed_everything``)."""
        if stage != "train":
            return None
        seed = randomness.global_seed()
        return seed if seed is not None else randomness.fresh_seed()

    @staticmethod
    def _reproducible() -> bool:
        """Whether ``seed_everything`` fixed the train pipeline (order kept, draws fixed)."""
        return randomness.global_seed() is not None

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
        run_seed = self._run_seed(stage)
        process = graph_fn(self._process_fn(md))
        if run_seed is not None:  # reproducible transforms: per-element stateless draws
            ds = randomness.with_element_seeds(ds, run_seed, 2)
            process = graph_fn(randomness.seeded(self._process_fn(md)))
        ordered = not train or self._reproducible()
        ds = ds.map(process, num_parallel_calls=parallel, deterministic=ordered)
        if not with_metadata:
            ds = ds.map(lambda inputs, targets, metadata: (inputs, targets))
        if batch:
            ds = ds.padded_batch(
                self.batch_size, padding_values=self.padding_values(ds.element_spec), drop_remainder=drop_remainder
            )
        options = tf.data.Options()
        options.deterministic = ordered
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
        if self.served(stage):
            ds = self.data_service.distribute(ds, stage, md)
        return ds.prefetch(tf.data.AUTOTUNE)

    def served(self, stage: str) -> bool:
        """Whether ``stage`` runs on the tf.data service (``data_service``)."""
        return self.data_service is not None and stage in self.data_service.stages

    def raw_dataset(self, stage: str, shuffle: bool | None = None, seed: int | None = None) -> tf.data.Dataset:
        """The ``(raw_inputs, metadata)`` examples of a stage, before the task and the
        transforms (what rslearn's ``get_raw_inputs`` returns, per crop)."""
        md = self.model_dataset(stage)
        if len(md) == 0:
            done, elsewhere = md.selection_stats.get("skipped_completed", 0), md.selection_stats.get("other_shards", 0)
            if stage == "predict" and (done or elsewhere):
                from rskeras.train.sharding import NothingToPredict

                what = [f"{done} window(s) already have their output layer completed"] if done else []
                what += [f"{elsewhere} belong to other shards than {md.shard}"] if elsewhere else []
                raise NothingToPredict(f"nothing to predict in {self.path}: {' and '.join(what)}")
            raise DataReadError(
                f"the {stage} split of dataset {self.path} has no examples (check {stage}_config / default_config: "
                "groups, names, tags, and the windows' completed required inputs)"
            )
        train = stage == "train"
        shuffle = train if shuffle is None else shuffle
        source = self.unit_source(stage)
        if len(source.ids) == 0:
            raise DataReadError(f"the {stage} split of dataset {self.path} has no readable windows ({len(source.bad)} bad)")
        return raw_examples(
            source,
            shuffle=shuffle,
            seed=seed,
            parallel=self.num_workers if self.num_workers > 0 else tf.data.AUTOTUNE,
            crop_shuffle_buffer=max(4 * self.batch_size, 16) if train and shuffle else None,
            dataset_source=self.name or "",
            run_seed=self._run_seed(stage),
            reproducible=self._reproducible() if train else None,
            # A tf.data service worker runs only its splits of an epoch: no fixed count.
            known_length=not self.served(stage),
        )

    def unit_source(self, stage: str) -> UnitSource:
        """Where the units of ``stage`` come from: the input cache files (``cache_dir``),
        memory (``use_in_memory_dataset``) or host reads (see ``rskeras.train.raw_examples``)."""
        md = self.model_dataset(stage)
        deterministic = stage != "train"
        if md.clip_crops:  # large windows: crop by crop from disk, never whole (nor cached)
            return HostReadSource(md, deterministic, self._host_read, self.skip_bad_windows)
        if self.cache_dir:
            paths, bad = self.build_cache(stage)
            return FileCacheSource(md, deterministic, paths, bad)
        if self.use_in_memory_dataset:
            memory = self._memory.setdefault(stage, MemoryCache())
            read = functools.partial(self._host_read, md.cache_unit)
            return MemoryCacheSource(md, deterministic, memory, read, self.skip_bad_windows)
        return HostReadSource(md, deterministic, self._host_read, self.skip_bad_windows)
