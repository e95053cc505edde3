"""Galileo: golden parity with rslearn 0.1.19, architecture facts, weight folders, exports."""

import gc
import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from encoder_helpers import FACTS, day_ranges, functional, golden, golden_batch, nchw, param_count, saved_model_max_abs, tflite_max_abs
from rskeras.weights.files import write_state_dict
from rskeras.models.galileo import Galileo, GalileoModel, GalileoSize
from rskeras.models.galileo.single_file_galileo import antialias_bicubic_weights, normalization_constants
from rskeras.weights.torch_params import load_torch_state_dict, torch_state_dict

Z, CONFIG = golden("galileo_nano.npz")


def golden_model(patch_size: int) -> GalileoModel:
    model = GalileoModel("nano", patch_size=patch_size, autocast_dtype=None, random_initialization=True)
    load_torch_state_dict(model, {k[2:]: Z[k] for k in Z.files if k.startswith("w/")})
    return model


def with_timestamps(batch: dict) -> dict:
    stamps = np.stack([day_ranges(CONFIG["input_dates"][f"b{i}"]) for i in range(2)])
    return {**batch, **{f"{k}_timestamps": stamps for k in list(batch)}}


@pytest.fixture(scope="module")
def nano4():
    return golden_model(4)


def test_golden_s1_s2_with_timestamps(nano4):
    out = nano4(with_timestamps(golden_batch(Z, "in", ["s2", "s1"])))
    assert len(out) == 1 and tuple(out[0].shape) == (2, 4, 4, 128)
    assert np.abs(nchw(out[0]) - Z["out/features"]).max() <= 1e-4


def test_golden_s2_without_timestamps_uses_month_5(nano4):
    out = nano4(golden_batch(Z, "in", ["s2"]))
    assert np.abs(nchw(out[0]) - Z["out_s2_no_timestamps/features"]).max() <= 1e-4
    # the months matter: the same images with the golden timestamps give other features
    dated = nano4(with_timestamps(golden_batch(Z, "in", ["s2"])))
    assert np.abs(dated[0].numpy() - out[0].numpy()).max() > 1e-3


def test_golden_single_patch_averages_all_tokens():
    model = golden_model(8)
    out = model(with_timestamps(golden_batch(Z, "in_small", ["s2"])))
    assert tuple(out[0].shape) == (2, 1, 1, 128)
    assert np.abs(nchw(out[0]) - Z["out_small/features"]).max() <= 1e-4


def test_patch_size_reduced_to_small_inputs(nano4, caplog):
    x = golden_batch(Z, "in_small", ["s2"])
    with caplog.at_level(logging.WARNING):
        out = nano4({"s2": x["s2"][:, :, :2, :2]})  # H = 2 < patch_size 4
    assert tuple(out[0].shape) == (2, 1, 1, 128) and "reducing the patch size to 2" in caplog.text


def test_normalisation_constants_quirks():
    consts = normalization_constants()
    shift, div = consts["space_time"]
    # S2 B2: mean - 2 std, 4 std of the pretraining statistics (the /1e4 table is replaced)
    assert shift[2] == pytest.approx(1395.3408730676722 - 2 * 917.7041440370853)
    assert div[2] == pytest.approx(4 * 917.7041440370853)
    assert (shift[12], div[12]) == (0.0, 1.0)  # NDVI keeps its table values
    shift, div = consts["static"]
    assert (shift[0], div[0]) == (-2120.0, 4618.0)  # LandScan: truncated into the int table


def test_antialias_resize_weights():
    """Rows of torch's antialiased bicubic resize sum to 1 and mirror each other; the
    golden parity at patch_size 4 checks the values (8x8 kernels resized to 4x4)."""
    for new in (1, 2, 3, 4, 5, 6, 7, 12, 16):
        w = antialias_bicubic_weights(8, new)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
        np.testing.assert_allclose(w, w[::-1, ::-1], atol=1e-12)
    assert np.array_equal(antialias_bicubic_weights(8, 8), np.eye(8))


@pytest.mark.parametrize("size", ["nano", "tiny", "base"])
def test_parameter_counts(size):
    facts = FACTS["galileo"][size]
    model = GalileoModel(size, random_initialization=True, autocast_dtype=None)
    assert param_count(model) == facts["params"]
    assert param_count(model, trainable_only=True) == facts["trainable_params"]
    assert len(model.torch_params("")) == facts["state_dict_tensors"]
    assert model.get_backbone_channels() == [(4, facts["config"]["embedding_size"])]
    if "keys" in facts:
        state = torch_state_dict(model)
        assert {k: list(v.shape) for k, v in state.items()} == {f"model.{k}": s for k, s in facts["keys"].items()}
    del model
    gc.collect()


