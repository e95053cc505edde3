"""Mapping PyTorch state dicts (torch key names, NCHW/OIHW layouts) onto rskeras layers.

Every component that can receive ported weights implements::

    def torch_params(self, prefix: str) -> list[TorchParam]

listing, for each torch key under ``prefix``, the Keras variable that receives it and the
layout conversion to apply. Keys that torch stores but that carry no trainable state in
rskeras (``num_batches_tracked``, precomputed index buffers) are listed with
``variable=None`` so that they are consumed, not reported as unexpected.

``load_torch_state_dict`` applies such a list and reports every missing, unexpected or
mis-shaped key by name; nothing is skipped silently. ``torch_state_dict`` is the reverse.

Standard Keras layers get their lists from :func:`params_of` (Dense, Conv1D/2D/3D,
Conv2DTranspose, LayerNormalization, BatchNormalization, or any layer with
``torch_params``) and torch ``Sequential`` containers from :func:`sequential_params`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import keras
import numpy as np

from rskeras.weights.errors import WeightLoadError

# Layout conversions torch -> Keras.
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    # Linear weight [out, in] -> Dense kernel [in, out]
    "linear": lambda a: a.T,
    # Conv2d weight [O, I, kh, kw] -> [kh, kw, I, O]
    "conv2d": lambda a: a.transpose(2, 3, 1, 0),
    # ConvTranspose2d weight [I, O, kh, kw] -> Conv2DTranspose kernel [kh, kw, O, I]
    "conv_transpose2d": lambda a: a.transpose(2, 3, 1, 0),
    # Conv3d weight [O, I, kd, kh, kw] -> [kd, kh, kw, I, O]
    "conv3d": lambda a: a.transpose(2, 3, 4, 1, 0),
    # Conv1d weight [O, I, k] -> [k, I, O]
    "conv1d": lambda a: a.transpose(2, 1, 0),
}


@dataclasses.dataclass
class TorchParam:
    """One torch state-dict entry and where it goes."""

    key: str
    variable: Any  # keras.Variable, or None for a consumed-but-unused buffer
    layout: str = "identity"
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # extra custom transform

    def convert(self, array: np.ndarray) -> np.ndarray:
        out = LAYOUTS[self.layout](np.asarray(array))
        if self.transform is not None:
            out = self.transform(out)
        return out


@dataclasses.dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]  # expected by the model, absent from the state dict
    unexpected: list[str]  # in the state dict (under the prefix), not used by the model
    mismatched: list[str]  # present but of the wrong shape (always an error)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched)):
            if keys:
                lines.append(f"{name} ({len(keys)}): " + ", ".join(keys))
        return "; ".join(lines)


def join(prefix: str, name: str) -> str:
    """Joins torch key parts with '.', ignoring empty parts."""
    return ".".join(p for p in (prefix, name) if p)


def load_torch_state_dict(
    layer: Any,
    state_dict: dict[str, np.ndarray],
    prefix: str = "",
    strict: bool = True,
    params: list[TorchParam] | None = None,
) -> LoadReport:
    """Assigns ``state_dict`` entries to ``layer``'s variables.

    Args:
        layer: object with ``torch_params(prefix)`` (the layer must be built).
        state_dict: torch key -> numpy array.
        prefix: torch key prefix of ``layer`` inside ``state_dict`` (e.g. ``"model.encoder.0"``).
        strict: raise WeightLoadError on missing or unexpected keys (shape mismatches always raise).
        params: precomputed parameter list (defaults to ``layer.torch_params(prefix)``).
    """
    if params is None:
        params = layer.torch_params(prefix)
    seen: set[str] = set()
    loaded, missing, mismatched = [], [], []
    for p in params:
        if p.key in seen:
            raise WeightLoadError(f"torch key {p.key} is mapped twice")
        seen.add(p.key)
        if p.key not in state_dict:
            if p.variable is not None:
                missing.append(p.key)
            continue
        if p.variable is None:
            continue
        value = p.convert(state_dict[p.key])
        want = tuple(p.variable.shape)
        if tuple(value.shape) != want:
            mismatched.append(f"{p.key} (torch {tuple(np.shape(state_dict[p.key]))} -> {tuple(value.shape)}, expected {want})")
            continue
        p.variable.assign(value.astype(p.variable.dtype))
        loaded.append(p.key)
    scope = prefix + "." if prefix else ""
    unexpected = sorted(k for k in state_dict if k.startswith(scope) and k not in seen)
    report = LoadReport(loaded, missing, unexpected, mismatched)
    if mismatched or (strict and (missing or unexpected)):
        raise WeightLoadError("state dict does not match the model: " + report.summary())
    return report


# ---- helpers for standard Keras layers -------------------------------------------------


def dense_params(layer: keras.layers.Dense, prefix: str) -> list[TorchParam]:
    """torch.nn.Linear -> keras Dense."""
    out = [TorchParam(join(prefix, "weight"), layer.kernel, "linear")]
    if layer.use_bias:
        out.append(TorchParam(join(prefix, "bias"), layer.bias))
    return out


def conv_params(layer: Any, prefix: str, layout: str = "conv2d") -> list[TorchParam]:
    """torch.nn.ConvNd / ConvTranspose2d -> keras Conv layers."""
    out = [TorchParam(join(prefix, "weight"), layer.kernel, layout)]
    if layer.use_bias:
        out.append(TorchParam(join(prefix, "bias"), layer.bias))
    return out


def layer_norm_params(layer: keras.layers.LayerNormalization, prefix: str) -> list[TorchParam]:
    """torch.nn.LayerNorm -> keras LayerNormalization."""
    return [TorchParam(join(prefix, "weight"), layer.gamma), TorchParam(join(prefix, "bias"), layer.beta)]


def batch_norm_params(layer: keras.layers.BatchNormalization, prefix: str) -> list[TorchParam]:
    """torch.nn.BatchNorm -> keras BatchNormalization (num_batches_tracked is consumed)."""
    return [
        TorchParam(join(prefix, "weight"), layer.gamma),
        TorchParam(join(prefix, "bias"), layer.beta),
        TorchParam(join(prefix, "running_mean"), layer.moving_mean),
        TorchParam(join(prefix, "running_var"), layer.moving_variance),
        TorchParam(join(prefix, "num_batches_tracked"), None),
    ]


def collect(items: Iterable[tuple[Any, str]]) -> list[TorchParam]:
    """Concatenates ``torch_params`` of several (layer, prefix) pairs."""
    out: list[TorchParam] = []
    for layer, prefix in items:
        out.extend(layer.torch_params(prefix))
    return out


def params_of(layer: Any, prefix: str) -> list[TorchParam]:
    """torch_params of a Dense / LayerNormalization / BatchNormalization / rskeras layer."""
    if hasattr(layer, "torch_params"):
        return layer.torch_params(prefix)
    if isinstance(layer, keras.layers.Dense):
        return dense_params(layer, prefix)
    if isinstance(layer, keras.layers.LayerNormalization):
        return layer_norm_params(layer, prefix)
    if isinstance(layer, keras.layers.BatchNormalization):
        return batch_norm_params(layer, prefix)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        layout = {1: "conv1d", 2: "conv2d", 3: "conv3d"}[len(layer.kernel_size)]
        return conv_params(layer, prefix, layout)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return conv_params(layer, prefix, "conv_transpose2d")
    raise TypeError(f"no torch parameter mapping for {type(layer).__name__} at {prefix!r}")


def sequential_params(modules: list[tuple[int, Any]], prefix: str) -> list[TorchParam]:
    """torch_params of the weighted entries of a torch ``Sequential``.

    ``modules`` lists ``(index in the torch Sequential, keras layer)`` for the entries
    that hold weights (activations and upsampling layers have no entry).
    """
    out: list[TorchParam] = []
    for index, layer in modules:
        out.extend(params_of(layer, join(prefix, str(index))))
    return out


# Layout conversions Keras -> torch (inverse of LAYOUTS), for exporting state dicts.
INVERSE_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,
    "conv2d": lambda a: a.transpose(3, 2, 0, 1),
    "conv_transpose2d": lambda a: a.transpose(3, 2, 0, 1),
    "conv3d": lambda a: a.transpose(4, 3, 0, 1, 2),
    "conv1d": lambda a: a.transpose(2, 1, 0),
}


def torch_state_dict(layer: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The torch state dict of ``layer``'s weights (variables mapped by ``torch_params``).

    Buffers that rskeras does not store (``variable=None``) are left out; params with a
    custom ``transform`` cannot be inverted and raise.
    """
    out: dict[str, np.ndarray] = {}
    for p in layer.torch_params(prefix):
        if p.variable is None:
            continue
        if p.transform is not None:
            raise ValueError(f"torch key {p.key} uses a custom transform and cannot be exported")
        out[p.key] = np.array(INVERSE_LAYOUTS[p.layout](np.asarray(p.variable.numpy())), order="C")
    return out
