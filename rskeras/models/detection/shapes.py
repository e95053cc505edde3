"""Static-or-dynamic tensor sizes: Python ints where the shape is known (so that sizes
fold into constants and exported graphs keep static shapes), scalar tensors otherwise."""

from __future__ import annotations

import tensorflow as tf


def dim(x: tf.Tensor, axis: int):
    """Size of ``axis`` of ``x``: an int if static, else a scalar int32 tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]
