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
import re
import tempfile
import warnings
from typing import Any, Callable, Iterable

import tensorflow as tf

from rskeras.export.description import CALIBRATED, QUANTIZATIONS
from rskeras.export.errors import ExportError, UnsupportedOpsError
from rskeras.export.inference import Exportable
from rskeras.export.saved_model import SERVING_SIGNATURE, write_saved_model
from rskeras.utils.fileio import atomic_write_bytes, atomic_write_text


# TFLite op types that ``int8-mixed`` keeps in float32 (converter op names).
MIXED_FLOAT_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "NEG", "L2_NORMALIZATION", "SOFTMAX", "BATCH_MATMUL", "GELU")

_SELECT_OPS = re.compile(r"(?:TF Select ops|Flex ops|Custom ops): ([^\n]+)")
_OP_LOCATION = re.compile(r'fused\["(\w+):", (?:callsite\()?"([^"@]+)@')


def unsupported_ops_from_message(message: str) -> tuple[list[str], dict[str, list[str]]]:
    """(op names, op -> name scopes) from a TFLite converter error message."""
    ops: list[str] = []
    for match in _SELECT_OPS.finditer(message):
        for op in match.group(1).split(","):
            op = op.strip()
            if op and op not in ops:
                ops.append(op)
    scopes: dict[str, list[str]] = {}
    for op, scope in _OP_LOCATION.findall(message):
        if op in ops:
            scope = scope.rsplit("/", 1)[0] if "/" in scope else scope
            if scope not in scopes.setdefault(op, []):
                scopes[op].append(scope)
    return ops, scopes


def _converter(saved_model_dir: str, quantize: str, representative: Callable[[], Iterable[dict[str, Any]]] | None) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SERVING_SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize in CALIBRATED:
        if representative is None:
            raise ExportError(f"quantize={quantize} needs a representative dataset (raw input examples)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


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
            from rskeras.export.tflite_worker import convert_isolated

            return convert_isolated(saved, quantize, representative if quantize in CALIBRATED else None)
        return convert_saved_model(saved, quantize, representative)


def convert_saved_model(
    saved_model_dir: str,
    quantize: str,
    representative: Callable[[], Iterable[dict[str, Any]]] | None = None,
    raw_errors: bool = False,
) -> bytes:
    """Converts the ``serving_default`` signature of a SavedModel in this process. A
    converter error that names ops outside the builtin set becomes ``UnsupportedOpsError``
    (unless ``raw_errors``: the worker process hands the message to its parent)."""
    converter = _converter(saved_model_dir, quantize, representative)
    try:
        with warnings.catch_warnings():
            # int8 calibration runs TF's deprecated tf.lite.Interpreter internally.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            if quantize == "int8-mixed":
                return _mixed_int8(converter, representative)
            return converter.convert()
    except Exception as e:  # ConverterError lives in a private module
        if raw_errors:
            raise
        ops, scopes = unsupported_ops_from_message(str(e))
        if not ops:
            raise
    raise unsupported_ops_error(ops, scopes)


def unsupported_ops_error(ops: list[str], scopes: dict[str, list[str]]) -> UnsupportedOpsError:
    """The error naming the non-builtin ops a conversion needs and the layers using them."""
    where = "; ".join(f"{op} in {', '.join(scopes[op])}" for op in ops if scopes.get(op))
    in_preprocessing = any("preprocessing" in scope for op_scopes in scopes.values() for scope in op_scopes)
    return UnsupportedOpsError(
        f"TFLite conversion needs ops outside the TFLite builtin set: {', '.join(ops)}"
        + (f" ({where})" if where else "")
        + ". rskeras exports builtin ops only (no Flex / TF Select, no custom ops): replace these ops in the model "
        "(e.g. keras.ops.argmax -> tf.argmax, tf.image.crop_and_resize -> gather-based RoIAlign)"
        + (
            "; a pre-processing transform needs them: it works in the SavedModel, but for TFLite apply it before the "
            "model or choose a builtin-compatible option (e.g. Resize interpolation 'nearest')"
            if in_preprocessing
            else ""
        ),
        ops,
        scopes,
    )


def _mixed_int8(converter: tf.lite.TFLiteConverter, representative: Callable[[], Iterable[dict[str, Any]]]) -> bytes:
    """Calibrates once and quantizes with ``MIXED_FLOAT_OPS`` left in float32 (the
    converter's op denylist, through TF's public quantization debugger)."""
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(MIXED_FLOAT_OPS))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative, debug_options=options)
    return debugger.get_nondebug_quantized_model()


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
