"""Conv2d: on tiny static maps it runs as one matmul over its taps; same values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rskeras.models.torch_nn import MATMUL_CONV_MAX_PIXELS, Conv2d


def _reference(layer, x):
    """Explicit symmetric zero padding, then the valid convolution."""
    pads = layer._pads
    xp = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
    y = tf.nn.conv2d(xp, tf.cast(layer.conv.kernel, x.dtype), strides=layer.stride, padding="VALID")
    return tf.nn.bias_add(y, tf.cast(layer.conv.bias, x.dtype)) if layer.use_bias else y


def _assert_matches_reference(layer, x):
    """``layer(x)`` and its gradients (w.r.t. ``x`` and the weights) equal the reference's."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got, want = layer(x), _reference(layer, x)
        loss_got, loss_want = tf.reduce_sum(got * tf.sin(got)), tf.reduce_sum(want * tf.sin(want))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    for g, w in zip(tape.gradient(loss_got, [x, *layer.trainable_variables]), tape.gradient(loss_want, [x, *layer.trainable_variables])):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "hw, kernel, padding, use_bias",
    [((2, 2), 3, "same", True), ((4, 4), 3, 1, False), ((1, 1), 3, "same", True), ((4, 3), (3, 1), (1, 0), True), ((2, 2), 1, 0, True), ((5, 5), 2, "valid", True)],
)
def test_tiny_maps_match_the_convolution_and_its_gradients(hw, kernel, padding, use_bias):
    tf.random.set_seed(0)
    layer = Conv2d(6, 5, kernel, padding=padding, use_bias=use_bias)
    if use_bias:
        layer.bias.assign(tf.random.normal(layer.bias.shape))
    x = tf.random.normal([3, *hw, 6])
    _assert_matches_reference(layer, x)


def _op_types(layer, shape):
    fn = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    return {op.type for op in fn.graph.get_operations()}


def test_the_matmul_form_is_used_on_tiny_static_maps_only():
    layer = Conv2d(4, 4, 3, padding="same")
    assert MATMUL_CONV_MAX_PIXELS == 16
    tiny = _op_types(layer, [None, 4, 4, 4])
    assert "MatMul" in tiny and "Conv2D" not in tiny
    assert "Conv2D" in _op_types(layer, [None, 8, 8, 4])  # 64 pixels: the convolution kernel
    assert "Conv2D" in _op_types(layer, [None, None, None, 4])  # dynamic size
    strided = Conv2d(4, 4, 3, stride=2, padding=1)
    assert "Conv2D" in _op_types(strided, [None, 4, 4, 4])


def test_mixed_precision_keeps_the_compute_dtype():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        layer = Conv2d(4, 3, 3, padding="same")
        x = tf.random.normal([2, 2, 2, 4])
        y, ref = layer(x), _reference(layer, tf.cast(x, tf.bfloat16))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert y.dtype == ref.dtype == tf.bfloat16
    assert layer.conv.kernel.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), tf.cast(ref, tf.float32).numpy(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kernel, padding, stride, native", [(3, 1, 1, True), (3, "same", 1, True), (5, 2, 1, True), ((3, 1), (1, 0), 1, True), (3, 1, 2, False), (2, "same", 1, False), (3, 2, 1, False)])
def test_torch_padding_runs_inside_the_convolution_where_it_is_tensorflows_same(kernel, padding, stride, native):
    """Stride 1 with (k - 1) / 2 on each side of an odd kernel is TensorFlow's "same": no
    padded copy of the input in the graph (nor, in the backward pass, a padded input
    gradient to slice); other paddings stay explicit. Values and gradients equal explicit
    padding either way."""
    tf.random.set_seed(1)
    layer = Conv2d(3, 4, kernel, stride=stride, padding=padding)
    layer.bias.assign(tf.random.normal(layer.bias.shape))
    x = tf.random.normal([2, 9, 8, 3])
    types = _op_types(layer, [None, 9, 8, 3])
    assert ("Pad" not in types and "PadV2" not in types) == native, types
    _assert_matches_reference(layer, x)
