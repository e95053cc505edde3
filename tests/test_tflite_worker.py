"""TFLite conversion in a child process (what tools/export.py uses): the same flatbuffer as
an in-process conversion, converter errors as ExportError / UnsupportedOpsError, and a
converter that aborts as one ExportError naming the signal and its last output."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_helpers import SIZE, raw_image, tiny_exportable
from rskeras.export.errors import ExportError, UnsupportedOpsError
from rskeras.export.examples import signature_batch, tiles
from rskeras.export.saved_model import SERVING_SIGNATURE, write_saved_model
from rskeras.export.tflite import convert_keras_tflite, convert_tflite
from rskeras.export.tflite_worker import conversion_error, convert_isolated, read_calibration, write_calibration


def representative_of(exportable):
    calibration = [{"image": raw_image(200 + i, size=2 * SIZE)} for i in range(2)]

    def gen():
        for example in calibration:
            for tile in tiles(example, SIZE, SIZE):
                yield signature_batch(tile, exportable.raw_inputs)

    return gen


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_isolated_conversion_gives_the_in_process_flatbuffer(quantize):
    exportable = tiny_exportable("segmentation")
    representative = representative_of(exportable) if quantize == "int8" else None
    here = convert_tflite(exportable, (SIZE, SIZE), quantize, representative)
    child = convert_tflite(exportable, (SIZE, SIZE), quantize, representative, isolate=True)
    assert child == here


def test_calibration_round_trip(tmp_path):
    exportable = tiny_exportable("segmentation")
    gen = representative_of(exportable)
    assert write_calibration(gen, str(tmp_path / "c")) == 8
    back = list(read_calibration(str(tmp_path / "c"))())
    original = list(gen())
    assert len(back) == len(original)
    for a, b in zip(original, back):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])


class CumulativeProduct(keras.layers.Layer):
    def call(self, x):
        return tf.math.cumprod(x, axis=-1)


def test_isolated_conversion_names_flex_ops():
    inputs = {"image": keras.Input((8, 8, 3), batch_size=1, name="image")}
    model = keras.Model(inputs, {"out": CumulativeProduct(name="bad_cumprod")(keras.layers.GlobalAveragePooling2D()(inputs["image"]))})
    with pytest.raises(UnsupportedOpsError) as info:
        convert_keras_tflite(model, {"image": tf.TensorSpec([1, 8, 8, 3])}, isolate=True)
    assert info.value.ops == ["Cumprod"]
    assert any("bad_cumprod" in scope for scope in info.value.scopes["Cumprod"]), info.value.scopes


def test_other_converter_errors_are_one_line():
    error = conversion_error("\n  Quantization failed:\nscale out of expressed type range\nmore\nand more\n", "int8")
    assert type(error) is ExportError
    assert str(error) == "TFLite conversion with quantize=int8 failed: Quantization failed: | scale out of expressed type range | more"


@pytest.fixture
def saved_model(tmp_path):
    exportable = tiny_exportable("regression")
    model = exportable.keras_model(SIZE, SIZE, batch=1)
    return write_saved_model({SERVING_SIGNATURE: (model, exportable.input_specs(SIZE, SIZE, 1))}, str(tmp_path / "sm"))


def test_a_crashing_converter_is_an_export_error(saved_model):
    # A child that logs a failed check and aborts, as TFLite's C++ converter can.
    crash = [sys.executable, "-c", "import os, sys; print('F1203 quantize.cc:42] Check failed: scale > 0'); sys.stdout.flush(); os.abort()"]
    with pytest.raises(ExportError) as info:
        convert_isolated(saved_model, "int8", None, command=crash)
    message = str(info.value)
    assert "crashed (SIGABRT)" in message and "quantize=int8" in message
    assert "Check failed: scale > 0" in message and "int8-mixed" in message
    assert "\n" not in message


def test_a_child_that_exits_without_output_is_an_export_error(saved_model):
    with pytest.raises(ExportError, match=r"crashed \(exit code 3\) converting with quantize=none$"):
        convert_isolated(saved_model, "none", None, command=[sys.executable, "-c", "raise SystemExit(3)"])


def test_worker_command_line(saved_model, tmp_path):
    from rskeras.export.tflite_worker import main

    work = tmp_path / "w"
    work.mkdir()
    assert main(["--saved-model", saved_model, "--quantize", "dynamic", "--work", str(work)]) == 0
    assert (work / "model.tflite").stat().st_size > 0 and not (work / "error.json").exists()
    # int8 without calibration examples: the converter's error goes to error.json, exit 1
    assert main(["--saved-model", saved_model, "--quantize", "int8", "--work", str(work)]) == 1
    assert "representative dataset" in (work / "error.json").read_text()
    assert not [p for p in os.listdir(work) if p.endswith(".tmp")]
