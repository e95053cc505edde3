"""What hardware TensorFlow sees (the trainer's and the layers' "auto" choices)."""

from __future__ import annotations

import functools

import tensorflow as tf


@functools.lru_cache(maxsize=None)
def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (listing physical devices does not start the runtime,
    so the CPU thread pools can still be set afterwards)."""
    return bool(tf.config.list_physical_devices("GPU"))
