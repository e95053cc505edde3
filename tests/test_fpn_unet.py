"""Fpn, UNetDecoder and the SatlasPretrain FPN + upsampling tail against rslearn goldens."""

import keras
import numpy as np
import pytest

from _components_golden import assert_close, config, load, nhwc, weights
from rskeras.models.fpn import Fpn
from rskeras.models.satlaspretrain import SatlasUpsample
from rskeras.models.unet import UNetDecoder
from rskeras.weights.torch_params import load_torch_state_dict


@pytest.mark.parametrize("group", ["", "odd/"], ids=["pow2", "odd_sizes"])
def test_fpn_matches_rslearn(group):
    """Includes non-power-of-two sizes (torch legacy nearest resize); atol 1e-5."""
    z = load("fpn.npz")
    fpn = Fpn(**config(z)["init_args"])
    load_torch_state_dict(fpn, weights(z))
    outs = fpn([nhwc(z[f"in/{group}feat{i}"]) for i in range(4)])
    for i, out in enumerate(outs):
        assert_close(out, nhwc(z[f"out/{group}feat{i}"]), 1e-5, f"fpn {group}feat{i}")


def test_fpn_prepend_and_param_count():
    z = load("fpn.npz")
    fpn = Fpn(**config(z)["init_args"], prepend=True)
    load_torch_state_dict(fpn, weights(z))
    ins = [nhwc(z[f"in/feat{i}"]) for i in range(4)]
    outs = fpn(ins)
    assert len(outs) == 8
    np.testing.assert_array_equal(outs[4].numpy(), ins[0])
    assert_close(outs[0], nhwc(z["out/feat0"]), 1e-5, "fpn prepend")
    assert Fpn([128, 256, 512, 1024], 128).count_params() == 836_608


def test_fpn_wrong_number_of_maps():
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        Fpn([4, 8], 4)([np.zeros((1, 4, 4, 4), np.float32)])
    with pytest.raises(ValueError, match="must be FeatureMaps"):
        Fpn([4], 4)(np.zeros((1, 4, 4, 4), np.float32))


@pytest.mark.parametrize("name", ["unet_a", "unet_b"])
def test_unet_matches_rslearn(name):
    """unet_a: defaults; unet_b: 2 convs/res, num_channels {8: 10}, BN, resize to 60x60. atol 1e-4."""
    z = load(f"{name}.npz")
    unet = UNetDecoder(**config(z)["init_args"])
    load_torch_state_dict(unet, weights(z))  # strict: BN num_batches_tracked consumed
    (out,) = unet([nhwc(z[f"in/feat{i}"]) for i in range(4)])
    assert_close(out, nhwc(z["out/feat0"]), 1e-4, name)


def test_unet_param_counts_of_spec_example():
    channels = [[4, 128], [8, 256], [16, 512], [32, 1024]]
    assert UNetDecoder(channels, 10).count_params() == 19_035_530
    assert UNetDecoder(channels, 10, conv_layers_per_resolution=2).count_params() == 22_428_170


def test_unet_target_resolution_and_no_output_conv():
    unet = UNetDecoder([[4, 8], [8, 16]], None, target_resolution_factor=4)
    (out,) = unet([np.zeros((1, 16, 16, 8), np.float32), np.zeros((1, 8, 8, 16), np.float32)])
    assert tuple(out.shape) == (1, 16, 16, 8)
    unet = UNetDecoder([[4, 8], [8, 16]], 3, target_resolution_factor=8)  # finer map unused
    (out,) = unet([np.zeros((1, 16, 16, 8), np.float32), np.zeros((1, 8, 8, 16), np.float32)])
    assert tuple(out.shape) == (1, 8, 8, 3)


def test_unet_config_round_trip():
    unet = UNetDecoder([[4, 8], [8, 16]], 3, num_channels={"4": 6}, use_batch_norm=True)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(unet))
    assert clone.get_config() == unet.get_config()
    assert clone.count_params() == unet.count_params()


def test_satlas_fpn_upsample_tail_matches():
    """satlaspretrain_models FPN + Upsample (width 12) -> five maps; atol 1e-5."""
    z = load("satlas_upsample_fpn.npz")
    cfg = config(z)
    fpn = Fpn([c for _, c in cfg["backbone_channels"]], cfg["fpn_out_channels"])
    upsample = SatlasUpsample([(f, cfg["fpn_out_channels"]) for f, _ in cfg["backbone_channels"]])
    state = weights(z)
    params = fpn.torch_params("fpn") + upsample.torch_params("upsample")
    load_torch_state_dict(fpn, state, params=params)
    outs = upsample(fpn([nhwc(z[f"in/feat{i}"]) for i in range(4)]))
    assert len(outs) == 5
    for i, out in enumerate(outs):
        assert_close(out, nhwc(z[f"out/feat{i}"]), 1e-5, f"satlas fpn+upsample feat{i}")
    assert SatlasUpsample([(4, 128), (8, 128)]).count_params() == 819_712
