"""PixelShuffle: sub-pixel rearrangement with torch's channel order."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import IntermediateComponent, require_feature_maps


def pixel_shuffle(x: tf.Tensor, r: int) -> tf.Tensor:
    """``torch.nn.PixelShuffle(r)`` on NHWC: ``[B, H, W, C r^2]`` -> ``[B, H r, W r, C]``.

    torch reads input channel ``c r^2 + i r + j`` into output pixel ``(y r + i, x r + j)``
    of channel c, whereas ``tf.nn.depth_to_space`` reads channel ``(i r + j) C + c``; the
    channels are permuted first so that the TFLite builtin DEPTH_TO_SPACE can be used.
    """
    if r == 1:
        return x
    channels = x.shape[-1]
    if channels is None or channels % (r * r) != 0:
        raise ValueError(f"PixelShuffle: channels ({channels}) must be a known multiple of upscale_factor^2 ({r * r})")
    c_out = channels // (r * r)
    # new channel (i r + j) C + c takes torch channel c r^2 + i r + j
    order = np.arange(channels).reshape(c_out, r * r).T.reshape(-1)
    return tf.nn.depth_to_space(tf.gather(x, order, axis=-1), r)


@keras.saving.register_keras_serializable(package="rskeras")
class PixelShuffle(IntermediateComponent):
    """Rearranges each map from ``C r^2`` channels to ``C`` channels at ``r`` times the size.

    rslearn: ``rslearn.models.pixel_shuffle.PixelShuffle`` (``torch.nn.PixelShuffle``
    channel order, see :func:`pixel_shuffle`).

    Args:
        upscale_factor: int, r.

    Call: FeatureMaps ``[B, H, W, C r^2]`` -> FeatureMaps ``[B, H r, W r, C]``.
    """

    def __init__(self, upscale_factor: int, **kwargs):
        super().__init__(**kwargs)
        if int(upscale_factor) < 1:
            raise ValueError(f"PixelShuffle: upscale_factor must be >= 1, got {upscale_factor}")
        self.upscale_factor = int(upscale_factor)

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "PixelShuffle")
        return [pixel_shuffle(x, self.upscale_factor) for x in maps]

    def get_config(self):
        return {**super().get_config(), "upscale_factor": self.upscale_factor}
