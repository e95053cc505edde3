"""Conv: one convolution (+ optional BatchNorm and activation) applied to every feature map."""

from __future__ import annotations

from typing import Any

import keras

from rskeras.models.activations import get_activation, serialize_activation
from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.torch_nn import Conv2d, batch_norm
from rskeras.weights.torch_params import TorchParam, batch_norm_params, join


@keras.saving.register_keras_serializable(package="rskeras")
class Conv(IntermediateComponent):
    """Applies the same conv -> [BatchNorm] -> activation to each input feature map.

    rslearn: ``rslearn.models.conv.Conv``. Torch keys: ``layer.weight``, ``layer.bias``,
    ``batch_norm.*``.

    Args:
        in_channels: int, channels of every input map.
        out_channels: int, output channels.
        kernel_size: int, kernel size.
        padding: "same" (default; stride 1 only), "valid" or an int (symmetric zero
            padding on each side, as torch; TF's "same" with stride 2 would pad
            differently).
        stride: int, default 1.
        activation: activation layer, name or ``{"class_path": "torch.nn.X"}`` dict;
            default ReLU.
        batch_norm: bool, insert BatchNorm2d (eps 1e-5) before the activation; default False.

    Call: FeatureMaps ``[B, H_i, W_i, in_channels]`` -> FeatureMaps
    ``[B, H_i', W_i', out_channels]`` (same number of maps).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: str | int = "same",
        stride: int = 1,
        activation: Any = None,
        batch_norm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"Conv: padding must be 'same', 'valid' or an int, got {padding!r}")
        if padding == "same" and stride != 1:
            raise ValueError(f"Conv: padding='same' requires stride 1 (as in torch), got stride={stride}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        self.stride = int(stride)
        self.use_batch_norm = bool(batch_norm)
        self.layer = Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=padding, name="layer")
        self.batch_norm = _batch_norm_layer() if self.use_batch_norm else None
        self.activation = get_activation(activation)
        self.build(None)  # weights exist after construction (torch weights can be loaded)

    def build(self, input_shape):
        if self.batch_norm is not None:
            self.batch_norm.build((None, None, None, self.out_channels))

    def call(self, intermediates, context=None, training=None):
        maps = require_feature_maps(intermediates, "Conv")
        out = []
        for feat in maps:
            feat = self.layer(feat)
            if self.batch_norm is not None:
                feat = self.batch_norm(feat, training=training)
            out.append(self.activation(feat))
        return out

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out = self.layer.torch_params(join(prefix, "layer"))
        if self.batch_norm is not None:
            out += batch_norm_params(self.batch_norm, join(prefix, "batch_norm"))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "stride": self.stride,
            "activation": serialize_activation(self.activation),
            "batch_norm": self.use_batch_norm,
        }


def _batch_norm_layer():
    return batch_norm(name="batch_norm")
