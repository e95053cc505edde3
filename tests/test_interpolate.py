"""rskeras.models.interpolate: torch legacy-nearest semantics, XLA-compilable gradients."""

import numpy as np
import pytest
import tensorflow as tf

from rskeras.models.interpolate import nearest_indices, resize_nearest

# (in, out) pairs: integer up/down factors, ratios whose float32 scale rounds (3, 7, 10),
# identity.
SIZES = [(4, 8), (3, 9), (5, 15), (7, 21), (10, 30), (8, 4), (9, 3), (11, 5), (10, 4), (10, 17), (5, 12), (6, 6), (1, 5)]


def reference(x, size):
    """TF's ResizeNearestNeighbor kernel without half-pixel centres: torch's legacy formula."""
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False, half_pixel_centers=False)


@pytest.mark.parametrize("hin,hout", SIZES)
def test_nearest_indices_and_static_resize_equal_the_kernel(hin, hout):
    win, wout = hout, hin  # both directions at once
    x = tf.constant(np.random.RandomState(0).randn(2, hin, win, 3).astype(np.float32))
    want = reference(x, [hout, wout]).numpy()
    np.testing.assert_array_equal(resize_nearest(x, (hout, wout)).numpy(), want)
    np.testing.assert_array_equal(want[0, :, 0, 0], x.numpy()[0, nearest_indices(hin, hout), 0, 0])


def test_dynamic_sizes_equal_the_kernel():
    fn = tf.function(lambda x, s: resize_nearest(x, (s[0], s[1])), input_signature=[tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([2], tf.int32)])
    rng = np.random.RandomState(1)
    for (hin, hout), (win, wout) in zip(SIZES, reversed(SIZES)):
        x = tf.constant(rng.randn(1, hin, win, 2).astype(np.float32))
        np.testing.assert_array_equal(fn(x, tf.constant([hout, wout])).numpy(), reference(x, [hout, wout]).numpy())


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_gradient_compiles_under_xla_and_equals_the_kernel_gradient(dynamic_batch):
    """ResizeNearestNeighborGrad has no XLA CPU kernel; this resize's gradient must compile
    and equal it (x2 upsampling as in UNet/Fpn, a non-integer ratio, a downsampling)."""
    rng = np.random.RandomState(2)
    for hin, win, hout, wout in [(4, 5, 8, 10), (5, 6, 12, 7), (9, 8, 3, 4)]:
        x = tf.constant(rng.randn(2, hin, win, 3).astype(np.float32))
        weight = tf.constant(rng.randn(2, hout, wout, 3).astype(np.float32))

        def grad(x, resize):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(resize(x) * weight)
            return tape.gradient(y, x)

        spec = [tf.TensorSpec([None, hin, win, 3])] if dynamic_batch else None
        compiled = tf.function(lambda x: grad(x, lambda v: resize_nearest(v, (hout, wout))), jit_compile=True, input_signature=spec)
        want = grad(x, lambda v: reference(v, [hout, wout]))
        np.testing.assert_allclose(compiled(x).numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
