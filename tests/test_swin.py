"""Swin v1/v2 parity with torchvision (golden swin_v{1,2}_small.npz) and full-arch facts."""

import gc
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from _components_golden import SMALL_SWIN, assert_close, load, nhwc, weights
from conftest import FIXTURES
from rskeras.models.swin import ARCHS, Swin, SwinTransformer, _roll
from rskeras.weights.errors import WeightLoadError
from rskeras.weights.torch_params import load_torch_state_dict

ARCH_OF_VERSION = {1: "swin_t", 2: "swin_v2_t"}


def small_swin(version: int, output_layers):
    return Swin(arch=ARCH_OF_VERSION[version], output_layers=output_layers, **SMALL_SWIN)


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def golden_swin(request):
    version = request.param
    z = load(f"swin_v{version}_small.npz")
    state = weights(z, "model.")
    features = small_swin(version, list(range(8)))
    classifier = small_swin(version, None)
    for model in (features, classifier):
        load_torch_state_dict(model, state)  # strict: every key used, buffers consumed
    return version, z, features, classifier


@pytest.mark.parametrize("size", ["64x64", "40x56"])
def test_swin_features_and_logits_match_torchvision(golden_swin, size):
    """All 8 feature modules + classification logits; atol 1e-4 (observed <= 2.1e-5)."""
    version, z, features, classifier = golden_swin
    x = nhwc(z[f"in/{size}"])[:, None]
    outs = features({"image": x})
    assert len(outs) == 8
    for k, out in enumerate(outs):
        assert_close(out, nhwc(z[f"out/{size}/feat{k}"]), 1e-4, f"swin v{version} {size} feat{k}")
    assert_close(classifier({"image": x}), z[f"out/{size}/logits"], 1e-4, f"swin v{version} {size} logits")


def test_swin_dynamic_shapes_match_golden(golden_swin):
    """Unknown batch/H/W at trace time take the tensor-valued padding/shift/mask path."""
    version, z, features, _ = golden_swin
    if version == 1:
        pytest.skip("the dynamic path is shared by v1 and v2; v2 covers it (test time)")
    fn = tf.function(lambda img: features({"image": img}), input_signature=[tf.TensorSpec([None, 1, None, None, 5], tf.float32)])
    x = nhwc(z["in/40x56"])[:, None]
    for k, out in enumerate(fn(x)):
        assert_close(out, nhwc(z[f"out/40x56/feat{k}"]), 1e-4, f"swin v{version} dynamic feat{k}")


def test_v2_key_bias_is_ignored():
    """torchvision zeroes the key third of qkv.bias at run time; so must we."""
    z = load("swin_v2_small.npz")
    state = weights(z, "model.")
    key = "model.features.1.0.attn.qkv.bias"
    assert np.abs(state[key][24:48]).max() > 0  # the fixture stores a non-zero key bias
    changed = dict(state)
    changed[key] = state[key].copy()
    changed[key][24:48] = 123.0
    a, b = small_swin(2, [1]), small_swin(2, [1])
    load_torch_state_dict(a, state)
    load_torch_state_dict(b, changed)
    x = nhwc(z["in/64x64"])[:, None]
    np.testing.assert_array_equal(a({"image": x})[0].numpy(), b({"image": x})[0].numpy())


def test_roll_matches_numpy():
    x = tf.reshape(tf.range(2 * 5 * 3), [2, 5, 3])
    for shift in (-4, -2, 0, 1, 3, 5):
        np.testing.assert_array_equal(_roll(x, shift, 1).numpy(), np.roll(x.numpy(), shift, axis=1))
        np.testing.assert_array_equal(_roll(x, tf.constant(shift), 1).numpy(), np.roll(x.numpy(), shift, axis=1))


def test_stochastic_depth_only_in_training():
    model = Swin(arch="swin_v2_t", output_layers=[3], embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=[4, 4], stochastic_depth_prob=0.9)
    x = np.random.RandomState(0).rand(4, 1, 32, 32, 3).astype(np.float32)
    eval_a = model({"image": x})[0].numpy()
    eval_b = model({"image": x}, training=False)[0].numpy()
    np.testing.assert_array_equal(eval_a, eval_b)
    train = model({"image": x}, training=True)[0].numpy()
    assert np.isfinite(train).all() and not np.allclose(train, eval_a)


