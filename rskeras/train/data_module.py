"""RslearnDataModule: rslearn datasets as ``tf.data`` pipelines.

Per stage (train/val/test/predict) the module merges ``default_config`` with the stage's
SplitConfig, selects windows (``rskeras.train.dataset``), and builds::

    Dataset.range(n) -> [shuffle/sample] -> read (numpy, parallel py_function)
      -> task.process_inputs + passthrough + transforms (graph) -> padded_batch -> prefetch

Elements are ``(inputs, targets)`` for Keras fit/evaluate, or
``(inputs, targets, metadata)`` with ``with_metadata=True`` (prediction, visualisation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import tensorflow as tf

from rskeras.dataset.dataset import Dataset
from rskeras.train.dataset import DataInput, ModelDataset, SplitConfig
from rskeras.train.model_context import metadata_signature
from rskeras.train.tasks.task import Task
from rskeras.utils.feature import vector_tensor_signature

logger = logging.getLogger(__name__)

STAGES = ("train", "val", "test", "predict")


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
        retries: retry a failing example read this many times (5 s apart).
        use_in_memory_dataset, use_map_all_crops_dataset, index_mode: accepted for
            compatibility (tf.data plays these roles).
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
    ):
        if not path:
            raise ValueError("path (the dataset root) is required")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inputs = dict(inputs)
        self.task = task
        self.path = str(path)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.name = name
        self.retries = retries
        default = default_config or SplitConfig()
        self.split_configs = {
            "train": default.merged(train_config or SplitConfig()),
            "val": default.merged(val_config or SplitConfig()),
            "test": default.merged(test_config or SplitConfig()),
            "predict": default.merged(predict_config or SplitConfig()),
        }
        self._dataset: Dataset | None = None
        self._model_datasets: dict[str, ModelDataset] = {}

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
            self._model_datasets[stage] = ModelDataset(
                self.dataset,
                self.inputs,
                self.split_configs[stage],
                self.task.vector_property_names(),
                deterministic=stage != "train",
                dataset_source=self.name,
            )
            logger.info("%s split: %d examples (%.1fs)", stage, len(self._model_datasets[stage]), time.time() - start)
        return self._model_datasets[stage]

    def num_batches(self, stage: str) -> int:
        n = len(self.model_dataset(stage))
        return (n + self.batch_size - 1) // self.batch_size

    # ---- tf.data ------------------------------------------------------------------------

    def raw_signature(self, stage: str) -> tuple[dict[str, Any], dict[str, tf.TensorSpec]]:
        """TensorSpecs of (raw inputs, metadata) of one example of ``stage``."""
        md = self.model_dataset(stage)
        raw = {}
        for key, di in md.inputs.items():
            if di.data_type == "raster":
                dtype = tf.float32 if di.numpy_dtype() == np.float32 else tf.int32
                raw[key] = tf.TensorSpec([None, None, None, len(md.bands[key])], dtype)
            else:
                raw[key] = vector_tensor_signature(md.property_names)
        return raw, metadata_signature()

    def _reader(self, stage: str):
        md = self.model_dataset(stage)
        signature = self.raw_signature(stage)
        flat_specs = tf.nest.flatten(signature)

        def read(index, seed):
            index = int(index.numpy())
            seed = int(seed.numpy())
            attempt = 0
            while True:
                try:
                    raw, metadata = md.read_example(index, None if seed < 0 else seed)
                    break
                except Exception:
                    if attempt >= self.retries:
                        raise
                    attempt += 1
                    time.sleep(5)
            flat = tf.nest.flatten((raw, metadata))
            return [np.asarray(v) for v in flat]

        def read_fn(index, seed):
            flat = tf.py_function(read, [index, seed], [s.dtype for s in flat_specs])
            for tensor, spec in zip(flat, flat_specs):
                tensor.set_shape(spec.shape)
            return tf.nest.pack_sequence_as(signature, flat)

        return read_fn

    def _process_fn(self, stage: str):
        md = self.model_dataset(stage)
        skip_targets = md.split.get_skip_targets()
        passthrough = [k for k, di in md.inputs.items() if di.passthrough]
        transforms = list(md.split.transforms or [])
        task = self.task

        def process(raw, metadata):
            input_dict, target_dict = task.process_inputs(raw, metadata, load_targets=not skip_targets)
            # MultiTask nests per-task input dicts, which are empty for every rslearn task:
            # they carry nothing, and empty structures cannot be model inputs.
            input_dict = {k: v for k, v in input_dict.items() if not (isinstance(v, dict) and not v)}
            target_dict = dict(target_dict)
            for key in passthrough:
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

    def tf_dataset(
        self,
        stage: str,
        batch: bool = True,
        with_metadata: bool = False,
        shuffle: bool | None = None,
        seed: int | None = None,
    ) -> tf.data.Dataset:
        """The tf.data pipeline of a stage.

        Args:
            stage: 'train', 'val', 'test' or 'predict'.
            batch: batch with ``batch_size`` (padded_batch).
            with_metadata: yield ``(inputs, targets, metadata)`` instead of ``(inputs, targets)``.
            shuffle: shuffle example order each epoch (default: only for train).
            seed: seed of the shuffling/sampling.
        """
        md = self.model_dataset(stage)
        n = len(md)
        if n == 0:
            raise ValueError(f"the {stage} split of dataset {self.path} has no examples (check groups/tags/required inputs)")
        train = stage == "train"
        shuffle = train if shuffle is None else shuffle
        sampler = md.split.sampler
        if sampler is not None and train:
            ds = self._sampled_indices(md, sampler, seed)
        else:
            ds = tf.data.Dataset.range(n)
            if shuffle:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        # Per-example seed: the index for deterministic splits, -1 (fresh randomness) for train.
        ds = ds.map(lambda i: (i, tf.constant(-1, tf.int64) if train else i))
        parallel = self.num_workers if self.num_workers > 0 else tf.data.AUTOTUNE
        ds = ds.map(self._reader(stage), num_parallel_calls=parallel, deterministic=not train)
        ds = ds.map(self._process_fn(stage), num_parallel_calls=parallel, deterministic=not train)
        if not with_metadata:
            ds = ds.map(lambda inputs, targets, metadata: (inputs, targets))
        if batch:
            ds = ds.padded_batch(self.batch_size, padding_values=self.padding_values(ds.element_spec))
        options = tf.data.Options()
        options.deterministic = not train
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _sampled_indices(self, md: ModelDataset, sampler, seed: int | None) -> tf.data.Dataset:
        """Indices drawn by a sampler factory, redrawn each epoch."""
        n = len(md)
        window_weights = sampler.weights(md.windows)
        weights = None if window_weights is None else np.asarray([window_weights[w] for w, _, _, _ in md.examples])
        count = sampler.num_samples or n
        rng = np.random.default_rng(seed)

        def gen():
            p = None if weights is None else weights / weights.sum()
            yield from rng.choice(n, size=count, replace=sampler.replacement, p=p).astype(np.int64)

        return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.int64))

    def input_specs(self, stage: str = "train") -> dict[str, tf.TensorSpec]:
        """Specs of the batched model-input dict (passthrough + task inputs)."""
        spec = self.tf_dataset(stage, batch=True).element_spec[0]
        return spec
