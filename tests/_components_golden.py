"""Helpers shared by the component parity tests (golden fixtures in tests/fixtures)."""

import json

import numpy as np

from conftest import FIXTURES

# The small torchvision Swin of the golden fixtures (item 1 of the golden README):
# rslearn Swin(arch=swin_t / swin_v2_t, input_channels=5, num_outputs=7) whose .model was
# replaced by SwinTransformer(embed_dim=24, depths=[2,2,2,2], heads=[1,2,2,4], window 4).
SMALL_SWIN = dict(input_channels=5, num_outputs=7, embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 4], stochastic_depth_prob=0.2)


def load(name: str):
    return np.load(FIXTURES / name)


def config(z) -> dict:
    return json.loads(str(z["config"][0]))


def weights(z, prefix: str = "") -> dict:
    """The ``w/`` entries of a golden file, keys prefixed with ``prefix``."""
    return {prefix + k[2:]: z[k] for k in z.files if k.startswith("w/")}


def nhwc(a: np.ndarray) -> np.ndarray:
    """NCHW golden map -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


def images(a: np.ndarray) -> np.ndarray:
    """Golden B x C x T x H x W batch -> rskeras [B, T, H, W, C]."""
    return np.transpose(a, (0, 2, 3, 4, 1))


def max_abs(actual, expected) -> float:
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape} != golden {expected.shape}"
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0


def assert_close(actual, expected, atol: float, what: str) -> float:
    d = max_abs(actual, expected)
    assert d <= atol, f"{what}: max abs diff {d:.3e} > {atol:.0e}"
    return d