def test_stochastic_depth_probabilities_increase_linearly():
    net = SwinTransformer(embed_dim=8, depths=[1, 2, 1], num_heads=[1, 1, 1], window_size=[4, 4], stochastic_depth_prob=0.3)
    assert [b.stochastic_depth.p for b in net.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_arch_param_counts_and_shapes(arch):
    """Build-only facts of rslearn Swin(arch, input_channels=9, output_layers=[1,3,5,7])."""
    facts = json.loads((FIXTURES / "swin_arch_facts.json").read_text())["swin"][arch]
    model = Swin(arch=arch, input_channels=9, output_layers=[1, 3, 5, 7])
    total = model.count_params()
    features_only = total - model.model.norm.count_params() - model.model.head.count_params()
    assert total == facts["params_total"]
    assert features_only == facts["params_features_only"]
    # the 3-channel variant differs only by the patch-embedding conv
    embed = ARCHS[arch]["embed_dim"]
    assert total - 6 * embed * 16 == facts["params_input_channels_3"]
    outs = model({"image": np.zeros((1, 1, 64, 64, 9), np.float32)})
    assert [list(np.transpose(np.zeros(o.shape), (0, 3, 1, 2)).shape) for o in outs] == facts["output_shapes_64x64"]
    assert [list(c) for c in model.get_backbone_channels()] == facts["get_backbone_channels_[1,3,5,7]"]
    table = [list(c) for c in model.model.feature_channels()]  # what output_layers [0..7] gives
    assert table == [[64 // shape[2], shape[1]] for shape in facts["output_shapes_all_layers_64x64"]]
    if arch.endswith("_b"):
        # rslearn's base table is off for indexes 2, 4, 6 (documented deviation)
        assert table != facts["get_backbone_channels_[0..7]"]
    else:
        assert table == facts["get_backbone_channels_[0..7]"]
    del model
    gc.collect()


def test_classification_mode_and_exact_3_channel_count():
    model = Swin(arch="swin_t")
    assert model.count_params() == 28_288_354
    logits = model({"image": np.zeros((2, 1, 32, 32, 3), np.float32)})
    assert tuple(logits.shape) == (2, 1000)


def test_output_layer_validation_and_unknown_arch():
    with pytest.raises(ValueError, match="unknown swin architecture"):
        Swin(arch="swin_xl")
    with pytest.raises(ValueError, match="output_layers"):
        Swin(arch="swin_t", output_layers=[8], embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="single timestep"):
        small_swin(2, [1])({"image": np.zeros((1, 2, 32, 32, 5), np.float32)})


def test_pretrained_needs_local_weights_and_loads_them(tmp_path, caplog):
    # One policy for pretrained encoders (as SatlasPretrain): no local weights -> random init, warned.
    with caplog.at_level("WARNING"):
        Swin(arch="swin_v2_t", pretrained=True, output_layers=[1], **SMALL_SWIN)
    assert "no weights_path given, the model is randomly initialised" in caplog.text
    z = load("swin_v2_small.npz")
    path = tmp_path / "torchvision_swin.npz"
    np.savez(path, **weights(z))  # torchvision keys, no "model." prefix
    model = Swin(arch="swin_v2_t", pretrained=True, weights_path=str(path), output_layers=[1], **SMALL_SWIN)
    # input_channels 5 != 3 and num_outputs 7 != 1000: conv and head stay random (as rslearn)
    block = model.model.stages[0][0].mlp_fc1.kernel.numpy()
    np.testing.assert_array_equal(block, z["w/features.1.0.mlp.0.weight"].T)
    assert not np.array_equal(model.model.patch_conv.kernel.numpy(), z["w/features.0.0.weight"].transpose(2, 3, 1, 0))
    assert not np.array_equal(model.model.head.kernel.numpy(), z["w/head.weight"].T)


def test_shape_mismatch_is_an_error():
    z = load("swin_v2_small.npz")
    model = Swin(arch="swin_v2_t", output_layers=[1], **{**SMALL_SWIN, "embed_dim": 32})
    with pytest.raises(WeightLoadError, match="shape mismatch"):
        load_torch_state_dict(model, weights(z, "model."))


def test_config_round_trip():
    model = Swin(arch="swin_t", output_layers=[1, 3], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4])
    clone = Swin.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert restored.get_backbone_channels() == [(4, 8), (8, 16)]


@pytest.mark.parametrize("arch", ["swin_v2_t"])
def test_tflite_builtins_conversion_with_shifted_windows(arch):
    """A tiny Swin with active shifts (and padding) converts with builtin ops only."""
    from ai_edge_litert.interpreter import Interpreter

    model = Swin(arch=arch, output_layers=[1, 3], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])
    x = np.random.RandomState(0).randn(1, 1, 24, 40, 3).astype(np.float32)
    expected = [o.numpy() for o in model({"image": x})]
    inp = keras.Input((1, 24, 40, 3), batch_size=1, name="image")
    functional = keras.Model(inp, model({"image": inp}))
    converter = tf.lite.TFLiteConverter.from_keras_model(functional)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    outs = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()), key=lambda o: -o.shape[1])
    for got, want in zip(outs, expected):
        assert_close(got, want, 1e-4, f"{arch} tflite")
    # The export form leaves out the ops that XNNPACK does not delegate (each one a
    # partition boundary): an unequal split (the shift), UNPACK (q, k, v) and the
    # stride-2 strided slices of the patch merging.
    ops = [o["op_name"] for o in interpreter._get_ops_details()]
    assert "SPLIT_V" not in ops and "UNPACK" not in ops, sorted(set(ops))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    for o in interpreter._get_ops_details():
        if o["op_name"] == "STRIDED_SLICE":
            strides = interpreter.get_tensor(o["inputs"][3]) if o["inputs"][3] in details else None
            assert strides is None or (np.asarray(strides) == 1).all(), strides


