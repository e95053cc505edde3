"""Trainer: the ``trainer:`` section of a config (Lightning ``Trainer`` arguments) on Keras.

``Trainer.fit`` runs Keras ``fit`` with rslearn's training semantics:

* fine-tuning callbacks ``setup`` (freeze) -> optimizer built (frozen variables out of
  every parameter group) -> scheduler built -> resume (backup, else ``ckpt_path``) or, on
  a fresh fit, ``restore_config`` -> sanity validation -> epochs;
* at the end of every epoch (after validation): ``lr`` logged (the learning rate used
  during the epoch), the scheduler stepped once (``PlateauScheduler`` with
  ``train_loss``), callbacks (checkpoints last), metrics file and TensorBoard written, then
  a backup of the complete training state (``<root>/backup/state.weights.h5``) from which a
  killed run resumes when the same command is run again; the backup is removed when fit
  completes;
* a non-finite loss stops the run with an error naming the epoch, the batch and the loss
  term (``NonFiniteLossError``).

Lightning arguments map onto Keras as documented in docs/training.md. An argument rskeras
cannot honour is an error naming ``trainer.<key>``, never silently ignored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.config.errors import ConfigError
from rskeras.keras_compat import set_memory_optimizer
from rskeras.train import cpu_threads
from rskeras.train.callbacks.base import Callback
from rskeras.train.callbacks.checkpointing import (
    BestLastCheckpoint,
    ManagedBestLastCheckpoint,
    load_training_checkpoint,
    read_training_state,
    save_training_checkpoint,
)
from rskeras.train.callbacks.lightning import ModelCheckpoint, TQDMProgressBar
from rskeras.train.distribute import worker_info
from rskeras.train.host_calls import surface_errors
from rskeras.train.run_dir import (
    clear_fit_state,
    disk_full_as_error,
    fit_state_path,
    lock_run_dir,
    read_fit_state,
    remove_leftovers,
    write_fit_state,
)
from rskeras.train.fit_timings import FitTimings, PhaseClock
from rskeras.train.loggers import Logger, MetricsFileLogger, TensorBoardLogger
from rskeras.train.optimizer import TorchAdamW, to_numpy, unwrap_optimizer
from rskeras.utils.devices import gpu_visible
from rskeras.weights.errors import CheckpointError
from rskeras.weights.restore import load_torch_weights, restore_from_config

logger = logging.getLogger(__name__)

BACKUP_NAME = os.path.join("backup", "state.weights.h5")

PRECISIONS = {
    "32": "float32",
    "32-true": "float32",
    "bf16": "mixed_bfloat16",
    "bf16-mixed": "mixed_bfloat16",
    "16": "mixed_float16",
    "16-mixed": "mixed_float16",
}

# Lightning Trainer arguments rskeras does not implement, with the values besides None
# that mean "off" in Lightning. Those are accepted; any other value is an error naming
# ``trainer.<key>``. Values match by type and value, so ``True`` is not ``1`` and ``1`` is
# not ``1.0`` (``fast_dev_run: 1`` runs one batch in Lightning).
UNSUPPORTED_ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "val_check_interval": (1.0,),
    "min_steps": (0,),
    "max_time": (),
    "profiler": (),
    "plugins": (),
    "detect_anomaly": (False,),
    "barebones": (False,),
    "reload_dataloaders_every_n_epochs": (0,),
    "sync_batchnorm": (False,),
    "model_registry": (),
}


def check_unsupported_arguments(arguments: dict[str, Any]) -> None:
    """Raises ConfigError for an argument of ``UNSUPPORTED_ARGUMENTS`` set to anything but
    None or one of its off values (``arguments``: the Trainer's arguments by name; only the
    table's keys are read)."""
    for key, offs in UNSUPPORTED_ARGUMENTS.items():
        value = arguments.get(key)
        if value is None or any(type(value) is type(off) and value == off for off in offs):
            continue
        raise ConfigError(f"trainer.{key}: this Lightning Trainer argument is not supported by rskeras (got {value!r})")


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names the step and the loss term."""


def non_finite_inputs_note(dm) -> str:
    """What a non-finite-loss error adds about the inputs: the windows whose raster pixels
    were not finite (NaN, +-Inf), or that none were found."""
    try:
        found, checked, complete = dm.non_finite_windows("train")
    except Exception as e:  # noqa: BLE001 - a note must not hide the error it annotates
        return f"(the inputs could not be checked for non-finite pixels: {e})"
    if found:
        names = sorted(found)
        listed = ", ".join(f"{n} ({found[n]} px)" for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return (
            f"Non-finite input pixels (NaN/Inf) are in {len(names)} train window(s): {listed}; set "
            "data.init_args.check_nan: true to stop at such windows (or skip_bad_windows: true to skip them)."
        )
    scope = f"all {checked} train windows" if complete else f"{checked} train windows (the check's time ran out)"
    return f"No non-finite input pixels in {scope}: the loss itself diverged (a lower learning rate or gradient_clip_val may help)."


def warn_if_cpu_replicas_with_onednn(strategy: tf.distribute.Strategy, batch_size: int) -> None:
    """Warns about a TensorFlow CPU limitation of replicas on logical CPU devices.

    TensorFlow's oneDNN convolution kernels fail ("output depth must be evenly divisible by
    number of groups") when a CPU replica receives an uneven or empty share of a batch.
    GPUs are not affected; on CPU set TF_ENABLE_ONEDNN_OPTS=0 before starting Python.
    """
    devices = getattr(strategy.extended, "worker_devices", ()) or ()
    on_cpu = devices and all("CPU" in d.upper() for d in devices)
    if on_cpu and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0":
        logger.warning(
            "training on %d CPU replicas with oneDNN enabled: a batch that does not split evenly "
            "(batch_size %d, or the last batch of val/test) can crash TensorFlow's CPU convolution "
            "kernels; set TF_ENABLE_ONEDNN_OPTS=0 in the environment to avoid it",
            len(devices),
            batch_size,
        )


class _EpochController(Callback):
    """First callback of every fit: non-finite loss check and max_steps per batch; at the
    end of an epoch, ``lr`` logging and the scheduler step."""

    def on_train_batch_end(self, batch, logs=None):
        trainer = self.trainer
        if trainer.stop_on_nonfinite_loss and logs:
            bad = {}
            for key, value in logs.items():
                if str(key).startswith("train_"):
                    value = float(np.asarray(value))
                    if not math.isfinite(value):
                        bad[key] = value
            if bad:
                terms = sorted(k for k in bad if k != "train_loss") or ["train_loss"]
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {trainer.current_epoch}, batch {batch} "
                    f"(global step {trainer.global_step()}): "
                    + ", ".join(f"{k}={bad[k]}" for k in sorted(bad))
                    + f"; loss term(s) at fault: {', '.join(t.removeprefix('train_') for t in terms)}. "
                    "Training stopped; the last checkpoints are those of the previous epochs."
                )
        if trainer.max_steps != -1 and trainer.global_step() >= trainer.max_steps:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.trainer.current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        trainer = self.trainer
        # This epoch's validation results (computed on the weights its checkpoints hold).
        trainer.epoch_val_logs[epoch] = {k: float(np.asarray(v)) for k, v in (logs or {}).items() if str(k).startswith("val_")}
        optimizer = unwrap_optimizer(self.model.optimizer)
        if hasattr(optimizer, "param_group_lrs"):
            lrs = optimizer.param_group_lrs()
        else:
            lrs = [float(to_numpy(optimizer.learning_rate))]
        trainer.epoch_lrs = lrs
        if logs is not None:
            logs["lr"] = lrs[0]
        scheduler = getattr(self.model, "lr_scheduler", None)
        if scheduler is not None:
            monitor = getattr(scheduler, "monitor", None)
            if monitor:
                if not logs or monitor not in logs:
                    raise ValueError(
                        f"{type(scheduler).__name__} conditioned on metric {monitor!r} which is not available; "
                        f"logged keys: {sorted(logs or {})}"
                    )
                scheduler.step(float(logs[monitor]))
            else:
                scheduler.step()


class _MinEpochsGuard(Callback):
    """Lightning's ``min_epochs``: a stop request before that many epochs is ignored."""

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training and epoch + 1 < self.trainer.min_epochs:
            logger.info("stop requested at epoch %d ignored: min_epochs=%d", epoch, self.trainer.min_epochs)
            self.model.stop_training = False


class _Backup(Callback):
    """Saves the complete training state after every epoch (the last callback).

    The checkpoint callbacks run after every user callback and only the trainer's own
    logging callbacks run between them and the backup, so a checkpoint file written in
    this epoch end holds the backup's variables: the backup is then a copy of that file
    with its own training state (``same_weights_as``), not a third serialization.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        same = self.trainer.checkpoint_written_this_epoch()
        save_training_checkpoint(self.model, self.path, self.trainer.training_state(epoch), same_weights_as=same)


def _limit_key(stage: str) -> str:
    return f"trainer.limit_{'val' if stage == 'val' else stage}_batches"


# Grappler's rewrites that run by default; graph_optimizer "functions" turns them off and
# keeps the meta optimizer's pruner, function and memory passes.
GRAPPLER_REWRITES = (
    "layout_optimizer",
    "constant_folding",
    "shape_optimization",
    "remapping",
    "arithmetic_optimization",
    "dependency_optimization",
    "loop_optimization",
    "implementation_selector",
)


def grappler_options(mode: str) -> dict[str, bool]:
    """``tf.config.optimizer`` options of a graph_optimizer mode ("on", "off", "functions");
    every mode sets the same keys, so a process that builds several runs gets each run's."""
    options = {name: mode == "on" for name in GRAPPLER_REWRITES}
    options.update(disable_meta_optimizer=mode == "off", function_optimization=mode != "off")
    return options


def _on_gpu_if_auto(value: bool | str) -> bool:
    """A true/false/"auto" trainer switch resolved: "auto" is on when a GPU is visible."""
    if value == "auto":
        return gpu_visible()
    return bool(value)


class Trainer:
    """Runs training and evaluation (Lightning ``Trainer`` arguments; see docs/training.md).

    Args:
        max_epochs: epochs to train (None: 1000, or as many as ``max_steps`` needs).
        min_epochs: early stopping is ignored before this many epochs.
        max_steps: stop after this many optimizer steps (-1: no limit).
        callbacks: callbacks (rskeras ones, mapped Lightning ones, Keras ones; other
            objects, e.g. prediction writers, are kept for ``predict``).
        default_root_dir: run directory (checkpoints, logs, metrics, backup).
        devices, accelerator, num_nodes, strategy: see ``rskeras.train.distribute``.
        precision: 32 / "32-true", "bf16-mixed" (Keras ``mixed_bfloat16``) or "16-mixed"
            (``mixed_float16`` with dynamic loss scaling).
        logger: true (TensorBoard in the run directory), false, a logger or a list.
        enable_progress_bar: Keras progress bar (else one line per epoch).
        enable_checkpointing: without any checkpoint callback, add Lightning's default
            ``ModelCheckpoint`` (latest epoch in ``<root>/checkpoints``).
        enable_model_summary: print parameter counts at the start of fit.
        limit_train_batches, limit_val_batches, limit_test_batches, limit_predict_batches:
            an int number of batches or a float fraction (0 disables validation).
        check_val_every_n_epoch: validate every n epochs.
        accumulate_grad_batches: optimizer step every n batches (mean gradient).
        gradient_clip_val, gradient_clip_algorithm: "norm" (global norm, torch's rule) or
            "value" clipping of the (summed, accumulated) gradients.
        deterministic: ``tf.config.experimental.enable_op_determinism``.
        num_sanity_val_steps: validation batches run (and discarded) before training
            (default 2; -1 all).
        log_every_n_steps: accepted (rskeras logs epoch values, as rslearn does).
        use_distributed_sampler, benchmark, inference_mode: accepted, no effect.
        fast_dev_run: true or n: a quick check of the whole loop, as in Lightning: n batches
            (true: 1) of train, val, test and predict, one epoch, no sanity check, and nothing
            written (no checkpoints, loggers, metrics file, backup, config or SavedModel).
        overfit_batches: n batches (int) or a fraction (float) of the train split, the same
            ones every epoch (not shuffled), and as many val batches, as in Lightning.
        val_check_interval, min_steps, max_time, profiler, plugins, detect_anomaly,
            barebones, reload_dataloaders_every_n_epochs, sync_batchnorm, model_registry:
            not supported (error unless left at Lightning's default).
        backup_and_restore: (rskeras) keep ``<root>/backup`` to resume killed runs.
        stop_on_nonfinite_loss: (rskeras) stop with an error on a NaN/inf training loss.
        jit_compile: (rskeras) run the model's forward/backward pass under XLA: true,
            false, or "auto" (on when a GPU is visible and ``deterministic`` is off; on CPU
            XLA was measured slower).
        export_saved_model: (rskeras) after fit, write ``<root>/saved_model`` from the best
            weights (default false: a fit is training; ``rskeras export`` exports later).
        graph_optimizer: (rskeras) TensorFlow's graph optimizer (Grappler) on the traced
            steps: true, false, "auto" (off when no GPU is visible: on CPU its rewrites
            cost ~20 s per traced step of a Swin-v2-T model and were measured to make the
            steady step no faster; on when a GPU is visible), or "functions" (only its
            pruner, function and memory passes: on CPU 0.13-0.18 GB less peak RSS for
            about 0.8 s more on each traced step's first call).
        intra_op_threads, inter_op_threads: (rskeras) TensorFlow's CPU thread pools: an
            int (0: TensorFlow's default) or "auto" (1 and 2 when training on two logical
            cores without a GPU, except Faster R-CNN; TensorFlow's defaults otherwise; see
            rskeras.train.cpu_threads). TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS win
            over "auto".
    """

    def __init__(
        self,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        callbacks: list[Any] | None = None,
        default_root_dir: str | None = None,
        devices: int | str | list[int] = "auto",
        accelerator: str = "auto",
        num_nodes: int = 1,
        strategy: str | dict[str, Any] | None = "auto",
        precision: int | str | None = "32-true",
        logger: Any = True,
        enable_progress_bar: bool | None = True,
        enable_checkpointing: bool | None = True,
        enable_model_summary: bool | None = True,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        num_sanity_val_steps: int | None = 2,
        log_every_n_steps: int | None = None,
        backup_and_restore: bool = True,
        stop_on_nonfinite_loss: bool = True,
        jit_compile: bool | str = "auto",
        export_saved_model: bool = False,
        graph_optimizer: bool | str = "auto",
        intra_op_threads: int | str = "auto",
        inter_op_threads: int | str = "auto",
        use_distributed_sampler: bool | None = None,
        benchmark: bool | None = None,
        inference_mode: bool | None = None,
        fast_dev_run: int | bool = False,
        overfit_batches: int | float = 0.0,
        val_check_interval: Any = None,
        min_steps: Any = None,
        max_time: Any = None,
        profiler: Any = None,
        plugins: Any = None,
        detect_anomaly: Any = None,
        barebones: Any = None,
        reload_dataloaders_every_n_epochs: Any = None,
        sync_batchnorm: Any = None,
        model_registry: Any = None,
    ):
        check_unsupported_arguments(locals())
        if max_epochs is not None and max_epochs < -1:
            raise ConfigError(f"trainer.max_epochs must be >= -1, got {max_epochs}")
        if max_steps < -1:
            raise ConfigError(f"trainer.max_steps must be >= -1, got {max_steps}")
        if accumulate_grad_batches < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        if check_val_every_n_epoch is None or check_val_every_n_epoch < 1:
            raise ValueError(
                f"trainer.check_val_every_n_epoch must be an int >= 1, got {check_val_every_n_epoch} "
                "(step-based validation, val_check_interval, is not supported)"
            )
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise ConfigError(f"trainer.gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        if gradient_clip_val is not None and gradient_clip_val < 0:
            raise ConfigError(f"trainer.gradient_clip_val must be >= 0, got {gradient_clip_val}")
        if str(precision) not in PRECISIONS and precision is not None:
            raise ConfigError(f"trainer.precision={precision!r} is not supported (use one of {sorted(PRECISIONS)})")
        if jit_compile not in (True, False, "auto"):
            raise ConfigError(f"trainer.jit_compile must be true, false or auto, got {jit_compile!r}")
        if graph_optimizer not in (True, False, "auto", "functions"):
            raise ConfigError(f"trainer.graph_optimizer must be true, false, auto or functions, got {graph_optimizer!r}")
        self.cpu_threads = {
            key: cpu_threads.check_thread_setting(key, value)
            for key, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads))
        }
        if not isinstance(export_saved_model, bool):
            raise ConfigError(f"trainer.export_saved_model must be true or false, got {export_saved_model!r}")
        if deterministic not in (None, True, False, "warn"):
            raise ConfigError(f"trainer.deterministic must be a bool or 'warn', got {deterministic!r}")
        for stage, limit in (
            ("train", limit_train_batches),
            ("val", limit_val_batches),
            ("test", limit_test_batches),
            ("predict", limit_predict_batches),
        ):
            if isinstance(limit, float) and not 0.0 <= limit <= 1.0:
                raise ConfigError(f"{_limit_key(stage)}: a float must be a fraction in [0, 1], got {limit}")
            if isinstance(limit, int) and limit < 0:
                raise ConfigError(f"{_limit_key(stage)} must be >= 0, got {limit}")
        from rskeras.train.distribute import strategy_name

        try:
            strategy_name(strategy)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        fast_dev_run = 1 if fast_dev_run is True else int(fast_dev_run or 0)
        if fast_dev_run < 0:
            raise ConfigError(f"trainer.fast_dev_run must be >= 0 or a bool, got {fast_dev_run}")
        if isinstance(overfit_batches, float) and not 0.0 <= overfit_batches <= 1.0:
            raise ConfigError(f"trainer.overfit_batches: a float must be a fraction in [0, 1], got {overfit_batches}")
        if isinstance(overfit_batches, int) and overfit_batches < 0:
            raise ConfigError(f"trainer.overfit_batches must be >= 0, got {overfit_batches}")
        self.fast_dev_run = fast_dev_run
        self.overfit_batches = overfit_batches if overfit_batches else 0
        if self.overfit_batches:
            # Lightning: the train and val limits become overfit_batches; train is not shuffled.
            limit_train_batches = limit_val_batches = self.overfit_batches
        if fast_dev_run:
            # Lightning: n batches of every loop, one epoch, no sanity check, no logging or
            # checkpointing (rskeras writes nothing at all: no backup, metrics or export).
            limit_train_batches = limit_val_batches = limit_test_batches = limit_predict_batches = fast_dev_run
            max_epochs, max_steps, num_sanity_val_steps, check_val_every_n_epoch = 1, fast_dev_run, 0, 1
            logger, enable_checkpointing, backup_and_restore = False, False, False
            logging.getLogger(__name__).info(
                "fast_dev_run: running %d batch(es) of each loop; checkpoints, logs and exports are off", fast_dev_run
            )
        if max_epochs is None or max_epochs == -1:
            max_epochs = 1000 if max_steps == -1 else None
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs or 0
        self.max_steps = max_steps
        self.callbacks = list(callbacks or [])
        self.default_root_dir = default_root_dir
        self.devices = devices
        self.accelerator = accelerator
        self.num_nodes = num_nodes
        self.strategy = strategy
        self.precision = "32-true" if precision is None else str(precision)
        self.logger = logger
        self.enable_progress_bar = enable_progress_bar is not False
        self.enable_checkpointing = enable_checkpointing is not False
        self.enable_model_summary = enable_model_summary is not False
        self.model_summary_depth = 1
        self.limits = {
            "train": limit_train_batches,
            "val": limit_val_batches,
            "test": limit_test_batches,
            "predict": limit_predict_batches,
        }
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm or "norm"
        self.deterministic = deterministic
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        self.backup_and_restore = backup_and_restore
        self.stop_on_nonfinite_loss = stop_on_nonfinite_loss
        self.jit_compile = jit_compile
        self.export_saved_model = export_saved_model and not fast_dev_run
        self.graph_optimizer = graph_optimizer
        self.is_chief, self.worker_name = worker_info()
        for c in self.callbacks:
            if isinstance(c, TQDMProgressBar) and c.refresh_rate == 0:
                self.enable_progress_bar = False
        # Run-time state.
        self.lm = None
        self.current_epoch = 0
        self.epoch_lrs: list[float] | None = None
        self.epoch_val_logs: dict[int, dict[str, float]] = {}
        self.resumed_from: str | None = None
        self._worker_dirs_applied = False

    # ---- environment ------------------------------------------------------------------

    def setup_environment(self, stage: str = "train", model_config: Any = None) -> None:
        """CPU thread pools, precision policy and determinism; call before any layer is
        created (``stage``: the run's, "train" for fit; ``model_config``: the config's
        ``model`` section, which ``auto`` thread pools look at)."""
        training = stage == "train"
        serial_step = training and cpu_threads.has_serial_step(model_config)
        cpu_threads.apply(**self.cpu_threads, training=training, gpu=gpu_visible(), serial_step=serial_step)
        policy = PRECISIONS[self.precision]
        keras.mixed_precision.set_dtype_policy(policy)
        if policy != "float32":
            logger.info("precision %s: Keras dtype policy %s", self.precision, policy)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        mode = self.graph_optimizer_mode()
        tf.config.optimizer.set_experimental_options(grappler_options(mode))
        set_memory_optimizer(mode != "functions")
        if mode != "on":
            logger.debug("graph_optimizer %s: traced steps run without Grappler's rewrites", mode)

    def graph_optimizer_mode(self) -> str:
        """``graph_optimizer`` resolved to "on", "off" or "functions": "auto" means Grappler
        on GPUs only (on CPU its rewrites of a training step cost more time than they
        save, see docs/training.md)."""
        if self.graph_optimizer == "functions":
            return "functions"
        return "on" if _on_gpu_if_auto(self.graph_optimizer) else "off"

    def use_jit(self) -> bool:
        """``jit_compile`` resolved: "auto" means XLA on GPUs only (slower than TF's oneDNN
        kernels on CPU, see docs/training.md), and never with ``deterministic``: XLA has no
        deterministic gradient of some ops (max pooling, as in ResNet stems and SimpleCNN),
        which TF's op determinism refuses at the first step."""
        if self.jit_compile == "auto" and self.deterministic:
            return False
        return _on_gpu_if_auto(self.jit_compile)

    def configure_jit(self, lm) -> None:
        if hasattr(lm, "configure_jit"):
            scope = lm.configure_jit(self.use_jit())
            if scope:
                logger.info("jit_compile: the model's %s runs under XLA", "encoder" if scope == "encoder" else "forward/backward pass")

    def make_strategy(self) -> tf.distribute.Strategy:
        from rskeras.train.distribute import make_strategy

        return make_strategy(self.devices, self.accelerator, self.num_nodes, self.strategy)

    # ---- paths --------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self.worker_path(self.default_root_dir or os.path.join("runs", "default"))

    def worker_path(self, directory: str) -> str:
        """``directory`` on the chief, ``directory/<task>`` on other multi-worker tasks
        (every worker keeps its own checkpoints and backup, so that each can resume)."""
        if self.is_chief or not self.worker_name:
            return directory
        return os.path.join(directory, self.worker_name)

    def stage_dataset(self, dm, stage: str, drop_remainder: bool = False, **kwargs) -> tf.data.Dataset:
        """The batched pipeline of ``stage`` that the trainer runs, cut to
        ``limit_<stage>_batches``. A split that is a whole number of batches
        (``dm.whole_batches``) is batched with ``drop_remainder``, which drops nothing there:
        the traced steps then see a static batch size, a smaller graph."""
        dataset = dm.tf_dataset(stage, drop_remainder=drop_remainder or dm.whole_batches(stage), **kwargs)
        steps = self.steps(dm, stage)
        return dataset if steps is None else dataset.take(steps)

    def steps(self, dm, stage: str) -> int | None:
        """Batches per epoch of ``stage`` allowed by ``limit_<stage>_batches`` (None: all)."""
        limit = self.limits[stage]
        if limit is None or (isinstance(limit, float) and limit == 1.0):
            return None
        total = dm.num_batches(stage)
        if isinstance(limit, float):
            count = int(total * limit)
            if count == 0 and limit > 0:
                raise ValueError(f"{_limit_key(stage)}={limit} of {total} batches is less than one batch")
            return count
        return min(int(limit), total)

    def progress_bar(self) -> bool:
        """Whether to draw Keras' progress bar: enabled, and stdout is a terminal (into a
        log file or pipe, fit writes one plain line per epoch instead: no ANSI codes)."""
        isatty = getattr(sys.stdout, "isatty", None)
        return self.enable_progress_bar and bool(isatty and isatty())

    # ---- callbacks ----------------------------------------------------------------------

    def checkpoint_callbacks(self) -> list[Any]:
        return [c for c in self.callbacks if isinstance(c, (BestLastCheckpoint, ModelCheckpoint))]

    def checkpoint_written_this_epoch(self) -> str | None:
        """A checkpoint file that a checkpoint callback of this fit wrote in the current
        epoch end (None if none did)."""
        for c in reversed(self.checkpoint_callbacks()):
            path = getattr(c, "_written_this_epoch", None)
            if path and os.path.isfile(path):
                return path
        return None

    def _prepare_callbacks(self) -> None:
        """Defaults, directories and the trainer reference of every callback."""
        if self.enable_checkpointing and not self.checkpoint_callbacks():
            self.callbacks.append(ModelCheckpoint())
        for c in self.callbacks:
            if isinstance(c, Callback):
                c.trainer = self
            if isinstance(c, ManagedBestLastCheckpoint):
                c.dirpath = self.root
            elif isinstance(c, (BestLastCheckpoint, ModelCheckpoint)) and c.dirpath is None:
                c.dirpath = os.path.join(self.root, "checkpoints")
            elif isinstance(c, (BestLastCheckpoint, ModelCheckpoint)) and not self._worker_dirs_applied:
                c.dirpath = self.worker_path(c.dirpath)
        self._worker_dirs_applied = True

    def warn_about_existing_checkpoints(self, resume: str | None) -> list[str]:
        """A fresh fit whose checkpoint directories already hold checkpoints (of another
        run, or of an earlier run of this config) says so before overwriting them: one
        warning per directory naming the files. Resuming (from the backup, or from a
        ``ckpt_path`` in that directory) continues the same run: no warning. Returns the
        files warned about."""
        found: list[str] = []
        for c in self.checkpoint_callbacks():
            directory = getattr(c, "dirpath", None)
            if not directory or not os.path.isdir(directory):
                continue
            if resume and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(directory):
                continue
            names = sorted(n for n in os.listdir(directory) if n.endswith((".weights.h5", ".ckpt")))
            if names:
                found += [os.path.join(directory, n) for n in names]
                logger.warning(
                    "checkpoint directory %s already holds %s from an earlier run: this fit writes its checkpoints "
                    "there and will overwrite them (set trainer.default_root_dir to keep runs apart)",
                    directory,
                    ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else ""),
                )
        return found

    def _state_key(self, callback: Any) -> str:
        same = [c for c in self.callbacks if type(c) is type(callback)]
        return f"{type(callback).__name__}#{same.index(callback)}"

    def _logger_callbacks(self) -> list[keras.callbacks.Callback]:
        if self.logger is True:
            self.logger = TensorBoardLogger(save_dir=self.default_root_dir or os.path.join("runs", "default"))
        loggers = self.logger if isinstance(self.logger, (list, tuple)) else [self.logger]
        out: list[keras.callbacks.Callback] = []
        for item in loggers:
            if item in (None, False):
                continue
            if not isinstance(item, Logger):
                raise ValueError(f"trainer.logger: expected a bool or a logger (TensorBoardLogger, CSVLogger), got {item!r}")
            out.extend(item.callbacks(self))
        return out

    def _fit_callbacks(self) -> list[keras.callbacks.Callback]:
        user = [c for c in self.callbacks if isinstance(c, keras.callbacks.Callback)]
        if self.fast_dev_run:
            user = [c for c in user if c not in self.checkpoint_callbacks()]
        # Like Lightning, checkpoint callbacks run last, so they save every other
        # callback's state of this epoch.
        ordered = [c for c in user if c not in self.checkpoint_callbacks()] + [c for c in user if c in self.checkpoint_callbacks()]
        controller = _EpochController()
        tail: list[keras.callbacks.Callback] = []
        if self.min_epochs:
            tail.append(_MinEpochsGuard())
        if not self.fast_dev_run:
            tail.append(MetricsFileLogger(self.root))
        tail.extend(self._logger_callbacks())
        if self.backup_and_restore:
            tail.append(_Backup(self.backup_path))
        for c in [controller] + tail:
            if isinstance(c, Callback):
                c.trainer = self
        return [controller] + ordered + tail

    # ---- state --------------------------------------------------------------------------

    @property
    def backup_path(self) -> str:
        return os.path.join(self.root, BACKUP_NAME)

    def global_step(self) -> int:
        """Optimizer steps so far (Lightning's ``global_step``)."""
        if self.lm is None or self.lm.optimizer is None:
            return 0
        return int(to_numpy(unwrap_optimizer(self.lm.optimizer).iterations))

    def training_state(self, epoch: int) -> dict[str, Any]:
        """Everything besides variables that a resume needs, after epoch ``epoch``."""
        lm = self.lm
        scheduler = getattr(lm, "lr_scheduler", None)
        return {
            "epoch": int(epoch),
            "global_step": self.global_step(),
            "callbacks": {self._state_key(c): c.state_dict() for c in self.callbacks if isinstance(c, Callback)},
            "scheduler": scheduler.state_dict() if scheduler is not None and hasattr(scheduler, "state_dict") else None,
            "trainable": [bool(v.trainable) for v in lm.optimizable_variables()],
        }

    def restore_training_state(self, state: dict[str, Any], path: str) -> int:
        """Applies a checkpoint's training state; returns the epoch to start from."""
        lm = self.lm
        flags = state.get("trainable")
        variables = lm.optimizable_variables()
        if flags is not None:
            if len(flags) != len(variables):
                raise ValueError(f"checkpoint {path}: {len(flags)} trainable flags for {len(variables)} model variables")
            for v, flag in zip(variables, flags):
                v.trainable = bool(flag)
        saved = state.get("callbacks") or {}
        for c in self.callbacks:
            if isinstance(c, Callback) and self._state_key(c) in saved:
                c.load_state_dict(saved[self._state_key(c)])
        scheduler = getattr(lm, "lr_scheduler", None)
        if scheduler is not None and state.get("scheduler") is not None and hasattr(scheduler, "load_state_dict"):
            scheduler.load_state_dict(state["scheduler"])
        return int(state.get("epoch", -1)) + 1

    # ---- fit ----------------------------------------------------------------------------

    def configure_optimizer(self, optimizer) -> None:
        """Applies gradient clipping and accumulation to the (unbuilt) optimizer."""
        inner = unwrap_optimizer(optimizer)
        if self.accumulate_grad_batches > 1:
            if inner.built:
                raise RuntimeError("trainer.accumulate_grad_batches must be set before the optimizer is built")
            inner.gradient_accumulation_steps = self.accumulate_grad_batches
        if self.gradient_clip_val:
            if isinstance(inner, TorchAdamW):
                if self.gradient_clip_algorithm == "norm":
                    inner.clip_grad_norm = float(self.gradient_clip_val)
                else:
                    inner.clip_grad_value = float(self.gradient_clip_val)
            else:
                if tf.distribute.get_strategy().num_replicas_in_sync > 1 or self.lm is not None and self.lm.distribute_strategy.num_replicas_in_sync > 1:
                    logger.warning(
                        "%s clips each replica's gradient before the all-reduce; rskeras' AdamW clips the global gradient",
                        type(inner).__name__,
                    )
                if self.gradient_clip_algorithm == "norm":
                    inner.global_clipnorm = float(self.gradient_clip_val)
                else:
                    inner.clipvalue = float(self.gradient_clip_val)

    def _num_epochs(self, dm) -> int:
        if self.max_epochs is not None:
            return self.max_epochs
        per_epoch = self.steps(dm, "train") or dm.num_batches("train")
        optimizer_steps = max(1, per_epoch // self.accumulate_grad_batches)
        return max(1, math.ceil(self.max_steps / optimizer_steps))

    def has_validation(self, dm) -> bool:
        """Whether fit validates: ``limit_val_batches`` is not 0 and the val split has batches."""
        if self.limits["val"] in (0, 0.0):
            return False
        try:
            return dm.num_batches("val") > 0
        except Exception as e:  # noqa: BLE001 - a dataset without a val split
            logger.info("no validation: %s", e)
            return False

    def _print_summary(self, lm) -> None:
        # Lightning's ModelSummary(max_depth=0) turns the summary off; rskeras prints one
        # row per top-level component for any other depth.
        if not (self.enable_model_summary and self.is_chief) or self.model_summary_depth == 0:
            return
        rows = lm.parameter_counts(include_frozen=True)
        trainable = sum(int(np.prod(v.shape)) for v in lm.trainable_variables)
        total = sum(int(np.prod(v.shape)) for v in lm.model.weights)
        width = max([len(k) for k in rows] + [10])
        print(f"\n  {'component':<{width}}  params")
        for name, count in rows.items():
            print(f"  {name:<{width}}  {count:,}")
        print(f"  {trainable:,} trainable params, {total - trainable:,} non-trainable params\n")

    def fit(self, lm, dm, ckpt_path: str | None = None) -> keras.callbacks.History:
        """Trains ``lm`` on ``dm``; resumes from the backup of an interrupted run of the same
        root, else from ``ckpt_path``; applies ``lm.restore_config`` on a fresh fit. Writes
        where its time went, by phase, to ``<root>/timings.json`` (rskeras.train.fit_timings)."""
        self.lm = lm
        self.timings = PhaseClock()
        self.timings.start("setup")
        if not self.fast_dev_run:
            self.lock_run_dir()
        self._prepare_callbacks()
        remove_leftovers(self.root, [c.dirpath for c in self.checkpoint_callbacks() if getattr(c, "dirpath", None)])
        for c in self.callbacks:
            if isinstance(c, Callback):
                c.setup(self, lm)
        with lm.distribute_strategy.scope():
            self.configure_optimizer(lm.optimizer)
            lm.build_optimizer()
            factory = getattr(lm, "scheduler_factory", None)
            lm.lr_scheduler = factory.build(unwrap_optimizer(lm.optimizer)) if factory is not None else None
            initial_epoch = 0
            from_backup = self.backup_and_restore and os.path.exists(self.backup_path)
            resume = self.backup_path if from_backup else ckpt_path
            finished = read_fit_state(self.root) if self.backup_and_restore and not self.fast_dev_run else None
            if finished is not None:
                resume = self._after_finished_fit(lm, dm, finished, resume)
                if resume is None:
                    self.timings.stop("setup")
                    return keras.callbacks.History()
            elif not from_backup and not self.fast_dev_run:
                self.warn_about_existing_checkpoints(resume)
            if resume:
                initial_epoch = self.resume(lm, resume)
            elif getattr(lm, "restore_config", None) is not None:
                restore_from_config(lm.model, lm.restore_config)
        self._print_summary(lm)
        self.configure_jit(lm)

        # Under several replicas a last batch smaller than the replica count would leave a
        # replica with no examples, which some CPU kernels (oneDNN conv backprop) reject.
        # Like Lightning's limit_*_batches, every epoch takes the first batches of a fresh
        # (re-shuffled) pass: Keras' steps_per_epoch would continue the previous pass.
        multi_replica = lm.distribute_strategy.num_replicas_in_sync > 1
        if multi_replica:
            warn_if_cpu_replicas_with_onednn(lm.distribute_strategy, dm.batch_size)
        # overfit_batches: the same first batches every epoch (Lightning turns shuffling off).
        shuffle = False if self.overfit_batches else None
        train = self.stage_dataset(dm, "train", shuffle=shuffle, drop_remainder=multi_replica)
        val = self.stage_dataset(dm, "val") if self.has_validation(dm) else None
        self.timings.stop("setup")
        if val is not None and self.num_sanity_val_steps != 0:
            available = self.steps(dm, "val") or dm.num_batches("val")
            sanity = available if self.num_sanity_val_steps < 0 else min(self.num_sanity_val_steps, available)
            self.timings.start("sanity_validation")
            with surface_errors():
                lm.evaluate(val.take(sanity), verbose=0)
            self.timings.stop("sanity_validation")
        epochs = self._num_epochs(dm)
        start = time.time()
        try:
            with surface_errors(), disk_full_as_error(self.root):
                history = lm.fit(
                    train,
                    validation_data=val,
                    epochs=epochs,
                    initial_epoch=initial_epoch,
                    validation_freq=self.check_val_every_n_epoch,
                    callbacks=[FitTimings(self.timings)] + self._fit_callbacks(),
                    shuffle=False,  # tf.data shuffles the train split itself
                    verbose=(1 if self.progress_bar() else 2) if self.is_chief else 0,
                )
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e} {non_finite_inputs_note(dm)}") from None
        self.timings.start("after_fit")
        if history.epoch:
            logger.info("fit: epochs %d..%d in %.1fs", history.epoch[0], history.epoch[-1], time.time() - start)
        else:
            logger.info("fit: nothing to train (resumed at epoch %d of max_epochs=%d)", initial_epoch, epochs)
        if self.backup_and_restore:
            self._record_finished_fit(lm, epochs)
        if self.backup_and_restore and os.path.exists(os.path.dirname(self.backup_path)):
            shutil.rmtree(os.path.dirname(self.backup_path), ignore_errors=True)
        self.timings.stop("after_fit")
        self.write_timings()
        return history

    def write_timings(self) -> None:
        """Writes ``<root>/timings.json`` (not in a fast_dev_run, which writes nothing; on
        the chief only) and logs the phases' wall seconds."""
        timings = getattr(self, "timings", None)
        if timings is None or self.fast_dev_run or not self.is_chief:
            return
        timings.write(self.root)
        logger.info("fit: wall seconds by phase: %s", timings.summary())

    # ---- the run directory (rskeras.train.run_dir) ---------------------------------------

    def lock_run_dir(self) -> None:
        """Takes this fit's lock on the run directory (refused while another fit holds
        it; kept until the process ends). ``fit`` takes it; the CLI takes it earlier,
        before writing anything there."""
        lock_run_dir(self.root)

    def _final_checkpoints(self) -> dict[str, int]:
        """Checkpoint files the callbacks wrote -> the epoch their training state records."""
        out: dict[str, int] = {}
        for c in self.checkpoint_callbacks():
            for attr in ("last_path", "best_path", "last_model_path", "best_model_path"):
                path = getattr(c, attr, None)
                if path and os.path.isfile(path) and path not in out:
                    with contextlib.suppress(ValueError, OSError):
                        out[path] = int((read_training_state(path) or {}).get("epoch", -1))
        return out

    def _record_finished_fit(self, lm, epochs: int) -> None:
        """Writes ``fit_state.json``: this fit finished (when a checkpoint holds its weights)."""
        checkpoints = self._final_checkpoints()
        if not checkpoints:
            return
        final = max(checkpoints, key=lambda p: (checkpoints[p], os.path.basename(p).startswith("last")))
        write_fit_state(
            self.root,
            {
                "epoch": checkpoints[final],
                "global_step": self.global_step(),
                "max_epochs": epochs,
                "max_steps": self.max_steps,
                "checkpoints": checkpoints,
                "final_checkpoint": final,
                "best_checkpoint": self.best_checkpoint(),
            },
        )

    def _after_finished_fit(self, lm, dm, state: dict[str, Any], resume: str | None) -> str | None:
        """A fit of this run directory finished before: returns None after loading its
        final weights (nothing to train), or the checkpoint to continue from when this
        fit asks for more epochs or steps."""
        final = state.get("final_checkpoint")
        if not final or not os.path.isfile(final):
            logger.warning("%s: the finished fit's checkpoint %s is gone; training afresh", fit_state_path(self.root), final)
            clear_fit_state(self.root)
            return resume
        epochs = self._num_epochs(dm)
        more_epochs = epochs > int(state.get("max_epochs") or 0)
        more_steps = self.max_steps != -1 and (int(state.get("max_steps", -1)) == -1 or self.max_steps > int(state["max_steps"]))
        if more_epochs or more_steps:
            logger.info("the fit in %s finished; this one asks for more (max_epochs %s, max_steps %s): continuing from %s", self.root, epochs, self.max_steps, final)
            clear_fit_state(self.root)
            return resume if resume == self.backup_path else final
        load_training_checkpoint(lm, final, with_optimizer=False)
        self._finished_best = state.get("best_checkpoint")
        print(
            f"fit in {self.root} already finished (epoch {state.get('epoch')}, global step {state.get('global_step')}): "
            f"not training again; weights from {final}. To train afresh, delete {fit_state_path(self.root)} "
            "or set another trainer.default_root_dir"
        )
        return None

    def resume(self, lm, path: str) -> int:
        """Loads a checkpoint for fit; returns the first epoch to run."""
        if path.endswith(".weights.h5"):
            try:
                state = load_training_checkpoint(lm, path, with_optimizer=True)
            except ValueError as e:
                if path == self.backup_path:
                    raise CheckpointError(
                        f"{e}; this is the backup of an interrupted run with another configuration: delete "
                        f"{os.path.dirname(path)} to start afresh"
                    ) from None
                raise
            if state is None:
                logger.warning("%s holds weights only: training starts at epoch 0 with these weights", path)
                return 0
            epoch = self.restore_training_state(state, path)
            self.resumed_from = path
            logger.info("resumed from %s: epoch %d, global step %d", path, epoch, state.get("global_step", 0))
            print(f"resuming from {path} at epoch {epoch}")
            return epoch
        load_torch_weights(lm.model, path)
        logger.warning("%s is not an rskeras training checkpoint: weights loaded, training starts at epoch 0", path)
        return 0

    def best_checkpoint(self) -> str | None:
        """The best checkpoint written by the checkpoint callbacks (or by the finished fit
        this one found in the run directory), if any."""
        for c in self.checkpoint_callbacks():
            path = c.best_path if isinstance(c, BestLastCheckpoint) else c.best_model_path
            if path and os.path.exists(path):
                return path
        finished = getattr(self, "_finished_best", None)
        return finished if finished and os.path.exists(finished) else None

    def logged_val_metrics(self, checkpoint: str) -> dict[str, float] | None:
        """The validation metrics this fit logged for the epoch whose weights ``checkpoint``
        holds (checkpoints are written after that epoch's validation, so they are exactly
        the metrics of those weights), or None when this fit did not validate that epoch
        (a resumed or finished fit, a checkpoint of a non-validation epoch)."""
        try:
            epoch = int((read_training_state(checkpoint) or {}).get("epoch", -1))
        except (CheckpointError, ValueError, TypeError):
            return None
        return dict(self.epoch_val_logs[epoch]) if self.epoch_val_logs.get(epoch) else None

    # ---- evaluation ---------------------------------------------------------------------

    def evaluate(self, lm, dm, stage: str = "val") -> dict[str, float]:
        """Runs the model over a split; returns ``<prefix>_<metric>`` scalars."""
        self.lm = lm
        for c in self.callbacks:
            if isinstance(c, ManagedBestLastCheckpoint):
                c.dirpath = self.root
        prefix = "val" if stage == "val" else "test"
        self.configure_jit(lm)
        with surface_errors():
            logs = lm.evaluate(
                self.stage_dataset(dm, stage),
                return_dict=True,
                verbose=(1 if self.progress_bar() else 0) if self.is_chief else 0,
            )
        return {f"{prefix}_{k}": float(v) for k, v in logs.items()}
