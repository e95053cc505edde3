"""Training checkpoints and the best/last checkpoint callbacks.

A training checkpoint is one Keras ``.weights.h5`` file holding the model weights, the
optimizer state (moments, per-parameter steps, parameter groups and their learning rates)
and, as a JSON attribute of the HDF5 file, the training state: the last completed epoch,
the global step, every callback's ``state_dict`` and the scheduler's state. It is the
counterpart of a Lightning ``.ckpt``: ``fit --ckpt_path last.weights.h5`` resumes exactly,
``validate``/``test``/``predict`` read only the model weights. Files are written to a
temporary name in the same directory, flushed and renamed, so a crash never leaves a
truncated checkpoint.

``BestLastCheckpoint`` / ``ManagedBestLastCheckpoint`` are rslearn's callbacks
(``best.ckpt``/``last.ckpt`` there, ``best.weights.h5``/``last.weights.h5`` here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from typing import Any

import h5py
import keras
import numpy as np

from rskeras.keras_compat import load_weights_file, save_weights_file
from rskeras.train.callbacks.base import Callback
from rskeras.train.run_dir import check_free_space, disk_full_as_error
from rskeras.weights.errors import CheckpointError

logger = logging.getLogger(__name__)

TRAINING_STATE_ATTR = "rskeras_training_state"
CHECKPOINT_SUFFIX = ".weights.h5"


def _objects_to_skip(lm: keras.Model, with_optimizer: bool) -> list[Any]:
    # Metric accumulators are per-epoch state (and some metrics create their variables
    # lazily), so they are never part of a checkpoint.
    skip = list(getattr(lm, "metrics", []) or [])
    if not with_optimizer and getattr(lm, "optimizer", None) is not None:
        skip.append(lm.optimizer)
    return skip


def _optimizer_built(lm: keras.Model) -> bool:
    optimizer = getattr(lm, "optimizer", None)
    return optimizer is not None and bool(getattr(optimizer, "built", False))


def save_training_checkpoint(
    lm: keras.Model, path: str, state: dict[str, Any] | None = None, same_weights_as: str | None = None
) -> None:
    """Writes weights (+ optimizer state if built) and ``state`` to ``path`` atomically.

    ``same_weights_as``: a checkpoint this process wrote from the same, unchanged
    variables (e.g. the top-k file of this epoch when ``last`` follows it). Its bytes are
    copied and only the training state is rewritten: the file is the one a full save would
    write (the same datasets, the same values), at the cost of a file copy instead of a
    serialization of every variable.
    """
    if not path.endswith(CHECKPOINT_SUFFIX):
        raise ValueError(f"checkpoint paths must end with {CHECKPOINT_SUFFIX}, got {path}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # Leftovers of a process killed while writing this file (one writer per file).
    for name in os.listdir(directory):
        if name.startswith(".tmp-") and name.endswith("-" + base):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{base}")
    skip = _objects_to_skip(lm, _optimizer_built(lm))
    # HDF5 running out of space mid-write can crash the process: check first.
    check_free_space(path, checkpoint_size_estimate(lm, skip))
    copy_from = same_weights_as if same_weights_as and os.path.abspath(same_weights_as) != os.path.abspath(path) else None
    try:
        with disk_full_as_error(path):
            if copy_from is not None and os.path.isfile(copy_from):
                shutil.copyfile(copy_from, tmp)
            else:
                save_weights_file(lm, tmp, skip)
            with h5py.File(tmp, "a") as f:
                f.attrs[TRAINING_STATE_ATTR] = json.dumps(state or {})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def checkpoint_size_estimate(lm: keras.Model, objects_to_skip: list[Any]) -> int:
    """Bytes of the variables a checkpoint of ``lm`` stores (model, and the optimizer
    unless skipped), a lower bound of the file's size."""
    variables = list(lm.weights)
    optimizer = getattr(lm, "optimizer", None)
    if optimizer is not None and optimizer not in objects_to_skip and _optimizer_built(lm):
        variables += list(optimizer.variables)
    total, seen = 0, set()
    for v in variables:
        if id(v) in seen:
            continue
        seen.add(id(v))
        count = 1
        for d in v.shape:
            count *= int(d or 1)
        total += count * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
    return total


def _unreadable(path: str, detail: Any) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {path}: {detail} (a truncated, empty or foreign file? expected a .weights.h5 written by rskeras or Keras)")


