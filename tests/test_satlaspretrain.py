"""SatlasPretrain: architecture facts, multi-image aggregation, weight-file formats."""

import gc
import json

import numpy as np
import pytest

from _components_golden import assert_close
from conftest import FIXTURES
from rskeras.models.satlaspretrain import IDENTIFIERS, SatlasPretrain
from rskeras.weights.files import write_state_dict
from rskeras.weights.torch_params import torch_state_dict

FACTS = json.loads((FIXTURES / "swin_arch_facts.json").read_text())["satlaspretrain_random_init"]


@pytest.mark.parametrize("key", ["Sentinel2_SwinT_SI_MS", "Sentinel2_Resnet50_SI_MS"])
def test_param_counts_and_output_shapes(key):
    """Counts of satlaspretrain_models.Model (torch parameters = trainable Keras weights)."""
    facts = FACTS[key]
    identifier, fpn = key.split("(")[0], "fpn=false" not in key
    model = SatlasPretrain(identifier, fpn=fpn)

    def count(layer):
        # torch parameters = trainable Keras weights + the Swin classifier's final norm and
        # head, kept (for state dicts) but not trainable, as features never reach them
        unused = [] if getattr(model, "swin", None) is None else [model.swin.norm, model.swin.head]
        frozen = [v for u in unused for v in u.weights if any(v is w for w in layer.weights)]
        return sum(int(np.prod(v.shape)) for v in list(layer.trainable_weights) + frozen)

    assert count(model) == facts["params_total"]
    assert count(model.resnet if model.resnet is not None else model.swin) == facts["params_backbone"]
    if fpn:
        assert model.fpn.count_params() == facts["params_fpn"]
        assert model.upsample.count_params() == facts["params_upsample"]
    outs = model({"image": np.zeros((1, 1, 64, 64, 9), np.float32)})
    assert [[s[0], s[3], s[1], s[2]] for s in (tuple(o.shape) for o in outs)] == facts["output_shapes_64x64"]
    # quirk kept from rslearn: the backbone table, even with the FPN
    first = {"SwinT": 96, "SwinB": 128, "Resnet50": 256}[identifier.split("_")[1]]
    assert model.get_backbone_channels() == [(4, first), (8, 2 * first), (16, 4 * first), (32, 8 * first)]
    del model
    gc.collect()


def test_swin_b_backbone_is_torchvision_swin_v2_b():
    """The SwinB facts equal Swin(swin_v2_b, 9 channels), whose count test_swin checks
    (building the 88M-parameter model again here would only cost test time)."""
    swin = json.loads((FIXTURES / "swin_arch_facts.json").read_text())["swin"]["swin_v2_b"]
    assert FACTS["Sentinel2_SwinB_SI_MS(fpn=false)"]["params_backbone"] == swin["params_total"]
    assert FACTS["Sentinel2_SwinB_SI_MS"]["params_fpn"] == 836_608  # == Fpn([128, 256, 512, 1024], 128), test_fpn_unet


def test_multi_image_swin_takes_max_over_first_8_images():
    model = SatlasPretrain("Sentinel2_SwinT_MI_RGB")
    rng = np.random.RandomState(0)
    x = rng.rand(2, 1, 32, 32, 3 * 9).astype(np.float32)  # 9 images: the 9th is ignored
    outs = model({"image": x})
    per_image = [model.swin.features(x[:, 0, :, :, 3 * i : 3 * i + 3]) for i in range(8)]
    for scale, k in enumerate((1, 3, 5, 7)):
        expected = np.max([p[k].numpy() for p in per_image], axis=0)
        # Features reach ~12 at the deeper scales; one batch of 16 images against eight of 2
        # runs different CPU kernels (on AVX2-only CPUs they differ by 2e-5): float32
        # tolerance relative to the features' magnitude.
        assert_close(outs[scale], expected, 1e-5 * max(1.0, float(np.abs(expected).max())), f"MI scale {scale}")
    assert model.torch_params("")[0].key == "model.backbone.backbone.backbone.features.0.0.weight"
    with pytest.raises(ValueError, match="not a multiple of 3"):
        model({"image": np.zeros((1, 1, 32, 32, 4), np.float32)})


def test_multi_image_resnet_is_single_image_quirk():
    """satlaspretrain_models only wraps Swin backbones for multiple images."""
    model = SatlasPretrain("Sentinel2_Resnet50_MI_RGB", resize_to_pretrain=True)
    assert model.torch_params("")[0].key == "model.backbone.resnet.conv1.weight"
    outs = model({"image": np.zeros((1, 1, 40, 40, 3), np.float32)})
    assert tuple(outs[0].shape) == (1, 128, 128, 256)  # resized to 512 x 512 first
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model({"image": np.zeros((1, 1, 32, 32, 6), np.float32)})


def test_weight_files_rslearn_and_original_formats(tmp_path):
    source = SatlasPretrain("Sentinel2_SwinT_SI_RGB", fpn=True)
    x = np.random.RandomState(1).rand(1, 1, 32, 32, 3).astype(np.float32)
    expected = [o.numpy() for o in source({"image": x})]
    state = torch_state_dict(source)  # rslearn keys (model.backbone...), incl. the upsampling head
    rslearn_file = tmp_path / "rslearn.npz"
    write_state_dict(state, rslearn_file)
    loaded = SatlasPretrain("Sentinel2_SwinT_SI_RGB", fpn=True, weights_path=str(rslearn_file))
    for got, want in zip(loaded({"image": x}), expected):
        np.testing.assert_array_equal(got.numpy(), want)

    # the SatlasPretrain release names: backbone.backbone.backbone.* and intermediates.0.fpn.*
    original = {}
    for key, value in state.items():
        key = key[len("model.") :]
        if key.startswith("backbone."):
            original["backbone." + key] = value
        elif key.startswith("fpn."):  # Model.fpn.fpn.* <- intermediates.0.fpn.*
            original["intermediates.0." + key[len("fpn.") :]] = value
    original["heads.0.layers.0.weight"] = np.zeros(3, np.float32)  # pretraining head: ignored
    original_file = tmp_path / "sentinel2_swint_si_rgb.safetensors"
    write_state_dict(original, original_file)
    release = SatlasPretrain("Sentinel2_SwinT_SI_RGB", fpn=True, weights_path=str(original_file))
    outs = release({"image": x})
    for got, want in zip(outs[1:], expected[1:]):  # the upsampling head has no released weights
        np.testing.assert_array_equal(got.numpy(), want)


def test_identifier_table_and_errors():
    assert len(IDENTIFIERS) == 22
    with pytest.raises(ValueError, match="unknown model_identifier"):
        SatlasPretrain("Sentinel2_SwinL_SI_RGB")
