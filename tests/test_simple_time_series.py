"""SimpleTimeSeries against rslearn (golden simple_time_series_*.npz, small Swin-v2 encoder)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from _components_golden import SMALL_SWIN, assert_close, config, images, load, nhwc, weights
from rskeras.models.component import FeatureExtractor
from rskeras.models.simple_time_series import SimpleTimeSeries
from rskeras.models.swin import Swin
from rskeras.weights.torch_params import load_torch_state_dict

# fixtures of convrnn / conv3d / conv1d_groups keep only scales 0 and 1 (size)
PARTIAL = {"convrnn", "conv3d", "conv1d_groups"}


@pytest.fixture(scope="module")
def encoder_state():
    return weights(load("swin_v2_small.npz"), "encoder.model.")


@pytest.mark.parametrize("name", ["max", "mean", "convrnn", "conv3d", "conv1d", "max_groups", "conv1d_groups"])
def test_simple_time_series_matches_rslearn(name, encoder_state):
    """atol 1e-4 (dominated by the Swin encoder; observed <= 2.3e-5)."""
    z = load(f"simple_time_series_{name}.npz")
    args = {k: v for k, v in config(z)["init_args"].items() if k != "encoder"}
    encoder = Swin(arch="swin_v2_t", output_layers=[1, 3, 5, 7], **SMALL_SWIN)
    model = SimpleTimeSeries(encoder, **args)
    state = {**encoder_state, **weights(z)}
    load_torch_state_dict(model, state, strict=name not in PARTIAL)
    outs = model({"image": images(z["in/image"])})
    n_groups = len(args.get("groups") or [0])
    assert [o.shape[-1] for o in outs] == [c * n_groups for c in (24, 48, 96, 192)]
    scales = 2 if name in PARTIAL else 4
    for i in range(scales):
        assert_close(outs[i], nhwc(z[f"out/feat{i}"]), 1e-4, f"simple_time_series_{name} feat{i}")


def test_encoder_sees_example_major_batch(encoder_state):
    """The encoder gets B*T single-timestep images ordered b0t0, b0t1, ..., b1t0."""
    z = load("simple_time_series_max.npz")
    encoder = Swin(arch="swin_v2_t", output_layers=[1, 3, 5, 7], **SMALL_SWIN)
    model = SimpleTimeSeries(encoder, backbone_channels=[[4, 24], [8, 48], [16, 96], [32, 192]])
    load_torch_state_dict(model, encoder_state)
    batched, n = model._batched_images({"image": images(z["in/image"])})
    assert n == 4 and tuple(batched["image"].shape) == (8, 1, 48, 48, 5)
    for i, out in enumerate(encoder(batched)):
        assert_close(out, nhwc(z[f"out/encoder/feat{i}"]), 1e-4, f"encoder feat{i}")


class _MeanOverTime(FeatureExtractor):
    """Test encoder: per-image mean over its k timesteps, one map per key."""

    def __init__(self, keys=("image",), **kwargs):
        super().__init__(**kwargs)
        self.keys = keys
        self.seen = {}

    def call(self, context, training=None):
        self.seen = {k: tuple(v.shape) for k, v in context.items()}
        return [tf.concat([tf.reduce_mean(context[k], axis=1) for k in self.keys], axis=-1)]

    def get_backbone_channels(self):
        return [(1, 2 * len(self.keys))]


def test_chunks_of_timesteps_groups_and_keys():
    rng = np.random.RandomState(0)
    a = rng.rand(2, 6, 4, 4, 2).astype(np.float32)
    b = rng.rand(2, 6, 4, 4, 2).astype(np.float32)
    encoder = _MeanOverTime(keys=("a", "b"))
    model = SimpleTimeSeries(encoder, num_timesteps_per_forward_pass=2, op="max", groups=[[0], [1, 2]], image_keys=["a", "b"])
    (out,) = model({"a": a, "b": b})
    assert encoder.seen == {"a": (6, 2, 4, 4, 2), "b": (6, 2, 4, 4, 2)}
    chunks = np.concatenate([a, b], axis=-1).reshape(2, 3, 2, 4, 4, 4).mean(axis=2)
    expected = np.concatenate([chunks[:, 0], chunks[:, 1:].max(axis=1)], axis=-1)
    assert_close(out, expected, 1e-6, "chunks/groups/keys")
    assert model.get_backbone_channels() == [(1, 8)]
    # deprecated forms: image_channels (k = 4 // 2 = 2) and dict image_keys
    old = SimpleTimeSeries(_MeanOverTime(), image_channels=4, op="mean")
    new = SimpleTimeSeries(_MeanOverTime(), num_timesteps_per_forward_pass=2, op="mean")
    np.testing.assert_allclose(old({"image": a})[0].numpy(), new({"image": a})[0].numpy())
    keyed = SimpleTimeSeries(_MeanOverTime(), image_keys={"image": 4}, op="mean")
    np.testing.assert_allclose(keyed({"image": a})[0].numpy(), new({"image": a})[0].numpy())


def test_argument_errors():
    encoder = _MeanOverTime()
    with pytest.raises(ValueError, match="num_layers must be specified"):
        SimpleTimeSeries(encoder, op="convrnn")
    with pytest.raises(ValueError, match="op must be one of"):
        SimpleTimeSeries(encoder, op="median")
    model = SimpleTimeSeries(encoder, num_timesteps_per_forward_pass=4)
    with pytest.raises(ValueError, match="not divisible"):
        model({"image": np.zeros((1, 6, 4, 4, 2), np.float32)})
    deep = SimpleTimeSeries(encoder, op="conv3d", num_layers=1)
    with pytest.raises(ValueError, match="depth after 1 layers is 2"):
        deep({"image": np.zeros((1, 4, 4, 4, 2), np.float32)})


def test_config_round_trip():
    encoder = Swin(arch="swin_v2_t", output_layers=[1, 3], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4])
    model = SimpleTimeSeries(encoder, op="convrnn", num_layers=2)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.count_params() == model.count_params()
    assert [p.key for p in clone.torch_params("")] == [p.key for p in model.torch_params("")]
    assert "rnn_layers.1.1.0.weight" in {p.key for p in model.torch_params("")}
