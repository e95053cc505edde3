"""Static-or-dynamic tensor sizes: Python ints where the shape is known (so that sizes
fold into constants and exported graphs keep static shapes), scalar tensors otherwise."""

from __future__ import annotations

import tensorflow as tf


def dim(x: tf.Tensor, axis: int):
    """Size of ``axis`` of ``x``: an int if static, else a scalar int32 tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def flatten_dims(x: tf.Tensor, start: int, end: int) -> tf.Tensor:
    """``x`` with axes ``start .. end - 1`` merged into one (row-major).

    Sizes are explicit (static where known), never ``-1``: reshaping an empty tensor
    with an inferred size is ill-defined, and a replica can receive zero examples
    under ``tf.distribute`` when a batch is smaller than the number of replicas.
    """
    rank = len(x.shape)
    sizes = [dim(x, a) for a in range(rank)]
    merged = sizes[start]
    for s in sizes[start + 1 : end]:
        merged = merged * s
    shape = sizes[:start] + [merged] + sizes[end:]
    if all(isinstance(s, int) for s in shape):
        return tf.reshape(x, shape)
    return tf.reshape(x, tf.stack([tf.cast(s, tf.int32) for s in shape]))


def split_last(x: tf.Tensor, size: int) -> tf.Tensor:
    """``x`` ``[..., C]`` reshaped to ``[..., C // size, size]`` (explicit sizes)."""
    rank = len(x.shape)
    sizes = [dim(x, a) for a in range(rank)]
    shape = sizes[:-1] + [sizes[-1] // size, size]
    if all(isinstance(s, int) for s in shape):
        return tf.reshape(x, shape)
    return tf.reshape(x, tf.stack([tf.cast(s, tf.int32) for s in shape]))
