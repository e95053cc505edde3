"""Upsample: resizes every feature map by the same factor."""

from __future__ import annotations

import keras

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.interpolate import check_mode, resize, scaled_size


@keras.saving.register_keras_serializable(package="rskeras")
class Upsample(IntermediateComponent):
    """``torch.nn.Upsample(scale_factor, mode)`` applied to each map.

    Output size is ``floor(size * scale_factor)``; "bilinear" uses align_corners=False
    (half-pixel centres, no antialiasing), "nearest" torch's legacy
    ``floor(dst / scale_factor)`` source index.

    rslearn: ``rslearn.models.upsample.Upsample``.

    Args:
        scale_factor: int (or float), e.g. 2 to double H and W.
        mode: str, "bilinear" (default) or "nearest".

    Call: FeatureMaps ``[B, H, W, C]`` -> FeatureMaps ``[B, H*s, W*s, C]``.
    """

    def __init__(self, scale_factor: float, mode: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if scale_factor <= 0:
            raise ValueError(f"Upsample: scale_factor must be positive, got {scale_factor}")
        self.scale_factor = scale_factor
        self.mode = check_mode(mode, "Upsample")

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "Upsample")
        return [resize(x, scaled_size(x, self.scale_factor), self.mode) for x in maps]

    def get_config(self):
        return {**super().get_config(), "scale_factor": self.scale_factor, "mode": self.mode}