def test_trainer_step_form_equals_the_export_form():
    """Inside ``trainer_step_graph()`` (the trainer's steps) the shift is a split and the
    patch merging strided slices; outside, slices and a reshape: the same values and
    gradients."""
    from rskeras.models.step_graph import trainer_step_graph

    keras.utils.set_random_seed(0)
    model = Swin(arch="swin_v2_t", output_layers=[1, 3], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])
    x = tf.constant(np.random.RandomState(1).randn(2, 1, 24, 40, 3).astype(np.float32))

    @tf.function
    def outputs_and_grads(x):
        with tf.GradientTape() as tape:
            outs = model({"image": x}, training=False)
            loss = sum(tf.reduce_sum(o * o) for o in outs)
        return outs, tape.gradient(loss, model.trainable_variables)

    # The forms are exact rewrites, but their matmuls see other memory layouts, so float32
    # sums may be reordered (with Grappler off, as an earlier trainer test in the same
    # process leaves it on CPU). Each tensor is compared to 1e-4 of its own scale: the
    # gradient of a logit scale sums every attention logit with cancellation, and over 20
    # seeds differs by up to 4e-5 of its scale; the outputs agree to ~1e-6.
    export_form = outputs_and_grads(x)
    with trainer_step_graph():
        trainer_form = tf.function(outputs_and_grads.python_function)(x)
    for a, b in zip(tf.nest.flatten(export_form), tf.nest.flatten(trainer_form)):
        a, b = a.numpy(), b.numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_int8_tflite_runs_and_stays_close_to_float():
    """Full-integer TFLite of a tiny Swin v2 (shifted windows, padding) runs and stays close
    to float32. Its cosine attention once divided by a quantised norm (a DIV node whose
    divisor's range held the zero point: ``div.cc:262 data[i] != zero_point`` at run
    time); the normalisation is now ``x * rsqrt(...)``, so the graph has no DIV."""
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    model = Swin(arch="swin_v2_t", output_layers=[1, 3], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])
    rng = np.random.default_rng(0)
    inp = keras.Input((1, 24, 40, 3), batch_size=1, name="image")
    functional = keras.Model(inp, model({"image": inp}))

    def representative():
        for _ in range(8):
            yield [rng.uniform(0, 1, (1, 1, 24, 40, 3)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(functional)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    assert not [o for o in interpreter._get_ops_details() if o["op_name"] == "DIV"]
    interpreter.allocate_tensors()
    x = rng.uniform(0, 1, (1, 1, 24, 40, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    outs = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()), key=lambda o: -o.shape[1])
    for got, want in zip(outs, [o.numpy() for o in functional(x)]):
        assert got.shape == want.shape
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99  # measured 0.998-0.999
        assert np.abs(got - want).max() <= 0.2 * np.abs(want).max()  # measured 0.08-0.10


def test_mixed_precision_runs():
    """Constants (masks, position bias) follow the compute dtype under mixed_bfloat16."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for arch in ("swin_t", "swin_v2_t"):
            model = Swin(arch=arch, output_layers=[1, 3], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])
            outs = model({"image": np.random.RandomState(0).rand(1, 1, 40, 56, 3).astype(np.float32)})
            assert all(o.dtype == tf.bfloat16 and np.isfinite(o.numpy().astype(np.float32)).all() for o in outs)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_v2_padded_windows_have_finite_gradients_under_xla():
    """Padding tokens are zero vectors (bias 0 at init): their cosine-attention
    normalisation must give torch's gradient, not the NaN of a sqrt gradient at 0 that
    XLA produced (the anchor classification config trained to a NaN loss under XLA)."""
    keras.utils.set_random_seed(0)
    model = Swin(arch="swin_v2_t", output_layers=[3], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])
    x = tf.constant(np.random.RandomState(0).rand(2, 1, 24, 24, 3).astype(np.float32))
    model({"image": x})  # 6x6 and 3x3 maps: padded to 8x8 and 4x4 windows

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model({"image": x})[0]))
        return tape.gradient(loss, model.trainable_variables)

    eager = grads()
    compiled = tf.function(grads, jit_compile=True)()
    for v, a, b in zip(model.trainable_variables, eager, compiled):
        if a is None:  # layers after the requested feature map
            continue
        assert np.isfinite(b.numpy()).all(), f"{v.path}: non-finite gradient under XLA"
        scale = float(np.abs(a.numpy()).max()) + 1e-6  # float32 rounding of sums of large terms
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-4 * scale, err_msg=v.path)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("hw", [(2, 2), (3, 4), (4, 1)])
def test_map_smaller_than_a_window_matches_the_padded_computation(version, hw):
    """The shortcut for a map smaller than one window (real tokens only) gives torchvision's
    padded computation (the map zero-padded to the window, unmasked, outputs cropped): the
    same outputs and the same gradients for the input and every weight."""
    from rskeras.models.swin import ShiftedWindowAttention

    h, w = hw
    layer = ShiftedWindowAttention(8, (4, 4), (2, 2), 2, version)
    layer.build()
    rng = np.random.default_rng(version)
    for var in layer.weights:  # non-zero biases and logit scales, so the padding matters
        var.assign(rng.normal(scale=0.3, size=var.shape).astype(np.float32))
    x = tf.constant(rng.normal(size=(2, h, w, 8)).astype(np.float32))

    def run(padded: bool):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(tf.pad(x, [[0, 0], [0, 4 - h], [0, 4 - w], [0, 0]]))[:, :h, :w] if padded else layer(x)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [x] + layer.trainable_weights)

    fast, fast_grads = run(False)
    slow, slow_grads = run(True)
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-5, atol=1e-5)
    for g_fast, g_slow, var in zip(fast_grads, slow_grads, [x] + layer.trainable_weights):
        name = getattr(var, "path", "input")
        assert (g_fast is None) == (g_slow is None), name
        if g_fast is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(g_fast).numpy(), tf.convert_to_tensor(g_slow).numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
