"""Fpn: feature pyramid network (torchvision ``FeaturePyramidNetwork``, no extra blocks)."""

from __future__ import annotations

import keras

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.interpolate import resize_nearest
from rskeras.models.shapes import spatial_size
from rskeras.models.torch_nn import Conv2d
from rskeras.weights.torch_params import TorchParam, join


@keras.saving.register_keras_serializable(package="rskeras")
class Fpn(IntermediateComponent):
    """Feature pyramid network (Lin et al. 2017) as torchvision builds it.

    For maps ``x_0..x_{n-1}`` (finest first): ``last = lateral_{n-1}(x_{n-1})``,
    ``y_{n-1} = out_{n-1}(last)``; then for i = n-2..0:
    ``last = lateral_i(x_i) + nearest_resize(last, size(x_i))``, ``y_i = out_i(last)``.
    Laterals are 1x1 convs, outputs 3x3 convs with padding 1, all with bias and without
    activation. The resize is torch's legacy nearest (``floor(dst * in / out)``), which
    matters for non-power-of-two sizes.

    rslearn: ``rslearn.models.fpn.Fpn``. Torch keys: ``fpn.inner_blocks.<i>.0.*``,
    ``fpn.layer_blocks.<i>.0.*``.

    Args:
        in_channels: list of int, channels of each input map.
        out_channels: int, channels of every output map, default 128.
        prepend: bool, return ``outputs + inputs`` (concatenated lists) instead of the
            outputs alone; default False.

    Call: FeatureMaps (len(in_channels) maps) -> FeatureMaps of ``out_channels`` maps at
    the same resolutions (followed by the inputs when ``prepend``).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 128, prepend: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not in_channels:
            raise ValueError(f"Fpn: in_channels must list at least one map, got {in_channels!r}")
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = int(out_channels)
        self.prepend = bool(prepend)
        # torchvision initialises FPN convs with kaiming_uniform(a=1) and zero bias.
        init = keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="uniform")
        self.inner_blocks = [
            Conv2d(c, self.out_channels, 1, kernel_initializer=init, bias_initializer="zeros", name=f"inner_{i}")
            for i, c in enumerate(self.in_channels)
        ]
        self.layer_blocks = [
            Conv2d(self.out_channels, self.out_channels, 3, padding=1, kernel_initializer=init, bias_initializer="zeros", name=f"layer_{i}")
            for i in range(len(self.in_channels))
        ]
        self.built = True  # the Conv2d layers build themselves

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "Fpn")
        if len(maps) != len(self.in_channels):
            raise ValueError(f"Fpn: expected {len(self.in_channels)} feature maps (in_channels={self.in_channels}), got {len(maps)}")
        last = self.inner_blocks[-1](maps[-1])
        outputs = [self.layer_blocks[-1](last)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.inner_blocks[i](maps[i])
            last = lateral + resize_nearest(last, spatial_size(lateral))
            outputs.insert(0, self.layer_blocks[i](last))
        if self.prepend:
            return outputs + list(maps)
        return outputs

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for i, conv in enumerate(self.inner_blocks):
            out += conv.torch_params(join(prefix, f"fpn.inner_blocks.{i}.0"))
        for i, conv in enumerate(self.layer_blocks):
            out += conv.torch_params(join(prefix, f"fpn.layer_blocks.{i}.0"))
        return out

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels, "prepend": self.prepend}
