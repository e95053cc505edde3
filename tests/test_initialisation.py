"""Fresh weights start as torch's do: each weight its own random draw, torch's distributions.

The rslearn anchor classification config (Swin-v2-T -> PoolingDecoder) stayed at chance in
rskeras while rslearn learned it: unseeded Keras initializers return the same values at
every call, and one instance was shared by several weights, so e.g. every Swin block's
second MLP matrix was a reshaped copy of its first and ``attn.proj`` a slice of
``attn.qkv``. With rslearn's own initial weights loaded, rskeras learned the config at
once. These tests pin both halves: no two weights of a component share their values, and
every weight's mean and standard deviation equal those of the torch component (statistics
in fixtures/torch_init_stats.json, made by fixtures/make_torch_init_stats.py) within
sampling error.
"""

import json

import keras
import numpy as np
import pytest

from conftest import FIXTURES
from rskeras.models.conv import Conv
from rskeras.models.faster_rcnn import FasterRCNN
from rskeras.models.fpn import Fpn
from rskeras.models.pooling_decoder import PoolingDecoder
from rskeras.models.resnet import ResNet
from rskeras.models.swin import Swin, SwinTransformer
from rskeras.models.torch_nn import fresh_initializer, linear, normal_initializer
from rskeras.models.unet import UNetDecoder

TORCH_STATS = json.loads((FIXTURES / "torch_init_stats.json").read_text())
BACKBONE = [[4, 96], [8, 192], [16, 384], [32, 768]]


def build(name: str):
    """The rskeras counterpart of fixture entry ``name`` (see make_torch_init_stats.py)."""
    if name == "swin_v2_t":
        return Swin(arch="swin_v2_t", input_channels=12, output_layers=[1, 3, 5, 7])
    if name == "swin_v1_small":
        model = SwinTransformer(
            patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], stochastic_depth_prob=0.2, num_classes=7, version=1
        )
        model.build()
        return model
    if name == "pooling_decoder":
        return PoolingDecoder(in_channels=768, out_channels=3, num_conv_layers=1, num_fc_layers=1)
    if name == "unet":
        return UNetDecoder(in_channels=BACKBONE, out_channels=3)
    if name == "unet_batch_norm":
        return UNetDecoder(in_channels=BACKBONE, out_channels=1, use_batch_norm=True)
    if name == "fpn":
        return Fpn(in_channels=[96, 192, 384, 768], out_channels=128)
    if name == "faster_rcnn":
        return FasterRCNN(downsample_factors=[4, 8, 16, 32], num_channels=128, num_classes=3, anchor_sizes=[[8], [16], [32], [64]])
    if name == "conv":
        return Conv(in_channels=12, out_channels=32, kernel_size=3)
    if name == "resnet18":
        return ResNet("resnet18", in_channels=3, num_classes=7)
    raise KeyError(name)


COMPONENTS = sorted(k for k in TORCH_STATS if not k.startswith("_"))


@pytest.fixture(scope="module")
def fresh():
    """name -> {torch key: fresh rskeras value in torch layout}, one seeded build each."""
    keras.utils.set_random_seed(0)
    out = {}
    for name in COMPONENTS:
        layer = build(name)
        out[name] = {p.key: np.asarray(p.variable.numpy()) for p in layer.torch_params("") if p.variable is not None}
        del layer
    return out


def test_every_torch_key_has_a_fresh_weight(fresh):
    for name in COMPONENTS:
        expected = {k for k in TORCH_STATS[name] if not k.endswith(("relative_coords_table", "relative_position_index"))}
        assert expected <= set(fresh[name]), f"{name}: no rskeras weight for {sorted(expected - set(fresh[name]))[:5]}"


@pytest.mark.parametrize("name", COMPONENTS)
def test_no_two_weights_start_with_the_same_values(fresh, name):
    """Would have failed before the fix: Swin mlp.0/mlp.3 and attn.qkv/attn.proj (and the
    FPN convs, RPN head convs, box predictor layers) were drawn by one shared initializer."""
    groups: dict[tuple, list[str]] = {}
    for key, value in fresh[name].items():
        flat = value.ravel()
        if flat.size >= 16 and flat.std() > 0:
            groups.setdefault(tuple(flat[:16].tolist()), []).append(key)
    shared = [keys for keys in groups.values() if len(keys) > 1]
    assert not shared, f"{name}: weights start with identical values: {shared[:3]}"


@pytest.mark.parametrize("name", COMPONENTS)
def test_fresh_weight_statistics_match_torch(fresh, name):
    """Mean and std of every tensor (of 32 or more values) as torch's fresh component,
    within sampling error (6 standard errors); constants exactly."""
    problems = []
    for key, (count, mean, std, low, high) in TORCH_STATS[name].items():
        if key not in fresh[name]:
            continue  # buffers rskeras recomputes (relative position tables)
        value = fresh[name][key].astype(np.float64)
        assert value.size == count, f"{name}.{key}: {value.size} elements, torch {count}"
        if std == 0.0 and count > 1:
            if not np.allclose(value, mean, atol=1e-6):
                problems.append(f"{key}: torch constant {mean}, rskeras mean {value.mean():.4g} std {value.std():.3g}")
            continue
        if count < 32:
            continue  # too few draws for a statistic (tiny biases)
        se = std / np.sqrt(count)
        ok = abs(value.mean() - mean) <= 6 * se * np.sqrt(2) and abs(value.std() - std) <= 6 * std / np.sqrt(count) + 0.01 * std
        # bounded (uniform) draws stay inside torch's range
        ok = ok and value.min() >= low - 3 * std and value.max() <= high + 3 * std
        if not ok:
            problems.append(f"{key}: torch mean {mean:.4g} std {std:.4g}, rskeras mean {value.mean():.4g} std {value.std():.4g}")
    assert not problems, f"{name}: fresh weights differ from torch's:\n  " + "\n  ".join(problems[:10])


def test_fresh_initializer_gives_new_draws():
    shared = normal_initializer(0.02)
    a, b = shared((64,)), shared((64,))
    np.testing.assert_array_equal(a, b)  # the Keras behaviour that caused the bug
    c, d = fresh_initializer(shared)((64,)), fresh_initializer(shared)((64,))
    assert not np.array_equal(c, d) and not np.array_equal(a, c)
    seeded = keras.initializers.RandomNormal(seed=3)
    assert fresh_initializer(seeded) is seeded  # an explicit seed is the caller's choice
    assert fresh_initializer("zeros") == "zeros"
    # layers built from one instance still get distinct weights
    one = keras.initializers.RandomUniform(-1, 1)
    x, y = linear(8, 8, kernel_initializer=one), linear(8, 8, kernel_initializer=one)
    x.build((None, 8))
    y.build((None, 8))
    assert not np.array_equal(x.kernel.numpy(), y.kernel.numpy())
