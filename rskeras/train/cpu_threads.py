"""TensorFlow's CPU thread pools for a run: ``trainer.intra_op_threads`` / ``inter_op_threads``.

TensorFlow runs independent ops of a traced step at the same time on its inter-op pool and
splits each large op over its intra-op pool. By default both pools have one thread per
core, so on a small machine they oversubscribe the cores: two ops at a time, each split in
two, on two cores. A training step always has independent work (the weight and the input
gradient of every layer, every variable's update), so on two cores one thread per op and
two ops at a time keep both cores busy without the hand-offs: on the anchor configs
(2-core Xeon, docs/benchmarks.md) the fit's train CPU-s per epoch fell by 10-13 % at the
same or a higher rate of samples. A forward-only step has less of that independent work
(an eval step of the segmentation model: 13 % less CPU but 38 % more wall time), and so
has Faster R-CNN's train step, whose proposal sampling, NMS and RoIAlign gathers are long
serial stretches (the anchor detection fit: the same CPU, 22 % fewer samples/s). So
``auto`` changes the pools for training runs only, on machines with exactly two logical
cores and no GPU, of models without a Faster R-CNN head; elsewhere (not measured, or
measured slower) TensorFlow's defaults stay.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from rskeras.config.class_paths import import_class, iter_class_paths, map_class_path
from rskeras.config.errors import ConfigError

logger = logging.getLogger(__name__)

AUTO = "auto"
ENV_VARS = {"intra_op_threads": "TF_NUM_INTRAOP_THREADS", "inter_op_threads": "TF_NUM_INTEROP_THREADS"}


def check_thread_setting(key: str, value) -> int | str:
    """``auto`` or an int >= 0 (0: TensorFlow's default, one thread per core)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"trainer.{key} must be 'auto' or an int >= 0 (0: TensorFlow's default), got {value!r}")
    return value


def schedulable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity, as TensorFlow counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def has_serial_step(model_config) -> bool:
    """Whether the model config builds a component whose class sets ``serial_train_step``
    (a train step with long serial stretches, e.g. FasterRCNN). Classes that cannot be
    imported here count as not serial (building the run reports them)."""
    for _, path in iter_class_paths(model_config):
        try:
            cls = import_class(map_class_path(str(path)))
        except (ImportError, AttributeError):
            continue
        if getattr(cls, "serial_train_step", False):
            return True
    return False


def resolve(
    intra_op_threads, inter_op_threads, *, training: bool, gpu: bool, serial_step: bool = False, cores: int | None = None
) -> dict[str, int]:
    """The pool sizes to set: {key: threads}; a key left out keeps TensorFlow's default
    (or the TF_NUM_*_THREADS environment variable, which ``auto`` never overrides).
    ``gpu``: whether a GPU is visible (the trainer's answer)."""
    cores = schedulable_cores() if cores is None else cores
    small_cpu_training = training and cores == 2 and not gpu and not serial_step
    auto = {"intra_op_threads": 1, "inter_op_threads": 2} if small_cpu_training else {}
    out: dict[str, int] = {}
    for key, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
        if value == AUTO:
            if key in auto and not os.environ.get(ENV_VARS[key]):
                out[key] = auto[key]
        elif value:
            out[key] = value
    return out


def apply(intra_op_threads, inter_op_threads, *, training: bool, gpu: bool, serial_step: bool = False) -> dict[str, int]:
    """Sets the pools (before TensorFlow's first op); returns what was set. If TensorFlow
    already runs (a Python session that ran ops before building the run), the pools stay:
    an explicit setting then logs a warning, ``auto`` a debug line."""
    settings = {"intra_op_threads": intra_op_threads, "inter_op_threads": inter_op_threads}
    wanted = resolve(**settings, training=training, gpu=gpu, serial_step=serial_step)
    setters = {
        "intra_op_threads": tf.config.threading.set_intra_op_parallelism_threads,
        "inter_op_threads": tf.config.threading.set_inter_op_parallelism_threads,
    }
    done: dict[str, int] = {}
    for key, threads in wanted.items():
        try:
            setters[key](threads)
            done[key] = threads
        except RuntimeError:
            explicit = settings[key] != AUTO
            (logger.warning if explicit else logger.debug)(
                "trainer.%s=%d not applied: TensorFlow was already running in this process", key, threads
            )
    if done:
        logger.info("CPU thread pools: %s", ", ".join(f"{k.replace('_threads', '')} {v}" for k, v in done.items()))
    return done
