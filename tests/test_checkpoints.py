"""Reading rslearn checkpoints (with and without torch) and whole-model parity.

checkpoint_single / checkpoint_multi / rslearn_small: RslearnLightningModule state dicts
(keys ``model.encoder.0.model.features...``, ``model.decoder.0.layers...``,
``model.decoders.<task>.<i>...``) loaded strictly into SingleTaskModel / MultiTaskModel.
"""

import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from _components_golden import SMALL_SWIN, assert_close, images, load, nhwc, weights
from conftest import FIXTURES, ROOT
from rskeras.models.component import Predictor, model_output
from rskeras.models.multitask import MultiTaskModel
from rskeras.models.pooling_decoder import PoolingDecoder
from rskeras.models.singletask import SingleTaskModel, run_encoder
from rskeras.models.swin import Swin
from rskeras.models.unet import UNetDecoder
from rskeras.train.tasks.classification import ClassificationHead
from rskeras.weights.errors import CheckpointError, WeightLoadError
from rskeras.weights.files import apply_key_rules, read_safetensors, read_state_dict, write_state_dict
from rskeras.weights.restore import load_lightning_checkpoint, load_state_dict_nonstrict, restore_into
from rskeras.weights.torch_params import load_torch_state_dict
from rskeras.weights.torch_pickle import load_torch_file

CKPT = str(FIXTURES / "rslearn_small.ckpt")
TINY_SWIN = dict(input_channels=5, num_outputs=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=[4, 4])


class SoftmaxProbabilities(Predictor):
    """Stand-in for SegmentationHead's outputs: softmax over channels, no loss."""

    def call(self, intermediates, context=None, targets=None, training=None):
        return model_output(tf.nn.softmax(intermediates[0], axis=-1), {})

    def loss_names(self):
        return []


def unet_for(channels):
    return UNetDecoder([[4, channels], [8, 2 * channels], [16, 4 * channels], [32, 8 * channels]], 3)


def single_model(swin_kwargs, channels, head=None):
    return SingleTaskModel([Swin(arch="swin_v2_t", output_layers=[1, 3, 5, 7], **swin_kwargs)], [unet_for(channels), head or SoftmaxProbabilities()])


def check_single(model, z, what):
    context = {"image": images(z["in/image"])}
    feats = run_encoder(model.encoder, context)
    for i, feat in enumerate(feats):
        assert_close(feat, nhwc(z[f"out/encoder/feat{i}"]), 1e-4, f"{what} encoder feat{i}")
    assert_close(model.decoder[0](feats)[0], nhwc(z["out/unet_logits"]), 1e-4, f"{what} unet logits")
    assert_close(model(context)["outputs"], nhwc(z["out/outputs"]), 1e-5, f"{what} softmax outputs")


# ---- reading torch files ---------------------------------------------------------------


def test_pure_python_reader_matches_npz():
    """Lightning .ckpt without torch: every state_dict tensor bit-identical to the npz."""
    ckpt = load_torch_file(CKPT, use_torch=False)
    assert {"epoch", "global_step", "state_dict", "optimizer_states"} <= set(ckpt)
    expected = weights(load("rslearn_small_ckpt.npz"))
    state = ckpt["state_dict"]
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key
    adam = ckpt["optimizer_states"][0]["state"]
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(adam[0])


def test_torch_reader_agrees_when_installed():
    pytest.importorskip("torch")
    a = read_state_dict(CKPT, use_torch=True)
    b = read_state_dict(CKPT, use_torch=False)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_reader_refuses_code_in_pickles(tmp_path):
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"state_dict": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to unpickle global"):
        load_torch_file(str(path), use_torch=False)


def test_safetensors_and_npz_round_trip(tmp_path):
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.num_batches_tracked": np.array(5, np.int64)}
    for name in ("x.safetensors", "x.npz"):
        write_state_dict(state, tmp_path / name)
        back = read_state_dict(tmp_path / name)
        assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    # bfloat16 tensors are widened to float32
    raw = np.array([0x3F80, 0xC000], np.uint16).tobytes()  # 1.0, -2.0
    header = b'{"t":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    header += b" " * ((8 - len(header) % 8) % 8)
    (tmp_path / "bf16.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf16.safetensors")["t"], [1.0, -2.0])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.ckpt")


# ---- whole models ----------------------------------------------------------------------


def test_rslearn_small_ckpt_through_pure_reader():
    model = single_model(TINY_SWIN, 8)
    report = load_lightning_checkpoint(model, CKPT, use_torch=False)  # strict
    assert len(report.loaded) == 95  # 103 tensors minus 2 recomputed buffers in each of 4 blocks
    check_single(model, load("rslearn_small_ckpt.npz"), "rslearn_small")


def test_checkpoint_single_matches_rslearn():
    z = load("checkpoint_single.npz")
    state = {**weights(z), **weights(load("swin_v2_small.npz"), "model.encoder.0.model.")}
    model = single_model(SMALL_SWIN, 24)
    load_torch_state_dict(model, state, prefix="model")  # strict: key naming matches rslearn
    check_single(model, z, "checkpoint_single")


def _multi_model():
    encoder = [Swin(arch="swin_v2_t", output_layers=[1, 3, 5, 7], **SMALL_SWIN)]
    decoders = {
        "segment": [unet_for(24), SoftmaxProbabilities()],
        "classify": [PoolingDecoder(192, 4, num_conv_layers=1, num_fc_layers=1, conv_channels=32, fc_channels=32), ClassificationHead()],
    }
    model = MultiTaskModel(encoder, decoders)
    z = load("checkpoint_multi.npz")
    state = {**weights(z), **weights(load("swin_v2_small.npz"), "model.encoder.0.model.")}
    load_torch_state_dict(model, state, prefix="model")
    return model, z


