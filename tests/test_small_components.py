"""Conv, PoolingDecoder, PixelShuffle, reshaping ops, ConcatenateFeatures, activations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from _components_golden import assert_close, config, load, nhwc, weights
from rskeras.models import activations
from rskeras.models.concatenate_features import ConcatenateFeatures, flatten_time_into_channels
from rskeras.models.conv import Conv
from rskeras.models.feature_center_crop import FeatureCenterCrop
from rskeras.models.pick_features import PickFeatures
from rskeras.models.pixel_shuffle import PixelShuffle
from rskeras.models.pooling_decoder import PoolingDecoder, SegmentationPoolingDecoder
from rskeras.models.resize_features import ResizeFeatures
from rskeras.models.upsample import Upsample
from rskeras.weights.torch_params import load_torch_state_dict


@pytest.mark.parametrize("name", ["conv", "conv_bn_stride2"])
def test_conv_matches_rslearn(name):
    """'same' stride 1, and padding 1 / stride 2 with BatchNorm (symmetric torch padding); atol 1e-5."""
    z = load(f"{name}.npz")
    conv = Conv(**config(z)["init_args"])
    load_torch_state_dict(conv, weights(z))
    outs = conv([nhwc(z["in/feat0"]), nhwc(z["in/feat1"])])
    for i, out in enumerate(outs):
        assert_close(out, nhwc(z[f"out/feat{i}"]), 1e-5, f"{name} feat{i}")


def test_conv_arguments():
    with pytest.raises(ValueError, match="requires stride 1"):
        Conv(4, 4, 3, stride=2)
    conv = Conv(4, 6, 3, padding=0, activation={"class_path": "torch.nn.LeakyReLU", "init_args": {"negative_slope": 0.2}})
    (out,) = conv([np.random.RandomState(0).randn(1, 7, 7, 4).astype(np.float32)])
    assert tuple(out.shape) == (1, 5, 5, 6) and out.numpy().min() < 0
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(conv))
    assert clone.get_config() == conv.get_config()


def test_pooling_decoder_matches_rslearn():
    """Only the last map is used, global MAX pool; atol 1e-5."""
    z = load("pooling_decoder.npz")
    decoder = PoolingDecoder(**config(z)["init_args"])
    load_torch_state_dict(decoder, weights(z))
    out = decoder([nhwc(z["in/feat0"]), nhwc(z["in/feat1"])])
    assert_close(out, z["out/vector"], 1e-5, "pooling_decoder")


def test_pooling_decoder_param_count_and_segmentation_variant():
    assert PoolingDecoder(1024, 3, num_conv_layers=1, num_fc_layers=2).count_params() == 1_510_019
    z = load("pooling_decoder.npz")
    args = config(z)["init_args"]
    seg = SegmentationPoolingDecoder(image_key="img", **args)
    load_torch_state_dict(seg, weights(z))
    context = {"img": np.zeros((2, 1, 9, 7, 3), np.float32)}
    (out,) = seg([nhwc(z["in/feat0"]), nhwc(z["in/feat1"])], context=context)
    assert tuple(out.shape) == (2, 9, 7, 3)
    expected = np.broadcast_to(z["out/vector"][:, None, None, :], (2, 9, 7, 3))
    assert_close(out, expected, 1e-5, "segmentation pooling decoder")


@pytest.mark.parametrize("r,maps", [(2, ["feat0", "feat1"]), (3, ["feat0"])])
def test_pixel_shuffle_is_exact(r, maps):
    z = load("pixel_shuffle.npz")
    outs = PixelShuffle(r)([nhwc(z[f"in/r{r}/{m}"]) for m in maps])
    for out, m in zip(outs, maps):
        np.testing.assert_array_equal(out.numpy(), nhwc(z[f"out/r{r}/{m}"]))


OPS = {
    "pick_features": PickFeatures,
    "upsample_bilinear2": Upsample,
    "upsample_nearest2": Upsample,
    "upsample_bilinear3": Upsample,
    "resize_bilinear": ResizeFeatures,
    "resize_nearest": ResizeFeatures,
    "center_crop": FeatureCenterCrop,
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_reshape_ops_match_rslearn(op):
    """Exact for pick/nearest/crop; bilinear atol 2e-6 (torch's own f32 noise is 1.9e-6)."""
    z = load("reshape_ops.npz")
    layer = OPS[op](**config(z)[op]["init_args"])
    outs = layer([nhwc(z[f"in/feat{i}"]) for i in range(3)])
    n = len([k for k in z.files if k.startswith(f"out/{op}/")])
    assert len(outs) == n
    atol = 2e-6 if "bilinear" in op else 0.0
    for i, out in enumerate(outs):
        assert_close(out, nhwc(z[f"out/{op}/feat{i}"]), atol, f"{op} feat{i}")


def test_center_crop_and_pick_errors():
    with pytest.raises(ValueError, match="smaller than the crop"):
        FeatureCenterCrop([[5, 5]])([np.zeros((1, 4, 8, 2), np.float32)])
    with pytest.raises(ValueError, match="out of range"):
        PickFeatures([2])([np.zeros((1, 4, 4, 2), np.float32)])
    with pytest.raises(ValueError, match="mode"):
        Upsample(2, mode="bicubic")


def test_concatenate_features_channel_major_and_resize():
    rng = np.random.RandomState(0)
    raw = rng.randn(2, 3, 8, 8, 2).astype(np.float32)  # [B, T, H, W, C]
    flat = flatten_time_into_channels(tf.constant(raw)).numpy()
    # rslearn: (c t) flattening, channel index c * T + t
    np.testing.assert_array_equal(flat[..., 1 * 3 + 2], raw[:, 2, :, :, 1])
    layer = ConcatenateFeatures("extra", in_channels=6, conv_channels=5, out_channels=4, num_conv_layers=2)
    assert [p.key for p in layer.torch_params("m")] == ["m.conv_layers.0.weight", "m.conv_layers.0.bias", "m.conv_layers.2.weight", "m.conv_layers.2.bias"]
    feats = [rng.randn(2, 8, 8, 3).astype(np.float32), rng.randn(2, 4, 4, 7).astype(np.float32)]
    outs = layer(feats, context={"extra": raw})
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 7), (2, 4, 4, 11)]
    np.testing.assert_array_equal(outs[1].numpy()[..., :7], feats[1])
    conv = layer.conv_layers
    expected = conv[1](tf.nn.relu(conv[0](flat))).numpy()
    assert_close(outs[0][..., 3:], expected, 1e-6, "concatenate same size")
    assert_close(outs[1][..., 7:], tf.image.resize(expected, (4, 4)).numpy(), 1e-6, "concatenate resized")
    with pytest.raises(ValueError, match="in_channels and out_channels"):
        ConcatenateFeatures("extra")
    plain = ConcatenateFeatures("extra", num_conv_layers=0)
    assert plain([feats[0]], context={"extra": raw})[0].shape[-1] == 9