def test_weights_folder_round_trip(tmp_path, nano4):
    """The released layout: <pretrained_path>/models/nano/{config.json, encoder.*}; keys
    with an extra '.backbone' are cleaned as in rslearn."""
    folder = tmp_path / "models" / "nano"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"encoder": CONFIG["encoder_config"]}}))
    state = {k[len("model."):]: v for k, v in torch_state_dict(nano4).items()}
    state["blocks.backbone.0.norm1.weight"] = state.pop("blocks.0.norm1.weight")
    write_state_dict(state, str(folder / "encoder.safetensors"))
    model = Galileo(GalileoSize.NANO, patch_size=4, pretrained_path=str(tmp_path), autocast_dtype=None)
    batch = golden_batch(Z, "in", ["s2", "s1"])
    np.testing.assert_array_equal(model(batch)[0].numpy(), nano4(batch)[0].numpy())


def test_missing_weights_name_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"huggingface.co/nasaharvest/galileo/resolve/.*/models/tiny/config.json.*pretrained_path"):
        GalileoModel("tiny", pretrained_path=str(tmp_path))
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        GalileoModel("huge", random_initialization=True)


def test_bfloat16_autocast_is_close():
    model = golden_model(4)
    bf16 = GalileoModel("nano", patch_size=4, autocast_dtype="bfloat16", random_initialization=True)
    load_torch_state_dict(bf16, torch_state_dict(model))
    batch = golden_batch(Z, "in", ["s2", "s1"])
    out = bf16(batch)[0]
    assert out.dtype == tf.float32
    assert np.abs(out.numpy() - model(batch)[0].numpy()).max() < 0.25


def test_config_round_trip():
    model = GalileoModel("nano", patch_size=8, autocast_dtype=None, random_initialization=True)
    clone = GalileoModel.from_config(model.get_config())
    assert clone.patch_size == 8 and clone.size == "nano" and param_count(clone) == param_count(model)


def test_saved_model_and_tflite_parity(nano4):
    rng = np.random.default_rng(0)
    specs = {
        "s2": tf.TensorSpec([1, 2, 16, 16, 10]),
        "s1": tf.TensorSpec([1, 2, 16, 16, 2]),
        "s2_timestamps": tf.TensorSpec([1, 2, 2], tf.float64),
    }
    data = {
        "s2": rng.uniform(0, 4000, (1, 2, 16, 16, 10)).astype(np.float32),
        "s1": rng.uniform(-25, -5, (1, 2, 16, 16, 2)).astype(np.float32),
        "s2_timestamps": day_ranges(["2024-01-15", "2024-07-15"])[None],
    }
    model = functional(nano4, specs)
    assert saved_model_max_abs(model, specs, data) <= 1e-5
    assert tflite_max_abs(model, specs, data) <= 1e-4


def test_padded_timesteps_and_absent_modalities(nano4):
    """The batch contract of docs/design.md: padded timesteps (mask False) take no part,
    an input with T = 0 is absent; rslearn itself needs equal T for every example."""
    batch = with_timestamps(golden_batch(Z, "in", ["s2", "s1"]))
    single = {k: v[1:, :1] for k, v in batch.items()}  # example 1, first timestep only
    padded = {k: v.copy() for k, v in batch.items()}
    for key in ("s2", "s1"):
        padded[key][1, 1] = 0.0
        padded[f"{key}_timestamps"][1, 1] = np.nan
        padded[f"{key}_timestep_mask"] = np.array([[True, True], [True, False]])
    out = nano4(padded)[0].numpy()
    np.testing.assert_allclose(out[1], nano4(single)[0].numpy()[0], atol=2e-5)
    np.testing.assert_allclose(out[0], nano4(batch)[0].numpy()[0], atol=2e-5)
    s2_only = golden_batch(Z, "in", ["s2"])
    empty_s1 = {**s2_only, "s1": np.zeros((2, 0, 16, 16, 2), np.float32)}
    np.testing.assert_array_equal(nano4(empty_s1)[0].numpy(), nano4(s2_only)[0].numpy())