def test_checkpoint_multi_matches_rslearn():
    model, z = _multi_model()
    context = {"image": images(z["in/image"])}
    targets = {"classify": {"class": z["in/targets/class"].astype(np.int32), "valid": z["in/targets/class_valid"]}}
    out = model(context, targets=targets)
    feats = run_encoder(model.encoder, context)
    assert_close(model.decoders["classify"][0](feats), z["out/pool_logits"], 1e-4, "multi pool logits")
    assert_close(model.decoders["segment"][0](feats)[0], nhwc(z["out/unet_logits"]), 1e-4, "multi unet logits")
    assert_close(out["outputs"]["segment"], nhwc(z["out/outputs/segment"]), 1e-5, "multi segment outputs")
    assert_close(out["outputs"]["classify"], z["out/outputs/classify"], 1e-5, "multi classify outputs")
    np.testing.assert_allclose(out["loss_dict"]["classify_cls"], z["out/loss/classify_cls"], rtol=1e-5)


def _segmentation_head_or_skip():
    module = pytest.importorskip("rskeras.train.tasks.segmentation", exc_type=ImportError)
    if not hasattr(module, "SegmentationHead"):
        pytest.skip("rskeras.train.tasks.segmentation.SegmentationHead not available yet")
    return module.SegmentationHead


def _raster_targets(z):
    classes = z["in/targets/classes"].astype(np.int32)[:, None, :, :, None]
    valid = z["in/targets/valid"].astype(np.float32)[:, None, :, :, None]
    return {"classes": classes, "valid": valid}


def test_segmentation_head_losses_match_rslearn_when_available():
    """Losses of checkpoint_single / checkpoint_multi (rtol 1e-5) with the real SegmentationHead."""
    head_cls = _segmentation_head_or_skip()
    z = load("checkpoint_single.npz")
    model = single_model(SMALL_SWIN, 24, head=head_cls())
    load_torch_state_dict(model, {**weights(z), **weights(load("swin_v2_small.npz"), "model.encoder.0.model.")}, prefix="model")
    out = model({"image": images(z["in/image"])}, targets=_raster_targets(z))
    assert_close(out["outputs"], nhwc(z["out/outputs"]), 1e-5, "single SegmentationHead outputs")
    np.testing.assert_allclose(out["loss_dict"]["cls"], z["out/loss/cls"], rtol=1e-5)
    zm = load("checkpoint_multi.npz")
    model, _ = _multi_model()
    model.decoders["segment"][-1] = head_cls()
    targets = {"segment": _raster_targets(zm), "classify": {"class": zm["in/targets/class"].astype(np.int32), "valid": zm["in/targets/class_valid"]}}
    out = model({"image": images(zm["in/image"])}, targets=targets)
    np.testing.assert_allclose(out["loss_dict"]["segment_cls"], zm["out/loss/segment_cls"], rtol=1e-5)
    np.testing.assert_allclose(sum(float(v) for v in out["loss_dict"].values()), zm["out/loss_sum"], rtol=1e-5)


# ---- restore_config ----------------------------------------------------------------------


def test_apply_key_rules_order_and_chaining():
    obj = {"state_dict": {"model.a.w": np.zeros(1), "model.b.w": np.ones(1), "other.c": np.ones(2)}}
    out = apply_key_rules(obj, ["state_dict"], ["other."], [["model.", "x."], ["x.a.", "enc."]])
    assert sorted(out) == ["enc.w", "x.b.w"]
    with pytest.raises(CheckpointError, match="selector key 'weights' not found"):
        apply_key_rules(obj, ["weights"])


def test_restore_into_relative_keys_and_reports_missing(caplog):
    model = single_model(TINY_SWIN, 8)
    report = restore_into(model, CKPT, selector=["state_dict"], remap_prefixes=[["model.", ""]], use_torch=False)
    assert not report.missing and not report.unexpected
    partial = single_model(TINY_SWIN, 8)
    report = restore_into(partial, CKPT, selector=["state_dict"], ignore_prefixes=["model.decoder."], remap_prefixes=[["model.", ""]], use_torch=False)
    assert report.missing and all(k.startswith("decoder.0.layers.") for k in report.missing)
    assert "missing_keys" in caplog.text
    z = load("rslearn_small_ckpt.npz")
    feats = run_encoder(partial.encoder, {"image": images(z["in/image"])})
    assert_close(feats[3], nhwc(z["out/encoder/feat3"]), 1e-4, "restored encoder")


def test_nonstrict_load_still_rejects_shape_mismatch():
    state = {k[len("model."):]: v for k, v in weights(load("rslearn_small_ckpt.npz")).items()}
    wider = single_model({**TINY_SWIN, "embed_dim": 16}, 16)
    with pytest.raises(WeightLoadError, match="shape mismatch"):
        load_state_dict_nonstrict(wider, state)


# ---- tools/convert_weights.py --------------------------------------------------------------


def test_convert_weights_cli(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    out = tmp_path / "model.safetensors"
    assert convert_weights.main([CKPT, str(out), "--selector", "state_dict", "--remap", "model.", "", "--ignore", "model.decoder.", "--no-torch"]) == 0
    printed = capsys.readouterr().out
    assert "encoder.0.model.features.0.0.weight  (8, 5, 4, 4)  float32" in printed
    state = read_state_dict(out)
    assert state and all(k.startswith("encoder.0.") for k in state)
    model = single_model(TINY_SWIN, 8)
    report = load_state_dict_nonstrict(model, state)
    assert not report.unexpected and all(k.startswith("decoder.") for k in report.missing)
    help_text = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_weights.py"), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--remap OLD NEW" in help_text
