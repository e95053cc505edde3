"""Choosing the ``tf.distribute`` strategy from Lightning's trainer arguments.

* ``TF_CONFIG`` naming several tasks -> ``MultiWorkerMirroredStrategy`` (one process per
  machine, every local GPU a replica; ``trainer.num_nodes`` must match the number of
  workers when given);
* more than one selected GPU (or logical CPU device, for tests) ->
  ``MirroredStrategy``;
* one GPU -> ``OneDeviceStrategy``; otherwise the default strategy.

Lightning's ``strategy`` values map onto these: "auto", "ddp", "ddp_spawn",
"ddp_find_unused_parameters_true", "ddp_notebook", "dp", "single_device" and
``lightning.pytorch.strategies.DDPStrategy`` (rslearn's default) all mean data parallel
over the selected devices; "fsdp", "deepspeed" and other sharded strategies are errors.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow as tf

logger = logging.getLogger(__name__)

DATA_PARALLEL = {
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false",
    "dp",
    "single_device",
}
DATA_PARALLEL_CLASSES = {"DDPStrategy", "SingleDeviceStrategy", "DataParallelStrategy"}


def strategy_name(strategy: str | dict[str, Any] | None) -> str:
    """Validates ``trainer.strategy`` and returns its short name."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, dict):
        class_name = str(strategy.get("class_path", "")).rsplit(".", 1)[-1]
        if class_name not in DATA_PARALLEL_CLASSES:
            raise ValueError(
                f"trainer.strategy: {strategy.get('class_path')!r} is not supported by rskeras "
                f"(data-parallel strategies only: {sorted(DATA_PARALLEL_CLASSES)})"
            )
        return "single_device" if class_name == "SingleDeviceStrategy" else "ddp"
    if strategy not in DATA_PARALLEL:
        raise ValueError(f"trainer.strategy: {strategy!r} is not supported by rskeras (use one of {sorted(DATA_PARALLEL)})")
    return strategy


def tf_config() -> dict[str, Any]:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None


def num_workers() -> int:
    cluster = tf_config().get("cluster", {})
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def worker_info() -> tuple[bool, str]:
    """(is_chief, task name) of this process from ``TF_CONFIG`` ((True, "") without it).

    The chief is task ``chief``, or ``worker`` 0 when the cluster has no chief.
    """
    config = tf_config()
    task = config.get("task") or {}
    if not config or num_workers() <= 1:
        return True, ""
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = bool(config.get("cluster", {}).get("chief"))
    chief = task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)
    return chief, f"{task_type}_{index}"


def make_strategy(
    devices: int | str | list | None = "auto",
    accelerator: str = "auto",
    num_nodes: int = 1,
    strategy: str | dict[str, Any] | None = "auto",
) -> tf.distribute.Strategy:
    """The strategy for ``trainer.devices`` / ``accelerator`` / ``num_nodes`` / ``strategy``.

    Args:
        devices: "auto"/-1 (all visible), an int count, or a list of indexes (per machine).
        accelerator: "auto", "gpu"/"cuda" or "cpu".
        num_nodes: machines; > 1 needs ``TF_CONFIG`` with that many workers.
        strategy: a Lightning strategy name or class node (data parallel only).
    """
    name = strategy_name(strategy)
    if accelerator not in ("auto", "gpu", "cuda", "cpu"):
        raise ValueError(f"trainer.accelerator must be auto, gpu or cpu, got {accelerator!r}")
    workers = num_workers()
    if num_nodes > 1 and workers != num_nodes:
        raise ValueError(
            f"trainer.num_nodes={num_nodes} needs TF_CONFIG describing {num_nodes} workers "
            f"(found {workers or 'no TF_CONFIG'}); see docs/training.md"
        )
    if workers > 1:
        logger.info("TF_CONFIG with %d workers: using MultiWorkerMirroredStrategy", workers)
        if accelerator == "cpu":
            tf.config.set_visible_devices([], "GPU")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU") if accelerator != "cpu" else []
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ValueError(f"trainer.accelerator={accelerator!r} but no GPU is visible")
    pool = gpus or tf.config.list_logical_devices("CPU")
    names = [d.name for d in pool]
    if devices in (None, "auto", -1, "-1"):
        selected = names
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        count = int(devices)
        if count < 1 or count > len(names):
            raise ValueError(f"trainer.devices={count} but {len(names)} {'GPU' if gpus else 'CPU'} device(s) are visible")
        selected = names[:count]
    else:
        indexes = [int(i) for i in (devices.split(",") if isinstance(devices, str) else devices) if str(i).strip() != ""]
        if any(i < 0 or i >= len(names) for i in indexes):
            raise ValueError(f"trainer.devices={devices} but only devices 0..{len(names) - 1} are visible")
        selected = [names[i] for i in indexes]
    if name == "single_device":
        selected = selected[:1]
    if len(selected) > 1:
        logger.info("using MirroredStrategy over %s", selected)
        return tf.distribute.MirroredStrategy(selected)
    if gpus and selected:
        return tf.distribute.OneDeviceStrategy(selected[0])
    return tf.distribute.get_strategy()
