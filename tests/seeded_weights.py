"""Deterministic random state dicts that numpy regenerates anywhere (no torch, no file).

Golden fixtures of large models (SSL4EO-S12's 25.6M-parameter ResNet-50) store only the
key list, the seed, the inputs and the torch outputs; the weights are rebuilt here from
the seed, in the key order of the fixture.
"""

from __future__ import annotations

import numpy as np


def seeded_state_dict(keys_and_shapes: list, seed: int) -> dict[str, np.ndarray]:
    """``[(key, shape), ...]`` -> ``{key: float32 array}`` (int64 zeros for
    ``num_batches_tracked``). Convolutions get He-normal weights, BatchNorm scales and
    running variances U(0.5, 1.5), biases and running means N(0, 0.1), Linear weights
    N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in keys_and_shapes:
        shape = tuple(int(s) for s in shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, np.int64)
            continue
        if len(shape) == 4:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif len(shape) == 2:
            value = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        elif leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        out[key] = value.astype(np.float32)
    return out
