"""Trainer: the ``trainer:`` section of a config, running fit/validate/test/predict.

Lightning's Trainer arguments that configs use map onto Keras ``fit``/``evaluate``:
``max_epochs`` -> epochs, ``limit_train_batches`` -> steps_per_epoch,
``limit_val_batches`` -> validation_steps, ``check_val_every_n_epoch`` -> validation_freq,
``callbacks`` -> Keras callbacks (rskeras classes or mapped Lightning ones).
An argument rskeras cannot honour is an error, never silently ignored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.train.callbacks.checkpointing import BestLastCheckpoint, ManagedBestLastCheckpoint
from rskeras.train.data_module import RslearnDataModule
from rskeras.train.lightning_module import RslearnLightningModule
from rskeras.utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsFileLogger(keras.callbacks.Callback):
    """Writes every epoch's logs to ``metrics.csv`` and ``metrics.json`` (atomically)."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, logs=None):
        path = os.path.join(self.directory, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                self.rows = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        lines = [",".join(keys)] + [",".join("" if k not in r else repr(r[k]) for k in keys) for r in self.rows]
        atomic_write_text(os.path.join(self.directory, "metrics.csv"), "\n".join(lines) + "\n")
        atomic_write_text(os.path.join(self.directory, "metrics.json"), json.dumps(self.rows, indent=2))


class Trainer:
    """Runs training and evaluation (Lightning ``Trainer`` arguments).

    Args:
        max_epochs: epochs to train (default 1000 like Lightning... capped by config).
        callbacks: Keras callbacks (rskeras checkpointing, writers, mapped Lightning ones).
        default_root_dir: run directory for checkpoints, logs and exports
            (default ``runs/<config name>``, set by the CLI).
        devices: "auto" (all visible GPUs, or logical CPU devices), a count or a list.
        accelerator: "auto", "gpu" or "cpu".
        logger: write TensorBoard logs (true) or not (false).
        enable_progress_bar: Keras progress bar.
        enable_checkpointing: add a default BestLastCheckpoint(val_loss, min) when no
            checkpoint callback is configured.
        limit_train_batches, limit_val_batches, limit_test_batches, limit_predict_batches:
            int number of batches (or a float fraction) per epoch.
        check_val_every_n_epoch: validation frequency.
        num_sanity_val_steps, log_every_n_steps, enable_model_summary: accepted (no effect).
    """

    def __init__(
        self,
        max_epochs: int = 1000,
        callbacks: list[Any] | None = None,
        default_root_dir: str | None = None,
        devices: int | str | list[int] = "auto",
        accelerator: str = "auto",
        logger: bool = True,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        check_val_every_n_epoch: int = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_model_summary: bool | None = None,
    ):
        if max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {max_epochs}")
        self.max_epochs = max_epochs
        self.callbacks = list(callbacks or [])
        self.default_root_dir = default_root_dir
        self.devices = devices
        self.accelerator = accelerator
        self.logger = logger
        self.enable_progress_bar = enable_progress_bar
        self.enable_checkpointing = enable_checkpointing
        self.limits = {
            "train": limit_train_batches,
            "val": limit_val_batches,
            "test": limit_test_batches,
            "predict": limit_predict_batches,
        }
        self.check_val_every_n_epoch = check_val_every_n_epoch

    @property
    def root(self) -> str:
        return self.default_root_dir or os.path.join("runs", "default")

    def steps(self, dm: RslearnDataModule, stage: str) -> int | None:
        limit = self.limits[stage]
        if limit is None:
            return None
        total = dm.num_batches(stage)
        if isinstance(limit, float) and not float(limit).is_integer() or (isinstance(limit, float) and limit <= 1.0):
            return max(1, int(total * limit))
        return min(int(limit), total)

    def checkpoint_callbacks(self) -> list[BestLastCheckpoint]:
        return [c for c in self.callbacks if isinstance(c, BestLastCheckpoint)]

    def keras_callbacks(self) -> list[keras.callbacks.Callback]:
        callbacks = []
        for c in self.callbacks:
            if isinstance(c, ManagedBestLastCheckpoint) and not c.dirpath:
                c.dirpath = self.root
            if isinstance(c, keras.callbacks.Callback):
                callbacks.append(c)
        if self.enable_checkpointing and not self.checkpoint_callbacks():
            default = BestLastCheckpoint(os.path.join(self.root, "checkpoints"))
            self.callbacks.append(default)
            callbacks.append(default)
        callbacks.append(MetricsFileLogger(self.root))
        if self.logger:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(self.root, "logs"), write_graph=False))
        return callbacks

    def fit(self, lm: RslearnLightningModule, dm: RslearnDataModule) -> keras.callbacks.History:
        os.makedirs(self.root, exist_ok=True)
        train = dm.tf_dataset("train")
        val = dm.tf_dataset("val")
        start = time.time()
        history = lm.fit(
            train,
            validation_data=val,
            epochs=self.max_epochs,
            steps_per_epoch=self.steps(dm, "train"),
            validation_steps=self.steps(dm, "val"),
            validation_freq=self.check_val_every_n_epoch,
            callbacks=self.keras_callbacks(),
            shuffle=False,  # tf.data shuffles the train split itself
            verbose=1 if self.enable_progress_bar else 2,
        )
        logger.info("fit: %d epochs in %.1fs", len(history.epoch), time.time() - start)
        return history

    def best_checkpoint(self) -> str | None:
        for c in self.checkpoint_callbacks():
            if os.path.exists(c.best_path):
                return c.best_path
        return None

    def evaluate(self, lm: RslearnLightningModule, dm: RslearnDataModule, stage: str = "val") -> dict[str, float]:
        """Runs the model over a split; returns ``<prefix>_<metric>`` scalars."""
        prefix = "val" if stage == "val" else "test"
        logs = lm.evaluate(
            dm.tf_dataset(stage), steps=self.steps(dm, stage), return_dict=True, verbose=1 if self.enable_progress_bar else 0
        )
        return {f"{prefix}_{k}": float(v) for k, v in logs.items()}
