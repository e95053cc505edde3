"""ConcatenateFeatures: appends (convolved) raw input channels to every feature map."""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.interpolate import resize_bilinear
from rskeras.models.shapes import spatial_size
from rskeras.models.torch_nn import Conv2d
from rskeras.weights.torch_params import TorchParam, join


def flatten_time_into_channels(image: tf.Tensor) -> tf.Tensor:
    """``[B, T, H, W, C]`` -> ``[B, H, W, C*T]`` with channel index ``c*T + t``.

    This is rslearn's ``rearrange(image, "c t h w -> (c t) h w")`` (channel-major).
    """
    if len(image.shape) == 4:
        return image
    b, t, h, w, c = (image.shape[i] if image.shape[i] is not None else tf.shape(image)[i] for i in range(5))
    x = tf.transpose(image, [0, 2, 3, 4, 1])
    ct = c * t if isinstance(c, int) and isinstance(t, int) else -1
    return tf.reshape(x, [-1 if not isinstance(b, int) else b, h, w, ct])


@keras.saving.register_keras_serializable(package="rskeras")
class ConcatenateFeatures(IntermediateComponent):
    """Concatenates features computed from a raw input after each feature map's channels.

    The input ``context[key]`` (``[B, T, H, W, C]``, flattened channel-major to ``C*T``
    channels) goes through ``num_conv_layers`` convs ("same" padding, ReLU between them
    and after the last only if ``final_relu``), is bilinearly resized (align_corners
    False) to each map's size when it differs, and appended to that map's channels.

    rslearn: ``rslearn.models.concatenate_features.ConcatenateFeatures``. Torch keys:
    ``conv_layers.<index>.*`` (indexes count the ReLU modules too).

    Args:
        key: str, context key of the raw input.
        in_channels: int or None, channels of the flattened input (required with convs).
        conv_channels: int, width of intermediate convs, default 64.
        out_channels: int or None, channels of the last conv (required with convs).
        num_conv_layers: int, default 1.
        kernel_size: int, default 3.
        final_relu: bool, ReLU after the last conv, default False.

    Call: FeatureMaps ``[B, H_i, W_i, C_i]`` + context -> FeatureMaps
    ``[B, H_i, W_i, C_i + out_channels]``.
    """

    def __init__(
        self,
        key: str,
        in_channels: int | None = None,
        conv_channels: int = 64,
        out_channels: int | None = None,
        num_conv_layers: int = 1,
        kernel_size: int = 3,
        final_relu: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_conv_layers > 0 and (in_channels is None or out_channels is None):
            raise ValueError(
                f"ConcatenateFeatures: in_channels and out_channels must be set when num_conv_layers > 0 "
                f"(got in_channels={in_channels}, out_channels={out_channels}, num_conv_layers={num_conv_layers})"
            )
        self.key = key
        self.in_channels = in_channels
        self.conv_channels = int(conv_channels)
        self.out_channels = out_channels
        self.num_conv_layers = int(num_conv_layers)
        self.kernel_size = int(kernel_size)
        self.final_relu = bool(final_relu)
        # (torch Sequential index, conv, relu after?)
        self.conv_layers = []
        self._relu_after = []
        self._torch_index = []
        index = 0
        for i in range(self.num_conv_layers):
            cin = in_channels if i == 0 else self.conv_channels
            cout = out_channels if i == self.num_conv_layers - 1 else self.conv_channels
            self.conv_layers.append(Conv2d(cin, cout, self.kernel_size, padding="same", name=f"conv_{i}"))
            self._torch_index.append(index)
            relu = i < self.num_conv_layers - 1 or self.final_relu
            self._relu_after.append(relu)
            index += 2 if relu else 1
        self.built = True  # the Conv2d layers build themselves

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "ConcatenateFeatures")
        if context is None or self.key not in context:
            raise ValueError(f"ConcatenateFeatures: context has no input {self.key!r}")
        extra = tf.cast(flatten_time_into_channels(context[self.key]), maps[0].dtype)
        for conv, relu in zip(self.conv_layers, self._relu_after):
            extra = conv(extra)
            if relu:
                extra = tf.nn.relu(extra)
        out = []
        for feat in maps:
            resized = resize_bilinear(extra, spatial_size(feat))
            out.append(tf.concat([feat, resized], axis=-1))
        return out

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for index, conv in zip(self._torch_index, self.conv_layers):
            out += conv.torch_params(join(prefix, f"conv_layers.{index}"))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "key": self.key,
            "in_channels": self.in_channels,
            "conv_channels": self.conv_channels,
            "out_channels": self.out_channels,
            "num_conv_layers": self.num_conv_layers,
            "kernel_size": self.kernel_size,
            "final_relu": self.final_relu,
        }
