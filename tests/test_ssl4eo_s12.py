"""SSL4EO-S12: parity with rslearn's torchvision ResNet-50 (seeded weights), checkpoint
formats, output layers, SavedModel and builtin-ops TFLite export."""

import gc
import logging

import numpy as np
import pytest
import tensorflow as tf

from conftest import FIXTURES
from encoder_helpers import FACTS, functional, golden, param_count, saved_model_max_abs, tflite_max_abs
from rskeras.weights.files import write_state_dict
from rskeras.models.ssl4eo_s12 import Ssl4eoS12
from rskeras.weights.torch_params import load_torch_state_dict
from seeded_weights import seeded_state_dict

Z, CONFIG = golden("ssl4eo_s12.npz")


@pytest.fixture(scope="module")
def seeded():
    state = seeded_state_dict(CONFIG["keys"], CONFIG["seed"])
    model = Ssl4eoS12(None)
    load_torch_state_dict(model, state)
    yield model, state
    del model
    gc.collect()


def test_parity_and_parameter_count(seeded):
    model, _ = seeded
    assert param_count(model, trainable_only=True) == CONFIG["params"] == FACTS["ssl4eo_s12"]["resnet50"]["params"]
    outs = model({"image": Z["in/image"].transpose(0, 2, 3, 4, 1)})
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 256), (2, 4, 4, 512), (2, 2, 2, 1024), (2, 1, 1, 2048)]
    for i, out in enumerate(outs):
        ref = Z[f"out/layer{i + 1}"].transpose(0, 2, 3, 1)
        # values grow to ~5e3 through the random ResNet: compare relative to the magnitude
        assert np.abs(out.numpy() - ref).max() <= 1e-5 * np.abs(ref).max(), f"layer{i + 1}"


def test_dino_teacher_checkpoint(caplog):
    """rslearn reads ckpt["teacher"] and strips "module.backbone."; missing tensors warn."""
    with caplog.at_level(logging.WARNING):
        model = Ssl4eoS12(str(FIXTURES / "ssl4eo_teacher_tiny.pth"))
    state = seeded_state_dict(CONFIG["keys"], CONFIG["seed"])
    np.testing.assert_array_equal(model.model.conv1.kernel.numpy(), state["model.conv1.weight"].transpose(2, 3, 1, 0))
    assert "loaded 5 tensors" in caplog.text and "missing 262" in caplog.text


def test_converted_state_dict_formats(tmp_path, seeded):
    _, state = seeded
    small = {k: v for k, v in state.items() if k.startswith("model.conv1.")}
    model = Ssl4eoS12(None)
    for i, prefix in enumerate(("module.backbone.", "model.", "")):
        path = str(tmp_path / f"w{i}.npz")
        write_state_dict({prefix + k[len("model."):]: v * (i + 1) for k, v in small.items()}, path)
        model.load_backbone(path)
        np.testing.assert_array_equal(model.model.conv1.kernel.numpy(), (i + 1) * small["model.conv1.weight"].transpose(2, 3, 1, 0))
    write_state_dict({"conv1.weight": np.zeros((64, 12, 7, 7), np.float32)}, str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_backbone(str(tmp_path / "bad.npz"))


def test_output_layers_and_arguments():
    model = Ssl4eoS12(None, output_layers=[1, 3])
    assert model.get_backbone_channels() == [(8, 512), (32, 2048)]
    outs = model({"image": np.zeros((1, 1, 32, 32, 13), np.float32)})
    assert [tuple(o.shape) for o in outs] == [(1, 4, 4, 512), (1, 1, 1, 2048)]
    with pytest.raises(ValueError, match="unknown SSL4EO-S12 architecture vit"):
        Ssl4eoS12(None, arch="vit")
    with pytest.raises(ValueError, match="13 input channels"):
        model({"image": np.zeros((1, 1, 32, 32, 12), np.float32)})


def test_saved_model_and_tflite_parity(seeded):
    model, _ = seeded
    specs = {"image": tf.TensorSpec([1, 1, 32, 32, 13])}
    data = {"image": Z["in/image"][:1].transpose(0, 2, 3, 4, 1)}
    keras_model = functional(model, specs)
    assert saved_model_max_abs(keras_model, specs, data) <= 1e-5 * 1e4
    # builtin ops only (convert_keras_tflite raises naming any other op); features reach ~5e3
    assert tflite_max_abs(keras_model, specs, data) <= 1e-5 * 1e4
