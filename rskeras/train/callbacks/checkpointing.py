"""Best/last checkpointing (rslearn ``BestLastCheckpoint`` / ``ManagedBestLastCheckpoint``)."""

from __future__ import annotations

import json
import math
import os

import keras

from rskeras.utils.fileio import atomic_write_text


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """``model.save_weights(path)`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class BestLastCheckpoint(keras.callbacks.Callback):
    """After every validation, saves ``best.weights.h5`` when ``monitor`` improves
    (strictly) and always ``last.weights.h5``.

    Args:
        dirpath: directory of the checkpoints.
        monitor: logged metric to watch (default "val_loss").
        mode: "min" or "max".

    The best value is kept in ``best.json`` beside the weights, so it survives a resume.
    A missing monitored metric is an error listing the available keys.
    """

    def __init__(self, dirpath: str, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best.weights.h5")

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, "last.weights.h5")

    def on_train_begin(self, logs=None):
        state = os.path.join(self.dirpath, "best.json")
        if os.path.exists(state):
            with open(state) as f:
                self.best = json.load(f).get("best")

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not any(k.startswith("val_") for k in logs):
            return  # no validation ran this epoch
        if self.monitor not in logs:
            raise ValueError(f"BestLastCheckpoint: monitored metric {self.monitor!r} is not logged; available: {sorted(logs)}")
        value = float(logs[self.monitor])
        if self.is_better(value):
            self.best = value
            save_weights_atomic(self.model, self.best_path)
            atomic_write_text(os.path.join(self.dirpath, "best.json"), json.dumps({"best": value, "epoch": epoch, "monitor": self.monitor}))
        save_weights_atomic(self.model, self.last_path)


class ManagedBestLastCheckpoint(BestLastCheckpoint):
    """BestLastCheckpoint whose directory is the trainer's ``default_root_dir``."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min"):
        super().__init__(dirpath="", monitor=monitor, mode=mode)
