"""PickFeatures: selects feature maps by index."""

from __future__ import annotations

import keras

from rskeras.models.component import IntermediateComponent, require_feature_maps


@keras.saving.register_keras_serializable(package="rskeras")
class PickFeatures(IntermediateComponent):
    """Returns ``[maps[i] for i in indexes]`` (any order; repeats and negative indexes allowed).

    rslearn: ``rslearn.models.pick_features.PickFeatures``.

    Args:
        indexes: list of int, indexes into the input FeatureMaps.

    Call: FeatureMaps -> FeatureMaps with ``len(indexes)`` maps.
    """

    def __init__(self, indexes: list[int], **kwargs):
        super().__init__(**kwargs)
        if not all(isinstance(i, int) for i in indexes):
            raise ValueError(f"PickFeatures: indexes must be ints, got {indexes!r}")
        self.indexes = list(indexes)

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "PickFeatures")
        n = len(maps)
        for i in self.indexes:
            if not -n <= i < n:
                raise ValueError(f"PickFeatures: index {i} out of range for {n} feature maps")
        return [maps[i] for i in self.indexes]

    def get_config(self):
        return {**super().get_config(), "indexes": self.indexes}
