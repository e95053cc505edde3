"""TFLite export with TFLite builtin ops only (LiteRT interpreter on phones, drones, satellites).

``convert_tflite(exportable, input_size, quantize)`` converts the same raw-bands ->
pre-processing -> model -> named-outputs graph as the SavedModel, at a fixed input size
and batch 1, with ``tf.lite.TFLiteConverter`` and ``supported_ops = [TFLITE_BUILTINS]``
(plus ``TFLITE_BUILTINS_INT8`` for full-integer models). Flex (TF Select) and custom ops
are refused: when the graph needs them, ``UnsupportedOpsError`` names the ops and the
layers that use them. (Keras' ``model.export(format="litert")`` silently enables Flex;
rskeras does not use it.)

Quantization (``quantize``):

* ``none`` — float32;
* ``float16`` — float16 weights (dequantized at load; ~half size);
* ``dynamic`` — dynamic-range: int8 weights, float activations (~quarter size);
* ``int8`` — full-integer ops calibrated on a representative dataset of raw inputs (the
  dataset's train split); inputs and outputs stay float32 / int32 so that the signature
  is the same as the float model's (what integer-only accelerators need);
* ``int8-mixed`` — the same calibrated int8 convolutions, dense layers and element-wise
  ops, with the ops of ``MIXED_FLOAT_OPS`` (normalisation statistics, softmax, attention
  matmuls, GELU) left in float32: on a CPU the fastest variant of transformer models,
  whose int8 versions of these ops XNNPACK does not run (the interpreter's own int8
  kernels are slow and cut the graph into many partitions) and which lose most accuracy
  in int8.

``tools/export.py`` converts in a child process (``isolate=True``, module
``rskeras.export.tflite_worker``): a converter that aborts becomes one error line, not the
end of the command.

The signature (``serving_default``) keeps the input names (one per raw input, ``[1, H, W,
C]``) and output names of the SavedModel; run it with ``rskeras.export.litert``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable

import tensorflow as tf

from rskeras.export.description import CALIBRATED, QUANTIZATIONS
from rskeras.export.errors import ExportError
from rskeras.export.inference import Exportable
from rskeras.export.saved_model import SERVING_SIGNATURE, write_saved_model
from rskeras.export.tflite_convert import MIXED_FLOAT_OPS, convert_saved_model, unsupported_ops_from_message
from rskeras.export.tflite_worker import convert_isolated
from rskeras.utils.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["MIXED_FLOAT_OPS", "convert_keras_tflite", "convert_saved_model", "convert_tflite", "unsupported_ops_from_message", "write_tflite"]


def convert_keras_tflite(
    model: Any,
    input_specs: dict[str, tf.TensorSpec],
    quantize: str = "none",
    representative: Callable[[], Iterable[dict[str, Any]]] | None = None,
    isolate: bool = False,
) -> bytes:
    """Converts a Keras model taking an input dict (fixed-shape ``input_specs``) to a
    TFLite flatbuffer with builtin ops only; raises ``UnsupportedOpsError`` naming the
    ops that would need Flex / custom ops.

    The model goes through a temporary SavedModel (``serving_default`` signature), which
    keeps the input and output names in the TFLite signature. With ``isolate`` the
    converter runs in a child process (``rskeras.export.tflite_worker``): a converter that
    aborts or segfaults becomes an ``ExportError`` instead of the end of this process, and
    any other converter failure an ``ExportError`` with its message (what the commands use).
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    for name, spec in input_specs.items():
        if any(d is None for d in spec.shape):
            raise ExportError(f"TFLite export needs a fixed input shape; input {name!r} has shape {spec.shape} (give --input-size)")
    if quantize in CALIBRATED and representative is None:
        raise ExportError(f"quantize={quantize} needs a representative dataset (raw input examples)")
    with tempfile.TemporaryDirectory(prefix="rskeras-tflite-") as tmp:
        saved = write_saved_model({SERVING_SIGNATURE: (model, input_specs)}, os.path.join(tmp, "saved_model"))
        if isolate:
            return convert_isolated(saved, quantize, representative if quantize in CALIBRATED else None)
        return convert_saved_model(saved, quantize, representative)


def convert_tflite(
    exportable: Exportable,
    input_size: tuple[int, int],
    quantize: str = "none",
    representative: Callable[[], Iterable[dict[str, Any]]] | None = None,
    isolate: bool = False,
) -> bytes:
    """The TFLite flatbuffer of ``exportable`` at ``input_size`` (height, width), batch 1.
    ``representative`` (calibration inputs) is used by the calibrated variants
    (``CALIBRATED``) and ignored by the others; ``isolate``: convert in a child process
    (see ``convert_keras_tflite``)."""
    h, w = input_size
    model = exportable.keras_model(h, w, batch=1)
    return convert_keras_tflite(model, exportable.input_specs(h, w, 1), quantize, representative, isolate=isolate)


def write_tflite(exportable: Exportable, content: bytes, path: str, input_size: tuple[int, int], quantize: str) -> str:
    """Writes the flatbuffer and its ``<path>.json`` description (inputs, outputs,
    pre-processing, input size, quantization), atomically."""
    atomic_write_bytes(path, content)
    description = exportable.description()
    description.update(format="tflite", input_size=list(input_size), batch_size=1, quantize=quantize)
    atomic_write_text(path + ".json", json.dumps(description, indent=2))
    return path
