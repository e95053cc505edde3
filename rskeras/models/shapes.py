"""Static-or-dynamic tensor sizes: Python ints where the shape is known (so that sizes
fold into constants and exported graphs keep static shapes), scalar tensors otherwise.

The one place for "the static size if known, else the dynamic one"; every component uses
:func:`dims` / :func:`dim` / :func:`spatial_size`.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import tensorflow as tf


def dims(x: Any, axes: Iterable[int] | None = None) -> list[Any]:
    """Sizes of ``axes`` of ``x`` (default: every axis): Python ints where static, else
    scalar int32 tensors (from one ``tf.shape``). A numpy array gives ints."""
    static = x.shape
    axes = range(len(static)) if axes is None else axes
    if isinstance(x, np.ndarray):
        return [static[a] for a in axes]
    dynamic = None
    out = []
    for a in axes:
        d = static[a]
        if d is None:
            dynamic = tf.shape(x) if dynamic is None else dynamic
            d = dynamic[a]
        out.append(d)
    return out


def dim(x: Any, axis: int) -> Any:
    """Size of ``axis`` of ``x``: an int if static, else a scalar int32 tensor."""
    return dims(x, [axis])[0]


def spatial_size(x: Any) -> tuple[Any, Any]:
    """(H, W) of an NHWC tensor, as Python ints where static, else scalar tensors."""
    h, w = dims(x, (1, 2))
    return h, w


def flatten_dims(x: tf.Tensor, start: int, end: int) -> tf.Tensor:
    """``x`` with axes ``start .. end - 1`` merged into one (row-major).

    Sizes are explicit (static where known), never ``-1``: reshaping an empty tensor
    with an inferred size is ill-defined, and a replica can receive zero examples
    under ``tf.distribute`` when a batch is smaller than the number of replicas.
    """
    sizes = dims(x)
    merged = sizes[start]
    for s in sizes[start + 1 : end]:
        merged = merged * s
    shape = sizes[:start] + [merged] + sizes[end:]
    if all(isinstance(s, int) for s in shape):
        return tf.reshape(x, shape)
    return tf.reshape(x, tf.stack([tf.cast(s, tf.int32) for s in shape]))


def split_last(x: tf.Tensor, size: int) -> tf.Tensor:
    """``x`` ``[..., C]`` reshaped to ``[..., C // size, size]`` (explicit sizes)."""
    sizes = dims(x)
    shape = sizes[:-1] + [sizes[-1] // size, size]
    if all(isinstance(s, int) for s in shape):
        return tf.reshape(x, shape)
    return tf.reshape(x, tf.stack([tf.cast(s, tf.int32) for s in shape]))