def check_checkpoint_file(path: str) -> None:
    """Raises CheckpointError naming ``path`` unless it is a readable HDF5 file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"cannot read checkpoint {path}: it is a directory")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        with h5py.File(path, "r") as f:
            list(f.keys())
    except (OSError, RuntimeError, KeyError) as e:
        raise _unreadable(path, f"not a readable HDF5 file ({e})") from None


def read_training_state(path: str) -> dict[str, Any] | None:
    """The training state stored in a checkpoint (None for plain Keras weight files)."""
    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(TRAINING_STATE_ATTR)
    except (OSError, RuntimeError, KeyError) as e:
        raise _unreadable(path, e) from None
    if text is None:
        return None
    try:
        state = json.loads(text)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: malformed training state attribute ({e})") from None
    if state and not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: the training state is not an object")
    return state or None


def checkpoint_has_optimizer(path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "optimizer" in f
    except (OSError, RuntimeError, KeyError) as e:
        raise _unreadable(path, e) from None


def load_training_checkpoint(lm: keras.Model, path: str, with_optimizer: bool = False) -> dict[str, Any] | None:
    """Loads a checkpoint into ``lm``; returns its training state (or None).

    With ``with_optimizer`` the optimizer must already be built (the trainer builds it
    before resuming) and the file must contain optimizer state.
    """
    check_checkpoint_file(path)
    if with_optimizer:
        if not _optimizer_built(lm):
            raise RuntimeError("load_training_checkpoint(with_optimizer=True) needs a built optimizer")
        if not checkpoint_has_optimizer(path):
            logger.warning("checkpoint %s holds no optimizer state: the optimizer starts fresh", path)
            with_optimizer = False
    try:
        load_weights_file(lm, path, _objects_to_skip(lm, with_optimizer))
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from None
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    return read_training_state(path)


class BestLastCheckpoint(Callback):
    """After every validation, saves ``best.weights.h5`` when ``monitor`` improves
    (strictly) and then ``last.weights.h5`` (rslearn ``BestLastCheckpoint``).

    Args:
        dirpath: directory of the checkpoints (default ``<run dir>/checkpoints``, the run
            directory being ``trainer.default_root_dir``, as for Lightning's
            ``ModelCheckpoint``).
        monitor: logged metric to watch (default "val_loss").
        mode: "min" or "max" (default "min").

    Both files are full training checkpoints (see the module docstring); the best value
    is part of the callback state, so it survives a resume. ``last`` is written after
    ``best`` so that resuming from ``last`` never re-saves an outdated ``best``. Epochs
    without validation (``check_val_every_n_epoch``) save nothing. A missing monitored
    metric is an error listing the available keys.
    """

    def __init__(self, dirpath: str | None = None, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self._written_this_epoch: str | None = None  # the last file of this epoch's on_epoch_end

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best" + CHECKPOINT_SUFFIX)

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, "last" + CHECKPOINT_SUFFIX)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best_value")

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_train_begin(self, logs=None):
        self._written_this_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._written_this_epoch = None
        if not any(str(k).startswith("val_") for k in logs):
            return  # no validation ran this epoch
        if self.monitor not in logs:
            raise ValueError(f"BestLastCheckpoint: did not find metric {self.monitor!r} (logged keys are {sorted(logs)})")
        value = float(logs[self.monitor])
        state = self.trainer.training_state(epoch) if self.trainer is not None else None
        if self.is_better(value):
            self.best = value
            if state is not None:
                state = self.trainer.training_state(epoch)  # with the new best value
            save_training_checkpoint(self.model, self.best_path, state)
            logger.info("saved best checkpoint to %s (%s=%s)", self.best_path, self.monitor, value)
            # ``last`` holds the same variables: copied from ``best``, with its own state.
            save_training_checkpoint(self.model, self.last_path, state, same_weights_as=self.best_path)
        else:
            save_training_checkpoint(self.model, self.last_path, state)
        self._written_this_epoch = self.last_path
        logger.info("saved checkpoint to %s", self.last_path)


class ManagedBestLastCheckpoint(BestLastCheckpoint):
    """BestLastCheckpoint whose directory is the trainer's ``default_root_dir`` (the
    project directory ``<management_dir>/<project_name>/<run_name>`` under project
    management)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min"):
        super().__init__(dirpath="", monitor=monitor, mode=mode)

    def setup(self, trainer, lm) -> None:
        self.dirpath = trainer.root
