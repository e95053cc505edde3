"""The TFLite conversion itself: one ``serving_default`` SavedModel signature to a flatbuffer
with TFLite builtin ops only, at one quantization.

``convert_saved_model`` runs ``tf.lite.TFLiteConverter`` in this process; the export
commands call it in a child process (``rskeras.export.tflite_worker``) so that a converter
abort is an error line. ``unsupported_ops_error`` turns a converter message that needs Flex
/ custom ops into ``UnsupportedOpsError`` naming the ops and the layers using them.
``rskeras.export.tflite`` builds the SavedModel from an ``Exportable`` and writes the file.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Iterable

import tensorflow as tf

from rskeras.export.description import CALIBRATED
from rskeras.export.errors import ExportError, UnsupportedOpsError
from rskeras.export.saved_model import SERVING_SIGNATURE


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
