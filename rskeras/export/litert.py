"""Running exported TFLite models with the LiteRT interpreter, without TensorFlow.

Only numpy and ``ai_edge_litert`` are imported, so that edge devices need neither
TensorFlow nor Keras::

    from rskeras.export.litert import LiteRTModel
    model = LiteRTModel("model.tflite")
    outputs = model(image=raw_bands[None])   # {"probabilities": ..., "class_ids": ...}

The ``<model>.tflite.json`` description written by the exporter (band order, output
meanings, class names) is available as ``model.description`` when present.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

SIGNATURE = "serving_default"


def _details(details: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Signature-runner tensor details -> {name: (shape, dtype)}."""
    return {name: (tuple(int(d) for d in v["shape"]), np.dtype(v["dtype"])) for name, v in details.items()}


class LiteRTModel:
    """A TFLite model called with named inputs, returning named outputs.

    Args:
        path: the ``.tflite`` file (or None with ``content``).
        content: the flatbuffer bytes instead of a file.
        num_threads: interpreter threads (default: LiteRT's choice).
        signature: signature key (default ``serving_default``; the first one if absent).

    Call: keyword arrays matching ``input_details`` (shape and dtype are checked, values
    cast to the input dtype); returns ``{output name: numpy array}``.
    """

    def __init__(self, path: str | None = None, content: bytes | None = None, num_threads: int | None = None, signature: str = SIGNATURE):
        from ai_edge_litert.interpreter import Interpreter

        if (path is None) == (content is None):
            raise ValueError("LiteRTModel: give exactly one of path and content")
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such TFLite model")
        self.path = path
        kwargs: dict[str, Any] = {"num_threads": num_threads} if num_threads else {}
        try:
            self.interpreter = Interpreter(model_path=path, **kwargs) if path else Interpreter(model_content=content, **kwargs)
        except (ValueError, RuntimeError) as e:
            from rskeras.weights.errors import CheckpointError

            size = f"{os.path.getsize(path)} bytes" if path else f"{len(content or b'')} bytes"
            reason = " ".join(str(e).split())  # LiteRT's message ends with a newline
            raise CheckpointError(f"{path or 'model'}: not a valid TFLite model ({size}; {reason})") from None
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError(f"LiteRTModel: {path or 'model'} has no signature (export it with rskeras)")
        if signature not in signatures:
            signature = next(iter(signatures))
        self.signature = signature
        self.runner = self.interpreter.get_signature_runner(signature)
        self.input_details = _details(self.runner.get_input_details())
        self.output_details = _details(self.runner.get_output_details())
        self.description: dict[str, Any] | None = None
        if path and os.path.exists(path + ".json"):
            with open(path + ".json") as f:
                self.description = json.load(f)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = sorted(set(self.input_details) - set(inputs))
        extra = sorted(set(inputs) - set(self.input_details))
        if missing or extra:
            raise ValueError(f"LiteRTModel: expected inputs {sorted(self.input_details)}, got {sorted(inputs)}")
        feed = {}
        for name, (shape, dtype) in self.input_details.items():
            value = np.asarray(inputs[name])
            if tuple(value.shape) != shape:
                raise ValueError(f"LiteRTModel: input {name!r} must have shape {list(shape)}, got {list(value.shape)}")
            feed[name] = value.astype(dtype, copy=False)
        return {k: np.array(v) for k, v in self.runner(**feed).items()}

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the first input."""
        shape = next(iter(self.input_details.values()))[0]
        return (shape[1], shape[2]) if len(shape) == 4 else (shape[2], shape[3])
