"""Random draws of the input pipeline that are reproducible under ``seed_everything``.

A ``tf.data`` map running in parallel shares each stateful random op (``tf.random.uniform``)
between its threads, so which example gets which number depends on thread timing: two
runs with the same global seed crop, flip and pick item groups differently. With a seed,
rskeras' train pipeline instead

* keeps example order (deterministic parallel maps),
* gives every element of a map stage its own seed, drawn sequentially from
  ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` (different every epoch,
  the same in every run), and
* draws with stateless ops from ``(element seed, k)`` for the k-th draw of the map
  function (:func:`element_seed_scope` around the traced function, :func:`uniform`,
  :func:`normal` inside the transforms).

Outside a scope (no seed, or code called outside the pipeline) the draws use TF's global
stateful RNG, as before. ``seed_everything`` records the seed with :func:`set_seed`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import tensorflow as tf

_STATE = threading.local()
_SEED: list[int | None] = [None]


def set_seed(seed: int | None) -> None:
    """Records the run's seed (``seed_everything``); None: pipelines are not reproducible."""
    _SEED[0] = None if seed is None else int(seed)


def fresh_seed() -> int:
    """A seed from the OS for a pipeline that ``seed_everything`` did not fix."""
    import random

    return random.SystemRandom().randrange(2**31)


def global_seed() -> int | None:
    """The seed recorded by ``seed_everything`` (None if none)."""
    return _SEED[0]


@contextlib.contextmanager
def element_seed_scope(seed: tf.Tensor) -> Iterator[None]:
    """While a map function is traced: draws come from ``seed`` (an int64 scalar tensor)."""
    previous = getattr(_STATE, "scope", None)
    _STATE.scope = [tf.cast(seed, tf.int64), 0]
    try:
        yield
    finally:
        _STATE.scope = previous


def current_seed() -> tf.Tensor | None:
    """The element seed of the scope being traced (None outside a scope)."""
    scope = getattr(_STATE, "scope", None)
    return None if scope is None else scope[0]


def _next_seed() -> tf.Tensor | None:
    scope = getattr(_STATE, "scope", None)
    if scope is None:
        return None
    scope[1] += 1
    return tf.stack([scope[0], tf.constant(scope[1], tf.int64)])


def uniform(shape: Any, minval: Any = 0, maxval: Any = None, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """``tf.random.uniform``, stateless from the element's seed inside a scope."""
    seed = _next_seed()
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    if dtype.is_integer:
        # stateless_uniform needs minval/maxval of the output dtype
        return tf.random.stateless_uniform(shape, seed, tf.cast(minval, dtype), tf.cast(maxval, dtype), dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, 1.0 if maxval is None else maxval, dtype=dtype)


def normal(shape: Any, stddev: float = 1.0, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """``tf.random.normal``, stateless from the element's seed inside a scope."""
    seed = _next_seed()
    if seed is None:
        return tf.random.normal(shape, stddev=stddev, dtype=dtype)
    return tf.random.stateless_normal(shape, seed, stddev=stddev, dtype=dtype)


def with_element_seeds(ds: tf.data.Dataset, seed: int, stream: int) -> tf.data.Dataset:
    """``ds`` zipped with one int64 seed per element (stream ``stream`` of ``seed``)."""
    seeds = tf.data.Dataset.random(seed=seed * 1000 + stream, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((ds, seeds))


def seeded(fn):
    """Wraps a map function ``fn(*element)`` to take ``(element, seed)``: ``fn`` is traced
    inside :func:`element_seed_scope`."""

    def wrapped(element, seed):
        element = element if isinstance(element, tuple) else (element,)
        with element_seed_scope(seed):
            return fn(*element)

    return wrapped


def host_seed(seed: tf.Tensor) -> tf.Tensor:
    """A non-negative int64 seed for host-side ``random.Random`` from an element seed."""
    return tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), tf.constant(0x7FFFFFFF, tf.int64))
