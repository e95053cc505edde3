"""Lightning callbacks that rslearn configs name, as rskeras callbacks.

``lightning.pytorch.callbacks.X`` (and ``pytorch_lightning.callbacks.X``) class paths map to
``rskeras.train.callbacks.lightning.X``:

* ``ModelCheckpoint``: top-k / latest checkpoints with Lightning's file naming
  (``epoch=3-step=120.weights.h5``);
* ``EarlyStopping``: Lightning's stopping rule (min_delta, patience, thresholds, check_finite);
* ``LearningRateMonitor``: logs ``lr-<Optimizer>`` (``lr-AdamW/pg<i>`` with several
  parameter groups) once per epoch;
* ``TQDMProgressBar``, ``RichProgressBar``, ``ModelSummary``: accepted for compatibility
  (Keras prints its own progress bar; ``trainer.enable_progress_bar`` turns it off).

Arguments that rskeras cannot honour raise ``NotImplementedError`` naming them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any

from rskeras.train.callbacks.base import Callback
from rskeras.train.callbacks.checkpointing import CHECKPOINT_SUFFIX, save_training_checkpoint

logger = logging.getLogger(__name__)


def _reject(cls: str, **unsupported: Any) -> None:
    given = {k: v for k, v in unsupported.items() if v not in (None, False)}
    if given:
        raise NotImplementedError(f"{cls}: {sorted(given)} not supported by rskeras (got {given})")


class ModelCheckpoint(Callback):
    """Lightning ``ModelCheckpoint``: keeps the ``save_top_k`` best checkpoints by ``monitor``
    (or, without a monitor, the latest one), every ``every_n_epochs`` epochs.

    Args:
        dirpath: directory (default ``<default_root_dir>/checkpoints``).
        filename: name template, e.g. ``"{epoch}-{val_loss:.2f}"`` (default
            ``"{epoch}-{step}"``); with ``auto_insert_metric_name`` each ``{name}`` becomes
            ``name={name}``. ``.weights.h5`` is appended.
        monitor: logged metric to rank checkpoints by (None: keep the latest).
        verbose: log each save.
        save_last: also write ``last.weights.h5`` at every save.
        save_top_k: how many to keep (-1 all, 0 none; without monitor only -1, 0 or 1).
        save_weights_only: accepted (rskeras checkpoints always carry optimizer state).
        mode: "min" or "max".
        auto_insert_metric_name: see ``filename``.
        every_n_epochs: save every n epochs (default 1).
        save_on_train_epoch_end: accepted (rskeras saves at epoch end, after validation).
        enable_version_counter: append ``-v1``, ``-v2`` ... instead of overwriting a file of
            the same name.
        every_n_train_steps, train_time_interval: not supported (error if set).

    ``step`` in names is the number of optimizer steps so far (Lightning's global step).
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | str | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: Any = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ):
        super().__init__()
        _reject("ModelCheckpoint", every_n_train_steps=every_n_train_steps or None, train_time_interval=train_time_interval)
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint: mode must be 'min' or 'max', got {mode!r}")
        if save_top_k < -1:
            raise ValueError(f"ModelCheckpoint: invalid value for save_top_k={save_top_k}, must be >= -1")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not valid: no quantity to rank by")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint: save_last must be a bool or 'link', got {save_last!r}")
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"ModelCheckpoint: every_n_epochs must be >= 0, got {every_n_epochs}")
        self.dirpath = dirpath
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.every_n_epochs = 1 if every_n_epochs is None else every_n_epochs
        self.enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, float] = {}
        self.kth_best_model_path = ""
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._written_this_epoch: str | None = None  # the file of this epoch's on_epoch_end

    def setup(self, trainer, lm) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.root, "checkpoints")

    # ---- naming -------------------------------------------------------------------------

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None) -> str:
        template = filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        values = dict(metrics)
        for group in re.findall(r"(\{.*?)[:\}]", template):
            name = group[1:]
            if self.auto_insert_metric_name:
                template = template.replace(group, name + self.CHECKPOINT_EQUALS_CHAR + "{" + name, 1)
            values.setdefault(name, 0)
        # str.format cannot look up names containing '/': substitute them positionally.
        keys = sorted({n[1:] for n in re.findall(r"\{[^{}:]*", template)}, key=len, reverse=True)
        for i, key in enumerate(keys):
            template = template.replace("{" + key, "{" + f"_{i}")
        name = template.format(**{f"_{i}": values.get(k, 0) for i, k in enumerate(keys)})
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        return os.path.join(self.dirpath, name + CHECKPOINT_SUFFIX)

    def _unique_path(self, metrics: dict[str, Any], filename: str | None, replacing: str | None) -> str:
        path = self.format_checkpoint_name(metrics, filename)
        version = 1
        while self.enable_version_counter and os.path.exists(path) and path != replacing:
            path = self.format_checkpoint_name(metrics, filename, ver=version)
            version += 1
        return path

    # ---- saving -------------------------------------------------------------------------

    def _save(self, path: str, epoch: int) -> None:
        state = self.trainer.training_state(epoch) if self.trainer is not None else None
        # A second file of the same epoch (``last`` after a top-k save) holds the same
        # variables: copied from the first, with its own training state.
        save_training_checkpoint(self.model, path, state, same_weights_as=self._written_this_epoch)
        self._written_this_epoch = path
        if self.verbose:
            logger.info("ModelCheckpoint: saved %s", path)

    def _remove(self, path: str) -> None:
        if path and os.path.exists(path):
            os.remove(path)

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def on_train_begin(self, logs=None):
        self._written_this_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._written_this_epoch = None  # only files written in this call are copied from
        if self.every_n_epochs == 0 or (epoch + 1) % self.every_n_epochs != 0:
            return
        validated = any(str(k).startswith("val_") for k in logs)
        if self.monitor is not None and self.monitor not in logs:
            if not validated and self.monitor.startswith("val_"):
                return  # no validation this epoch: nothing to rank
            raise ValueError(
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the logged metrics: {sorted(logs)}"
            )
        step = self.trainer.global_step() if self.trainer is not None else 0
        metrics = {**{k: float(v) for k, v in logs.items()}, "epoch": epoch, "step": step}
        if self.save_top_k != 0:
            if self.monitor is None:
                self._save_latest(metrics, epoch)
            else:
                self._save_topk(metrics, epoch)
        if self.save_last:
            path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            previous = self.last_model_path
            if self.save_last == "link" and self.best_model_path and os.path.exists(self.best_model_path):
                self._remove(path)
                os.symlink(os.path.relpath(self.best_model_path, os.path.dirname(path)), path)
            else:
                self.last_model_path = path  # the state saved below records this path
                self._save(path, epoch)
            self.last_model_path = path
            if previous and previous != path:
                self._remove(previous)

    def _save_latest(self, metrics: dict[str, Any], epoch: int) -> None:
        previous = self.best_model_path
        path = self._unique_path(metrics, None, previous)
        self.best_model_path = path
        self._save(path, epoch)
        if self.save_top_k == 1 and previous and previous != path:
            self._remove(previous)

    def _save_topk(self, metrics: dict[str, Any], epoch: int) -> None:
        current = metrics[self.monitor]
        if math.isnan(current):
            current = math.inf if self.mode == "min" else -math.inf
        if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k:
            if not self._better(current, self.best_k_models[self.kth_best_model_path]):
                return
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        to_delete = None
        if len(self.best_k_models) == k and k > 0:
            to_delete = self.kth_best_model_path
            self.best_k_models.pop(to_delete)
        path = self._unique_path(metrics, None, to_delete)
        self.best_k_models[path] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.get)
        self.best_model_score = self.best_k_models[self.best_model_path]
        self._save(path, epoch)
        if to_delete and to_delete != path:
            self._remove(to_delete)

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dirpath") not in (None, self.dirpath):
            logger.warning("ModelCheckpoint: dirpath changed from %s to %s; not restoring its top-k state", state["dirpath"], self.dirpath)
            return
        self.best_k_models = {k: float(v) for k, v in (state.get("best_k_models") or {}).items()}
        self.kth_best_model_path = state.get("kth_best_model_path", "")
        self.best_model_path = state.get("best_model_path", "")
        self.best_model_score = state.get("best_model_score")
        self.last_model_path = state.get("last_model_path", "")


