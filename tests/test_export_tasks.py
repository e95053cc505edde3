"""Every task kind exports to a SavedModel (raw bands in, named outputs, dynamic batch) and
to a builtin-ops TFLite model, and both compute what the Keras model computes on the data
pipeline's inputs."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from export_helpers import BANDS, KINDS, SIZE, examples, tiny_exportable
from rskeras.export.litert import LiteRTModel
from rskeras.export.report import box_matches, detections
from rskeras.export.saved_model import export_for_serving
from rskeras.export.tflite import convert_tflite

OUTPUTS = {
    "classification": {"probabilities", "class_ids"},
    "regression": {"value"},
    "per_pixel_regression": {"values"},
    "segmentation": {"class_ids", "probabilities"},
    "detection": {"boxes", "scores", "labels", "num_detections"},
    "embedding": {"embeddings"},
    "multi_task": {"segment_class_ids", "segment_probabilities", "classify_probabilities", "classify_class_ids"},
}
DETECTION_NAMES = {k: k for k in ("boxes", "scores", "labels", "num_detections")}


def assert_outputs_close(kind, ref, out, atol, index=None):
    """Compares one example's reference outputs with a variant's (``index``: the example's
    row in a batched output)."""
    for name, r in ref.items():
        o = np.asarray(out[name])
        o = o[index : index + 1] if index is not None else o
        if kind == "detection" and name != "num_detections":
            continue
        if np.issubdtype(r.dtype, np.floating):
            np.testing.assert_allclose(o, r, atol=atol, rtol=0, err_msg=f"{kind}/{name}")
        else:
            np.testing.assert_array_equal(o, r, err_msg=f"{kind}/{name}")
    if kind == "detection":
        one = {k: np.asarray(v)[index : index + 1] if index is not None else np.asarray(v) for k, v in out.items()}
        a, b = detections(ref, DETECTION_NAMES, 0.0), detections(one, DETECTION_NAMES, 0.0)
        assert len(a[0]) == len(b[0]) > 0
        assert box_matches(a, b, iou=0.99) == len(a[0])
        n = int(ref["num_detections"][0])
        np.testing.assert_allclose(np.sort(one["scores"][0, :n]), np.sort(ref["scores"][0, :n]), atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_and_tflite_match_keras(kind, tmp_path):
    exportable = tiny_exportable(kind)
    raw = examples(3)
    refs = [exportable.pipeline_outputs(e) for e in raw]
    assert set(refs[0]) == OUTPUTS[kind]

    path = export_for_serving(exportable, str(tmp_path / "models" / kind / "1"), raw_outputs=False)
    signature = tf.saved_model.load(path).signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    assert name == "image" and spec.shape.as_list() == [None, None, None, len(BANDS)] and spec.dtype == tf.float32
    batch = np.concatenate([e["image"] for e in raw])  # NHWC raw bands, dynamic batch of 3
    served = {k: v.numpy() for k, v in signature(image=tf.constant(batch)).items()}
    assert set(served) == OUTPUTS[kind]
    for i, ref in enumerate(refs):
        assert_outputs_close(kind, ref, served, 1e-5, index=i)
    with open(os.path.join(path, "assets.extra", "rskeras_export.json")) as f:
        description = json.load(f)
    assert description["inputs"] == [{"name": "image", "bands": list(BANDS), "dtype": "float32", "num_timesteps": 1}]
    assert description["preprocessing"] == ["Normalize (test.transforms[0])"]

    lite = LiteRTModel(content=convert_tflite(exportable, (SIZE, SIZE)))
    assert lite.input_details == {"image": ((1, SIZE, SIZE, len(BANDS)), np.dtype(np.float32))}
    assert set(lite.output_details) == OUTPUTS[kind]
    ops = {op["op_name"] for op in lite.interpreter._get_ops_details()}
    assert not any("FLEX" in op or "CUSTOM" in op for op in ops), ops
    for e, ref in zip(raw, refs):
        assert_outputs_close(kind, ref, lite(image=e["image"]), 1e-4)


def test_dynamic_spatial_size_and_raw_outputs_signature(tmp_path):
    exportable = tiny_exportable("classification")
    path = export_for_serving(exportable, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "raw_outputs"}
    big = examples(1, size=48)[0]
    ref = exportable.pipeline_outputs(big)
    out = loaded.signatures["serving_default"](image=tf.constant(big["image"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), ref["probabilities"], atol=1e-5)
    raw = loaded.signatures["raw_outputs"](image=tf.constant(big["image"]))
    assert set(raw) == {"outputs"}  # the head's softmax, before the task's output layer
    np.testing.assert_allclose(raw["outputs"].numpy(), ref["probabilities"], atol=1e-5)


def test_fixed_input_size_saved_model(tmp_path):
    exportable = tiny_exportable("segmentation")
    path = export_for_serving(exportable, str(tmp_path / "sm"), input_size=(SIZE, SIZE), raw_outputs=False)
    spec = tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.shape.as_list() == [None, SIZE, SIZE, len(BANDS)]


def test_fit_export_falls_back_to_model_inputs(tmp_path, monkeypatch, caplog):
    """train.py fit always leaves a SavedModel: when the raw-band export is impossible it is
    written on the model-input dict (the previous contract), with a warning."""
    import types

    import keras

    from rskeras.export import inference, saved_model
    from rskeras.export.errors import ExportError

    exportable = tiny_exportable("regression")
    specs = {"image": tf.TensorSpec([None, 1, None, None, len(BANDS)], tf.float32)}

    def inference_model(input_specs):
        inputs = {"image": keras.Input((1, None, None, len(BANDS)), name="image")}
        return keras.Model(inputs, exportable.task.output_layer()(exportable.model(inputs)["outputs"]))

    def refuse(*args, **kwargs):
        raise ExportError("data.init_args.inputs.targets: passthrough vector inputs cannot be exported")

    run = types.SimpleNamespace(
        data=types.SimpleNamespace(model_dataset=lambda stage: [0]),
        root=str(tmp_path / "run"),
        lm=types.SimpleNamespace(inference_model=inference_model),
        input_specs=specs,
    )
    monkeypatch.setattr(inference, "exportable_from_run", refuse)
    path = saved_model.export_run_saved_model(run, str(tmp_path / "sm"))
    assert "passthrough vector inputs" in caplog.text
    spec = tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.shape.as_list() == [None, 1, None, None, len(BANDS)]
