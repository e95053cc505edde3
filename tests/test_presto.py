"""Presto: golden parity with rslearn 0.1.19, architecture facts, weight files, masking, exports."""

import numpy as np
import pytest
import tensorflow as tf

from encoder_helpers import FACTS, day_ranges, functional, golden, golden_batch, nchw, param_count, saved_model_max_abs, tflite_max_abs
from rskeras.weights.files import write_state_dict
from rskeras.models.presto import Presto
from rskeras.weights.torch_params import load_torch_state_dict, torch_state_dict

Z, CONFIG = golden("presto.npz")
WEIGHTS = {k[2:]: Z[k] for k in Z.files if k.startswith("w/")}


@pytest.fixture(scope="module")
def presto():
    model = Presto(random_initialization=True, pixel_batch_size=48)
    load_torch_state_dict(model, WEIGHTS)
    return model


def dated(batch: dict) -> dict:
    stamps = np.stack([day_ranges(CONFIG["input_dates"][f"b{i}"]) for i in range(2)])
    return {**batch, **{f"{k}_timestamps": stamps for k in list(batch)}}


def test_golden_s1_s2_with_timestamps(presto):
    out = presto(dated(golden_batch(Z, "in", ["s2", "s1"])))
    assert len(out) == 1 and tuple(out[0].shape) == (2, 8, 8, 128)
    assert np.abs(nchw(out[0]) - Z["out/features"]).max() <= 1e-4


def test_golden_s2_without_timestamps_uses_month_6(presto):
    out = presto(golden_batch(Z, "in", ["s2"]))
    assert np.abs(nchw(out[0]) - Z["out_s2_no_timestamps/features"]).max() <= 1e-4


def test_parameter_count_and_keys(presto):
    facts = FACTS["presto"]["default"]
    assert param_count(presto) == facts["params"] and param_count(presto, trainable_only=True) == facts["trainable_params"]
    assert {k: list(v.shape) for k, v in torch_state_dict(presto).items()} == {f"model.{k}": s for k, s in facts["keys"].items()}
    assert presto.get_backbone_channels() == [(1, 128)]


def test_weights_file_holds_the_whole_pretrained_model(tmp_path, presto):
    """default_model.* is Presto's full state dict: encoder.* is used, decoder.* ignored."""
    state = {"encoder." + k[len("model."):]: v for k, v in torch_state_dict(presto).items()}
    state["decoder.decoder_embed.weight"] = np.zeros((128, 128), np.float32)
    write_state_dict(state, str(tmp_path / "default_model.npz"))
    model = Presto(pretrained_path=str(tmp_path))
    batch = golden_batch(Z, "in", ["s2"])
    np.testing.assert_array_equal(model(batch)[0].numpy(), presto(batch)[0].numpy())


def test_missing_weights_name_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"huggingface.co/nasaharvest/presto/resolve/.*/default_model.pt.*pretrained_path"):
        Presto(pretrained_path=str(tmp_path))


def test_dynamic_world_missing_class_is_masked(presto):
    """Class 9 tokens are masked (as if absent); real classes change the features."""
    batch = golden_batch(Z, "in", ["s2"])
    base = presto(batch)[0].numpy()
    t = batch["s2"].shape[1]
    missing = np.full((2, t, 8, 8, 1), 9, np.int32)
    np.testing.assert_allclose(presto({**batch, "dynamic_world": missing})[0].numpy(), base, atol=1e-5)
    classes = missing.copy()
    classes[:, :, :4] = 3  # the top half of every image has a class
    out = presto({**batch, "dynamic_world": classes})[0].numpy()
    assert np.abs(out[:, :4] - base[:, :4]).max() > 1e-3
    np.testing.assert_allclose(out[:, 4:], base[:, 4:], atol=1e-5)


def test_latlon_token_changes_the_features(presto):
    batch = golden_batch(Z, "in", ["s2"])
    latlon = np.zeros((2, 1, 8, 8, 2), np.float32)
    latlon[..., 0], latlon[..., 1] = 47.6, -122.3
    out = presto({**batch, "latlon": latlon})[0].numpy()
    assert out.shape == (2, 8, 8, 128) and np.abs(out - presto(batch)[0].numpy()).max() > 1e-3


def test_bad_inputs():
    model = Presto(random_initialization=True)
    with pytest.raises(ValueError, match="none of the keys"):
        model({"image": np.zeros((1, 1, 4, 4, 10), np.float32)})
    with pytest.raises(ValueError, match="'s2' must have 10 channels"):
        model({"s2": np.zeros((1, 1, 4, 4, 11), np.float32)})


def test_saved_model_and_tflite_parity(presto):
    rng = np.random.default_rng(0)
    specs = {"s2": tf.TensorSpec([1, 3, 8, 8, 10]), "s1": tf.TensorSpec([1, 3, 8, 8, 2])}
    data = {"s2": rng.uniform(0, 4000, (1, 3, 8, 8, 10)).astype(np.float32), "s1": rng.uniform(-25, -5, (1, 3, 8, 8, 2)).astype(np.float32)}
    model = functional(presto, specs)
    assert saved_model_max_abs(model, specs, data) <= 1e-5
    assert tflite_max_abs(model, specs, data) <= 1e-4


def test_padded_timesteps_and_absent_modalities(presto):
    """Padded timesteps (mask False) take no part; an input with T = 0 is absent."""
    batch = dated(golden_batch(Z, "in", ["s2", "s1"]))
    single = {k: v[1:, :2] for k, v in batch.items()}  # example 1, first two timesteps
    padded = {k: v.copy() for k, v in batch.items()}
    for key in ("s2", "s1"):
        padded[key][1, 2] = 0.0
        padded[f"{key}_timestamps"][1, 2] = np.nan
        padded[f"{key}_timestep_mask"] = np.array([[True] * 3, [True, True, False]])
    out = presto(padded)[0].numpy()
    np.testing.assert_allclose(out[1], presto(single)[0].numpy()[0], atol=2e-5)
    np.testing.assert_allclose(out[0], presto(batch)[0].numpy()[0], atol=2e-5)
    s2_only = golden_batch(Z, "in", ["s2"])
    empty_s1 = {**s2_only, "s1": np.zeros((2, 0, 8, 8, 2), np.float32)}
    np.testing.assert_array_equal(presto(empty_s1)[0].numpy(), presto(s2_only)[0].numpy())
