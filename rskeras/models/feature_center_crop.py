"""FeatureCenterCrop: keeps the centre of each feature map."""

from __future__ import annotations

import keras

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.shapes import spatial_size


@keras.saving.register_keras_serializable(package="rskeras")
class FeatureCenterCrop(IntermediateComponent):
    """Crops map i to ``sizes[i] = [h, w]`` starting at ``(H // 2 - h // 2, W // 2 - w // 2)``.

    rslearn: ``rslearn.models.feature_center_crop.FeatureCenterCrop``.

    Args:
        sizes: list of ``[h, w]``, one per input map.

    Call: FeatureMaps ``[B, H_i, W_i, C]`` -> FeatureMaps ``[B, h_i, w_i, C]``; ValueError if
    a (static) map is smaller than its crop.
    """

    def __init__(self, sizes: list, **kwargs):
        super().__init__(**kwargs)
        self.sizes = [[int(h), int(w)] for h, w in sizes]

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "FeatureCenterCrop")
        if len(maps) > len(self.sizes):
            raise ValueError(f"FeatureCenterCrop: {len(maps)} feature maps but only {len(self.sizes)} sizes")
        out = []
        for i, x in enumerate(maps):
            h, w = self.sizes[i]
            height, width = spatial_size(x)
            if isinstance(height, int) and isinstance(width, int) and (height < h or width < w):
                raise ValueError(f"FeatureCenterCrop: feature map {i} of size {height}x{width} is smaller than the crop {h}x{w}")
            top = height // 2 - h // 2
            left = width // 2 - w // 2
            out.append(x[:, top : top + h, left : left + w, :])
        return out

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes}
