"""ResizeFeatures: resizes each feature map to its own output size."""

from __future__ import annotations

import keras

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.interpolate import check_mode, resize


@keras.saving.register_keras_serializable(package="rskeras")
class ResizeFeatures(IntermediateComponent):
    """Resizes map i to ``out_sizes[i]`` with torch ``F.interpolate`` semantics.

    Also downsamples: bilinear without antialiasing (align_corners=False), nearest with
    torch's legacy ``floor(dst * in / out)`` source index.

    rslearn: ``rslearn.models.resize_features.ResizeFeatures``.

    Args:
        out_sizes: list of ``[h, w]``, one per input map.
        mode: str, "bilinear" (default) or "nearest".

    Call: FeatureMaps ``[B, H_i, W_i, C_i]`` -> FeatureMaps ``[B, h_i, w_i, C_i]``.
    """

    def __init__(self, out_sizes: list, mode: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        sizes = []
        for size in out_sizes:
            if len(size) != 2 or any(int(v) <= 0 for v in size):
                raise ValueError(f"ResizeFeatures: each out size must be a positive [h, w], got {size!r}")
            sizes.append([int(size[0]), int(size[1])])
        self.out_sizes = sizes
        self.mode = check_mode(mode, "ResizeFeatures")

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "ResizeFeatures")
        if len(maps) > len(self.out_sizes):
            raise ValueError(f"ResizeFeatures: {len(maps)} feature maps but only {len(self.out_sizes)} out_sizes")
        return [resize(x, tuple(self.out_sizes[i]), self.mode) for i, x in enumerate(maps)]

    def get_config(self):
        return {**super().get_config(), "out_sizes": self.out_sizes, "mode": self.mode}
