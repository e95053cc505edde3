"""Keras <-> torch layouts: export with torch_state_dict, load back, and torch itself if installed."""

import numpy as np
import pytest

from rskeras.models.satlaspretrain import SatlasUpsample
from rskeras.models.simple_time_series import SimpleTimeSeries
from rskeras.models.swin import Swin
from rskeras.weights.errors import WeightLoadError
from rskeras.weights.torch_params import load_torch_state_dict, torch_state_dict


def _tiny_series(op):
    encoder = Swin(arch="swin_t", output_layers=[1], embed_dim=4, depths=[1], num_heads=[1], window_size=[2, 2])
    return SimpleTimeSeries(encoder, op=op, num_layers=1)


@pytest.mark.parametrize("op", ["conv3d", "conv1d", "convrnn"])
def test_export_then_load_round_trips(op):
    a, b = _tiny_series(op), _tiny_series(op)
    state = torch_state_dict(a)
    assert "encoder.model.features.1.0.attn.relative_position_bias_table" in state
    assert "encoder.model.features.1.0.attn.relative_position_index" not in state  # recomputed buffer
    load_torch_state_dict(b, state, strict=False)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_unexpected_and_missing_keys_are_named():
    layer = SatlasUpsample([(2, 4)])
    state = torch_state_dict(layer, "up")
    state["up.layers.9.0.weight"] = np.zeros(1, np.float32)
    del state["up.layers.0.2.bias"]
    with pytest.raises(WeightLoadError, match=r"missing \(1\): up.layers.0.2.bias.*unexpected \(1\): up.layers.9.0.weight"):
        load_torch_state_dict(layer, state, prefix="up")


def test_layouts_agree_with_torch_modules():
    torch = pytest.importorskip("torch")
    layer = SatlasUpsample([(2, 3)])  # Conv2d(3,3,3,p1) + ConvTranspose2d(3,3,4,s2,p1)
    state = torch_state_dict(layer)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    deconv = torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1)
    conv.load_state_dict({"weight": torch.tensor(state["layers.0.0.weight"]), "bias": torch.tensor(state["layers.0.0.bias"])})
    deconv.load_state_dict({"weight": torch.tensor(state["layers.0.2.weight"]), "bias": torch.tensor(state["layers.0.2.bias"])})
    x = np.random.RandomState(0).randn(2, 5, 7, 3).astype(np.float32)
    with torch.no_grad():
        expected = torch.relu(deconv(torch.relu(conv(torch.tensor(x).permute(0, 3, 1, 2))))).permute(0, 2, 3, 1).numpy()
    got = layer([x])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
