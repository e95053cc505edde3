"""SimpleCNN: a small convolutional feature extractor (an rskeras addition).

Not an rslearn component: a fast encoder for the sample dataset, tests and benchmarks on
CPU. It computes ``num_stages`` stages of [Conv3x3 -> ReLU] × ``convs_per_stage`` followed
by 2×2 max pooling, and returns the stage outputs as FeatureMaps at strides 2, 4, 8, ...
"""

from __future__ import annotations

import keras

from rskeras.models.component import FeatureExtractor, single_timestep


class SimpleCNN(FeatureExtractor):
    """Small CNN encoder.

    Args:
        in_channels: channels of the input image.
        channels: output channels of each stage (default [32, 64, 128]); the number of
            stages is its length.
        convs_per_stage: 3x3 conv + ReLU layers per stage (default 2).
        image_key: input-dict key of the image (default "image").

    Input: ``context[image_key]`` of shape ``[B, 1, H, W, C]`` (or ``[B, H, W, C]``).
    Output: FeatureMaps ``[B, H/2^(i+1), W/2^(i+1), channels[i]]`` for each stage i.
    """

    def __init__(self, in_channels: int, channels: list[int] | None = None, convs_per_stage: int = 2, image_key: str = "image", **kwargs):
        super().__init__(**kwargs)
        channels = list(channels or [32, 64, 128])
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        self.in_channels = in_channels
        self.channels = channels
        self.convs_per_stage = convs_per_stage
        self.image_key = image_key
        self.stages = [
            [keras.layers.Conv2D(c, 3, padding="same", activation="relu") for _ in range(convs_per_stage)] for c in channels
        ]
        self.pool = keras.layers.MaxPooling2D(2)

    def build(self, *args, **kwargs):
        self.built = True

    def call(self, context, training=None):
        x = single_timestep(context[self.image_key], "SimpleCNN", self.image_key)
        if x.shape[-1] is not None and x.shape[-1] != self.in_channels:
            raise ValueError(f"SimpleCNN: expected {self.in_channels} input channels, got {x.shape[-1]}")
        features = []
        for stage in self.stages:
            for conv in stage:
                x = conv(x)
            x = self.pool(x)
            features.append(x)
        return features

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        return [(2 ** (i + 1), c) for i, c in enumerate(self.channels)]

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "channels": self.channels,
            "convs_per_stage": self.convs_per_stage,
            "image_key": self.image_key,
        }
