"""Test-time visualisations (rslearn ``RslearnLightningModule(visualize_dir=...)``).

For every example of the split, ``task.visualize(input, target, output)`` returns named
H×W×3 uint8 images, saved as ``<visualize_dir>/<window_name>_<crop_x0>_<crop_y0>_<name>.png``
(crop origin in absolute window pixel coordinates, as rslearn names them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf

from rskeras.train.model_context import SampleMetadata
from rskeras.train.prediction_writer import iterate_with_outputs, split_batch
from rskeras.utils.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)


def visualization_path(visualize_dir: str, metadata: SampleMetadata, name: str) -> str:
    return os.path.join(visualize_dir, f"{metadata.window_name}_{metadata.crop_bounds[0]}_{metadata.crop_bounds[1]}_{name}.png")


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an H×W×3 (or H×W / H×W×1) uint8 image as PNG."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8:
        raise ValueError(f"visualization {path}: expected a uint8 image, got {array.dtype}")
    atomic_write_bytes(path, tf.io.encode_png(array).numpy())


def write_visualizations(lm: Any, data: Any, visualize_dir: str, stage: str = "test", limit: int | None = None) -> int:
    """Runs the model over ``stage`` and saves ``task.visualize`` images; returns the
    number of files written."""
    os.makedirs(visualize_dir, exist_ok=True)
    task = lm.task
    written = 0
    for inputs, targets, outputs, metadata in iterate_with_outputs(lm, data, stage, limit, desc="visualize"):
        size = int(tf.shape(metadata["window_index"])[0])
        to_np = lambda x: tf.nest.map_structure(lambda t: t.numpy(), x)  # noqa: E731
        ins, tgts, outs = split_batch(to_np(inputs), size), split_batch(to_np(targets), size), split_batch(to_np(outputs), size)
        for i in range(size):
            md = SampleMetadata.from_tensors(metadata, i)
            for name, image in task.visualize(ins[i], tgts[i], outs[i]).items():
                save_png(visualization_path(visualize_dir, md, name), image)
                written += 1
    logger.info("wrote %d visualizations to %s", written, visualize_dir)
    return written
