"""Choosing the tf.distribute strategy."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

logger = logging.getLogger(__name__)


def make_strategy(devices: int | str | list | None = "auto", accelerator: str = "auto") -> tf.distribute.Strategy:
    """The strategy for ``trainer.devices`` / ``trainer.accelerator``.

    * ``TF_CONFIG`` with several workers -> MultiWorkerMirroredStrategy;
    * more than one selected GPU (or logical CPU device) -> MirroredStrategy;
    * otherwise the default strategy.

    Args:
        devices: "auto"/-1 (all visible), an int count, or a list of indexes.
        accelerator: "auto", "gpu"/"cuda" or "cpu".
    """
    tf_config = os.environ.get("TF_CONFIG")
    if tf_config:
        cluster = json.loads(tf_config).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            logger.info("TF_CONFIG found: using MultiWorkerMirroredStrategy")
            return tf.distribute.MultiWorkerMirroredStrategy()
    if accelerator not in ("auto", "gpu", "cuda", "cpu"):
        raise ValueError(f"trainer.accelerator must be auto, gpu or cpu, got {accelerator!r}")
    gpus = tf.config.list_logical_devices("GPU") if accelerator != "cpu" else []
    pool = gpus or tf.config.list_logical_devices("CPU")
    names = [d.name for d in pool]
    if devices in (None, "auto", -1, "-1"):
        selected = names if gpus else names[:1] if len(names) == 1 else names
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        count = int(devices)
        if count > len(names):
            raise ValueError(f"trainer.devices={count} but only {len(names)} {'GPU' if gpus else 'CPU'} device(s) are visible")
        selected = names[:count]
    else:
        selected = [names[int(i)] for i in devices]
    if len(selected) > 1:
        logger.info("using MirroredStrategy over %s", selected)
        return tf.distribute.MirroredStrategy(selected)
    if gpus and selected:
        return tf.distribute.OneDeviceStrategy(selected[0])
    return tf.distribute.get_strategy()
