"""TFLite export: quantization variants, the parity report, and the refusal of Flex /
custom ops with the offending ops named."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_helpers import SIZE, examples, raw_image, tiny_exportable
from rskeras.export.description import CALIBRATED, QUANTIZATIONS
from rskeras.export.errors import ExportError, UnsupportedOpsError
from rskeras.export.examples import signature_batch, tiles
from rskeras.export.litert import LiteRTModel
from rskeras.export.report import format_table, parity_report
from rskeras.export.tflite import MIXED_FLOAT_OPS, convert_keras_tflite, convert_tflite, unsupported_ops_from_message, write_tflite


def tensor_dtypes(content: bytes) -> set[str]:
    lite = LiteRTModel(content=content)
    return {np.dtype(t["dtype"]).name for t in lite.interpreter.get_tensor_details()}


def test_quantized_variants_and_parity_report(tmp_path):
    exportable = tiny_exportable("segmentation")
    calibration = [{"image": raw_image(100 + i, size=2 * SIZE)} for i in range(4)]

    def representative():
        for example in calibration:
            for tile in tiles(example, SIZE, SIZE):
                yield signature_batch(tile, exportable.raw_inputs)

    variants = {q: convert_tflite(exportable, (SIZE, SIZE), q, representative if q in CALIBRATED else None) for q in QUANTIZATIONS}
    assert "float16" in tensor_dtypes(variants["float16"])
    assert "int8" in tensor_dtypes(variants["dynamic"])
    int8_lite = LiteRTModel(content=variants["int8"])
    # Full-integer ops inside; the signature keeps float32 raw inputs and the output names.
    assert int8_lite.input_details["image"][1] == np.float32
    assert {"int8"} <= tensor_dtypes(variants["int8"])
    assert set(int8_lite.output_details) == {"class_ids", "probabilities"}
    assert len(variants["int8"]) < len(variants["none"]) and len(variants["dynamic"]) < len(variants["none"])
    # int8-mixed: int8 convolutions, the ops of MIXED_FLOAT_OPS (here the softmax) in float32.
    mixed = LiteRTModel(content=variants["int8-mixed"]).interpreter
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in mixed.get_tensor_details()}
    ops = mixed._get_ops_details()
    kept = {o["op_name"]: {dtypes[i] for i in o["inputs"] if i >= 0} for o in ops if o["op_name"] in MIXED_FLOAT_OPS}
    assert kept and all(d == {"float32"} for d in kept.values()), kept
    assert any(o["op_name"] == "CONV_2D" and dtypes[o["inputs"][0]] == "int8" for o in ops)

    results = parity_report(exportable, examples(6), None, variants)
    rows = {r.name: r for r in results}
    assert list(rows) == ["keras", "tflite_none", "tflite_float16", "tflite_dynamic", "tflite_int8", "tflite_int8-mixed"]
    assert rows["tflite_none"].max_abs_diff <= 1e-4 and rows["tflite_none"].ok
    assert rows["tflite_float16"].agreement >= 0.99 and rows["tflite_float16"].max_abs_diff <= 1e-2
    assert rows["tflite_int8"].agreement >= 0.8 and rows["tflite_int8"].miou is not None
    assert rows["tflite_int8-mixed"].agreement >= 0.8
    assert all(r.latency_ms > 0 for r in results)
    table = format_table(results, 6)
    assert "tflite_int8" in table and "mIoU" in table

    path = write_tflite(exportable, variants["int8"], str(tmp_path / "seg_int8.tflite"), (SIZE, SIZE), "int8")
    with open(path + ".json") as f:
        description = json.load(f)
    assert description["quantize"] == "int8" and description["input_size"] == [SIZE, SIZE]
    assert description["task"]["kind"] == "segmentation" and description["task"]["class_names"] == ["w", "v", "u"]
    assert LiteRTModel(path).description == description


@pytest.mark.parametrize("quantize", CALIBRATED)
def test_int8_needs_a_representative_dataset(quantize):
    with pytest.raises(ExportError, match=f"quantize={quantize} needs a representative dataset"):
        convert_tflite(tiny_exportable("regression"), (SIZE, SIZE), quantize)


def test_tflite_needs_a_fixed_size():
    model = tiny_exportable("regression").keras_model()
    with pytest.raises(ExportError, match="fixed input shape.*--input-size"):
        convert_keras_tflite(model, {"image": tf.TensorSpec([1, None, None, 4])})


class KerasArgmax(keras.layers.Layer):
    """keras.ops.argmax lowers to a BitwiseAnd (sign handling of -0.0) that TFLite lacks."""

    def call(self, x):
        return keras.ops.argmax(x, axis=-1)


class CumulativeProduct(keras.layers.Layer):
    def call(self, x):
        return tf.math.cumprod(x, axis=-1)


@pytest.mark.parametrize("layer, op", [(KerasArgmax(name="bad_argmax"), "BitwiseAnd"), (CumulativeProduct(name="bad_cumprod"), "Cumprod")])
def test_flex_ops_are_refused_with_the_op_named(layer, op):
    inputs = {"image": keras.Input((8, 8, 3), batch_size=1, name="image")}
    pooled = keras.layers.GlobalAveragePooling2D()(inputs["image"])
    model = keras.Model(inputs, {"out": layer(pooled)})
    with pytest.raises(UnsupportedOpsError) as info:
        convert_keras_tflite(model, {"image": tf.TensorSpec([1, 8, 8, 3])})
    assert info.value.ops == [op]
    message = str(info.value)
    assert op in message and "builtin" in message and "Flex" in message
    assert any(layer.name in scope for scope in info.value.scopes[op]), info.value.scopes


def test_unsupported_ops_message_parsing():
    message = (
        'loc(callsite(fused["Svd:", callsite("model/head/Svd@__inference_serve_7"("a.py":1:1) at "b.py":2:1)) error\n'
        "Some ops in the model are custom ops, See instructions to implement custom ops\n"
        "Custom ops: Svd\nDetails:\n\ttf.Svd(tensor<8x8xf32>) -> ...\n"
        "TF Select ops: Cumprod, MatrixInverse\nDetails:\n"
    )
    ops, scopes = unsupported_ops_from_message(message)
    assert ops == ["Svd", "Cumprod", "MatrixInverse"]
    assert scopes == {"Svd": ["model/head"]}


def test_preprocessing_ops_outside_tflite_name_the_transform():
    from rskeras.export.preprocessing import RawInput, plan_transforms
    from rskeras.train.transforms.concatenate import Concatenate
    from rskeras.train.transforms.terrain import ElevationToSlopeAspect

    exportable = tiny_exportable("segmentation")
    exportable.raw_inputs = [RawInput("dem", ("elevation",))]
    exportable.planned = plan_transforms(
        [ElevationToSlopeAspect(pixel_size_m=10.0, input_selector="dem", output_selector="terrain"), Concatenate({"terrain": [], "dem": []}, "image", concatenate_dim=0)],
        "data.init_args.default_config.transforms",
    )
    with pytest.raises(UnsupportedOpsError) as info:
        convert_tflite(exportable, (SIZE, SIZE))
    assert info.value.ops == ["Atan"]
    assert any("preprocessing" in scope and scope.endswith("/ElevationToSlopeAspect") for scope in info.value.scopes["Atan"]), info.value.scopes
    assert "pre-processing transform" in str(info.value)
