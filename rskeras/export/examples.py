"""Raw examples of a dataset split, for calibration (int8 TFLite) and parity checks.

Exported models take raw bands, so these helpers read the data module's raw inputs
(before the task and the transforms) as numpy ``[T, H, W, C]`` arrays, and cut or pad
them to the fixed input size of a TFLite model.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from rskeras.export.preprocessing import RawInput


def raw_examples(data: Any, stage: str, raw_inputs: list[RawInput], limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{input name: [T, H, W, C] numpy array}`` of the first ``limit`` examples
    of ``stage`` (all when None), in the split's deterministic order."""
    ds = data.raw_dataset(stage, shuffle=False)
    if limit is not None:
        ds = ds.take(limit)
    for raw, _metadata in ds:
        yield {r.name: np.asarray(raw[r.name]) for r in raw_inputs}


def _fit_array(a: np.ndarray, height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    """``a[..., top:top+height, left:left+width, :]``, zero-padded bottom/right when short."""
    part = a[..., top : top + height, left : left + width, :]
    pad_h, pad_w = height - part.shape[-3], width - part.shape[-2]
    if pad_h or pad_w:
        pad = [(0, 0)] * (part.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
        part = np.pad(part, pad)
    return part


def _scaled_sizes(example: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per input, its size relative to the first input (inputs at other resolutions)."""
    first = next(iter(example.values()))
    h0, w0 = first.shape[-3], first.shape[-2]
    return {k: (a.shape[-3] / h0, a.shape[-2] / w0) for k, a in example.items()}


def fit_example(example: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """The top-left ``height x width`` crop of every input (zero-padded when smaller);
    inputs at other resolutions get the proportional size."""
    scales = _scaled_sizes(example)
    return {k: _fit_array(a, round(height * scales[k][0]), round(width * scales[k][1])) for k, a in example.items()}


def tiles(example: dict[str, np.ndarray], height: int, width: int) -> Iterator[dict[str, np.ndarray]]:
    """Non-overlapping ``height x width`` tiles covering the example (edge tiles padded)."""
    scales = _scaled_sizes(example)
    first = next(iter(example.values()))
    h0, w0 = first.shape[-3], first.shape[-2]
    for top in range(0, max(h0, 1), height):
        for left in range(0, max(w0, 1), width):
            yield {
                k: _fit_array(
                    a,
                    round(height * scales[k][0]),
                    round(width * scales[k][1]),
                    round(top * scales[k][0]),
                    round(left * scales[k][1]),
                )
                for k, a in example.items()
            }


def signature_batch(example: dict[str, np.ndarray], raw_inputs: list[RawInput]) -> dict[str, np.ndarray]:
    """One example as a batch of 1 in signature layout (NHWC for single timesteps)."""
    out = {}
    for r in raw_inputs:
        a = np.asarray(example[r.name], dtype=r.dtype)
        out[r.name] = a[None, 0] if r.num_timesteps == 1 else a[None]
    return out
