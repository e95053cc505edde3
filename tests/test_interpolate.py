"""rskeras.models.interpolate: torch legacy-nearest semantics, XLA-compilable gradients."""

import numpy as np
import pytest
import tensorflow as tf

from rskeras.models.interpolate import nearest_indices, resize_nearest
from rskeras.models.step_graph import trainer_step_graph

# (in, out) pairs: integer up/down factors, ratios whose float32 scale rounds (3, 7, 10),
# identity.
SIZES = [(4, 8), (3, 9), (5, 15), (7, 21), (10, 30), (8, 4), (9, 3), (11, 5), (10, 4), (10, 17), (5, 12), (6, 6), (1, 5)]


def reference(x, size):
    """TF's ResizeNearestNeighbor kernel without half-pixel centres: torch's legacy formula."""
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False, half_pixel_centers=False)


@pytest.mark.parametrize("in_trainer_step", [False, True])
@pytest.mark.parametrize("hin,hout", SIZES)
def test_nearest_indices_and_static_resize_equal_the_kernel(hin, hout, in_trainer_step):
    """Both forms (the trainer's XLA broadcast, the resize op) pick the kernel's pixels."""
    win, wout = hout, hin  # both directions at once
    x = tf.constant(np.random.RandomState(0).randn(2, hin, win, 3).astype(np.float32))
    want = reference(x, [hout, wout]).numpy()
    if in_trainer_step:
        with trainer_step_graph(xla=True):
            got = resize_nearest(x, (hout, wout)).numpy()
    else:
        got = resize_nearest(x, (hout, wout)).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want[0, :, 0, 0], x.numpy()[0, nearest_indices(hin, hout), 0, 0])


def test_dynamic_sizes_equal_the_kernel():
    fn = tf.function(lambda x, s: resize_nearest(x, (s[0], s[1])), input_signature=[tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([2], tf.int32)])
    rng = np.random.RandomState(1)
    for (hin, hout), (win, wout) in zip(SIZES, reversed(SIZES)):
        x = tf.constant(rng.randn(1, hin, win, 2).astype(np.float32))
        np.testing.assert_array_equal(fn(x, tf.constant([hout, wout])).numpy(), reference(x, [hout, wout]).numpy())


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_gradient_compiles_under_xla_and_equals_the_kernel_gradient(dynamic_batch):
    """ResizeNearestNeighborGrad has no XLA CPU kernel; the trainer's form of this resize
    (what ``trainer.jit_compile`` compiles) must compile its gradient and equal it (x2
    upsampling as in UNet/Fpn, a non-integer ratio, a downsampling)."""
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
        with trainer_step_graph(xla=True):
            got = compiled(x)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_export_form_of_an_integer_upsampling_is_one_tflite_resize_op():
    """Outside the trainer's steps an x2 nearest upsampling is one RESIZE_NEAREST_NEIGHBOR
    (XNNPACK runs it; the broadcast form is a BROADCAST_TO that XNNPACK leaves to TFLite's
    own kernel: 90 ms of a 256x256 segmentation model); the TFLite output equals the kernel."""
    from ai_edge_litert.interpreter import Interpreter

    fn = tf.function(lambda x: resize_nearest(x, (16, 12)), input_signature=[tf.TensorSpec([1, 8, 6, 4])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    ops = [o["op_name"] for o in interpreter._get_ops_details()]
    assert "RESIZE_NEAREST_NEIGHBOR" in ops and "BROADCAST_TO" not in ops, ops
    x = np.random.RandomState(3).randn(1, 8, 6, 4).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(got, reference(tf.constant(x), [16, 12]).numpy())


def test_form_per_step_kind():
    """The broadcast in XLA steps (and on GPUs); on CPU the trainer's plain steps and
    exports take the resize op, whose gradient equals the broadcast's."""
    x = tf.constant(np.random.RandomState(4).randn(2, 4, 5, 3).astype(np.float32))

    def ops_and_grad(xla, step):
        @tf.function
        def f(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = resize_nearest(x, (8, 10))
                loss = tf.reduce_sum(y * y * tf.range(1.0, 4.0))
            return tape.gradient(loss, x)

        if step:
            with trainer_step_graph(xla=xla):
                graph = f.get_concrete_function(x).graph
                grad = f(x)
        else:
            graph = f.get_concrete_function(x).graph
            grad = f(x)
        return {op.type for op in graph.get_operations()}, grad.numpy()

    xla_ops, xla_grad = ops_and_grad(True, True)
    step_ops, step_grad = ops_and_grad(False, True)
    export_ops, _ = ops_and_grad(False, False)
    assert "BroadcastTo" in xla_ops and "ResizeNearestNeighbor" not in xla_ops
    assert "ResizeNearestNeighbor" in export_ops
    assert ("ResizeNearestNeighbor" in step_ops) == (not tf.config.list_physical_devices("GPU"))
    np.testing.assert_allclose(step_grad, xla_grad, rtol=1e-6)