def test_activations_follow_torch():
    x = np.linspace(-4, 4, 41).astype(np.float32)
    from math import erf

    gelu = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(activations.GELU()(x).numpy(), gelu, atol=1e-6)
    np.testing.assert_allclose(activations.ReLU(inplace=True)(x).numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(activations.LeakyReLU()(x).numpy(), np.where(x >= 0, x, 0.01 * x), atol=1e-7)
    np.testing.assert_allclose(activations.SiLU()(x).numpy(), x / (1 + np.exp(-x)), atol=1e-6)
    np.testing.assert_allclose(activations.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x)), atol=1e-6)
    np.testing.assert_allclose(activations.Tanh()(x).numpy(), np.tanh(x), atol=1e-6)
    np.testing.assert_array_equal(activations.Identity(54, unused=1)(x).numpy(), x)
    assert isinstance(activations.get_activation("torch.nn.GELU"), activations.GELU)
    assert isinstance(activations.get_activation(None), activations.ReLU)
    with pytest.raises(ValueError, match="unknown activation"):
        activations.get_activation("torch.nn.Softmax2d")


@pytest.mark.parametrize(
    "layer",
    [
        Conv(4, 6, 3, padding=1, stride=2, batch_norm=True),
        PoolingDecoder(8, 3, num_conv_layers=1, num_fc_layers=1, conv_channels=4, fc_channels=5),
        SegmentationPoolingDecoder(8, 3, image_key="img", num_fc_layers=1),
        PickFeatures([1, -1]),
        Upsample(3, mode="nearest"),
        ResizeFeatures([[3, 4]], mode="nearest"),
        FeatureCenterCrop([[2, 2]]),
        PixelShuffle(2),
        ConcatenateFeatures("extra", in_channels=2, out_channels=3),
        activations.LeakyReLU(0.3),
        activations.GELU(approximate="tanh"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_config_round_trips(layer):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]