class EarlyStopping(Callback):
    """Lightning ``EarlyStopping``: stops training when ``monitor`` stops improving.

    At the end of each epoch (only epochs with validation when
    ``check_val_every_n_epoch > 1``): stop if the value is not finite (``check_finite``),
    reached ``stopping_threshold``, or is worse than ``divergence_threshold``; otherwise an
    improvement is ``value < best - min_delta`` (min) / ``value > best + min_delta`` (max)
    and ``patience`` epochs without one stop the run.

    Args:
        monitor: logged metric (required).
        min_delta: minimum change that counts as an improvement (default 0).
        patience: epochs without improvement before stopping (default 3).
        verbose: log every decision.
        mode: "min" or "max" (default "min").
        strict: a missing metric is an error (default true), else a warning.
        check_finite: stop on NaN/inf (default true).
        stopping_threshold: stop as soon as the value is better than this.
        divergence_threshold: stop as soon as the value is worse than this.
        check_on_train_epoch_end: accepted (rskeras checks at epoch end, after validation).
        log_rank_zero_only: accepted.
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stop_reason: str | None = None

    def _op(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def evaluate(self, current: float) -> tuple[bool, str | None]:
        """(should_stop, reason) for a new value; updates best/wait like Lightning."""
        if self.check_finite and not math.isfinite(current):
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite. "
                f"Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
        if self.stopping_threshold is not None and self._op(current, self.stopping_threshold):
            return True, f"Stopping threshold reached: {self.monitor} = {current} {'<' if self.mode == 'min' else '>'} {self.stopping_threshold}."
        if self.divergence_threshold is not None and self._op(-current, -self.divergence_threshold):
            return True, f"Divergence threshold reached: {self.monitor} = {current} {'>' if self.mode == 'min' else '<'} {self.divergence_threshold}."
        if self._op(current - self.min_delta, self.best_score):
            reason = f"Metric {self.monitor} improved to {current:.3f}" if self.verbose else None
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                f"Best score: {self.best_score:.3f}. Signaling Trainer to stop."
            )
        return False, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        validated = any(str(k).startswith("val_") for k in logs)
        if self.trainer is not None and self.trainer.check_val_every_n_epoch != 1 and not validated:
            return
        if self.monitor not in logs:
            if self.monitor.startswith("val_") and not validated:
                return
            message = (
                f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {sorted(logs)}"
            )
            if self.strict:
                raise RuntimeError(message)
            logger.warning(message)
            return
        should_stop, reason = self.evaluate(float(logs[self.monitor]))
        if reason:
            logger.info("EarlyStopping: %s", reason)
        if should_stop:
            self.stopped_epoch = epoch
            self.stop_reason = reason
            self.model.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score, "patience": self.patience}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state["wait_count"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_score = float(state["best_score"])


class LearningRateMonitor(Callback):
    """Lightning ``LearningRateMonitor``: logs the learning rate of every parameter group.

    Keys (Lightning's naming): ``lr-AdamW`` with one parameter group, ``lr-AdamW/pg1``,
    ``lr-AdamW/pg2``, ... with several; ``-momentum`` (Adam's beta_1) and
    ``-weight_decay`` suffixes with ``log_momentum`` / ``log_weight_decay``. The values are
    those in effect during the epoch (before the end-of-epoch scheduler step); rskeras
    schedulers change the learning rate only between epochs, so ``logging_interval``
    "step" and "epoch" log the same values, once per epoch.

    Args:
        logging_interval: None, "step" or "epoch".
        log_momentum: also log the momentum (beta_1).
        log_weight_decay: also log the weight decay.
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False):
        super().__init__()
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor: logging_interval should be 'step', 'epoch' or None, got {logging_interval!r}")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.trainer is None:
            return
        from rskeras.train.optimizer import TorchAdamW, unwrap_optimizer

        optimizer = unwrap_optimizer(self.model.optimizer)
        name = "lr-" + ("AdamW" if isinstance(optimizer, TorchAdamW) else type(optimizer).__name__)
        lrs = self.trainer.epoch_lrs or []
        for i, lr in enumerate(lrs):
            key = name if len(lrs) == 1 else f"{name}/pg{i + 1}"
            logs[key] = float(lr)
            if self.log_momentum:
                logs[f"{key}-momentum"] = float(getattr(optimizer, "beta_1", getattr(optimizer, "momentum", 0.0)))
            if self.log_weight_decay:
                wd = getattr(optimizer, "decoupled_weight_decay", getattr(optimizer, "weight_decay", None))
                logs[f"{key}-weight_decay"] = float(wd or 0.0)


class TQDMProgressBar(Callback):
    """Accepted for compatibility: Keras shows its own progress bar (``refresh_rate`` 0 turns
    it off through the trainer)."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False):
        super().__init__()
        self.refresh_rate = refresh_rate


class RichProgressBar(TQDMProgressBar):
    """Accepted for compatibility (see ``TQDMProgressBar``)."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: Any = None, console_kwargs: Any = None):
        super().__init__(refresh_rate=refresh_rate)


class ModelSummary(Callback):
    """Lightning ``ModelSummary``: logs parameter counts at the start of fit (one row per
    top-level component; ``max_depth: 0`` turns the summary off)."""

    def __init__(self, max_depth: int = 1):
        super().__init__()
        self.max_depth = max_depth

    def setup(self, trainer, lm) -> None:
        trainer.model_summary_depth = self.max_depth  # 0 turns the summary off
