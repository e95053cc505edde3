"""PoolingDecoder and SegmentationPoolingDecoder: global max pooling of the coarsest map."""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.torch_nn import Conv2d, linear
from rskeras.weights.torch_params import TorchParam, dense_params, join


@keras.saving.register_keras_serializable(package="rskeras")
class PoolingDecoder(IntermediateComponent):
    """Computes a vector from the last (coarsest) feature map.

    ``num_conv_layers`` x [Conv 3x3 (padding 1, bias) -> ReLU] -> global **max** over
    H, W -> ``num_fc_layers`` x [Linear -> ReLU] -> Linear(out_channels). Only the last
    map is used. Pooling yields ``[B, C]`` directly, so no flatten-order question
    arises for the Linear layers.

    rslearn: ``rslearn.models.pooling_decoder.PoolingDecoder``. Torch keys:
    ``conv_layers.<i>.0.*``, ``fc_layers.<i>.0.*``, ``output_layer.*``.

    Args:
        in_channels: int, channels of the last input map.
        out_channels: int, size of the output vector.
        num_conv_layers: int, default 0.
        num_fc_layers: int, default 0.
        conv_channels: int, width of the conv layers, default 128.
        fc_channels: int, width of the fully connected layers, default 512.

    Call: FeatureMaps (last map ``[B, H, W, in_channels]``) -> FeatureVector ``[B, out_channels]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_conv_layers: int = 0,
        num_fc_layers: int = 0,
        conv_channels: int = 128,
        fc_channels: int = 512,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_conv_layers", num_conv_layers), ("num_fc_layers", num_fc_layers)):
            if value < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {value}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.num_conv_layers = int(num_conv_layers)
        self.num_fc_layers = int(num_fc_layers)
        self.conv_channels = int(conv_channels)
        self.fc_channels = int(fc_channels)
        prev = self.in_channels
        self.conv_layers = []
        for i in range(self.num_conv_layers):
            self.conv_layers.append(Conv2d(prev, self.conv_channels, 3, padding=1, name=f"conv_{i}"))
            prev = self.conv_channels
        self._fc_in = []
        self.fc_layers = []
        for i in range(self.num_fc_layers):
            self.fc_layers.append(linear(prev, self.fc_channels, name=f"fc_{i}"))
            self._fc_in.append(prev)
            prev = self.fc_channels
        self._out_in = prev
        self.output_layer = linear(prev, self.out_channels, name="output_layer")
        self.build(None)  # weights exist after construction (torch weights can be loaded)

    def build(self, input_shape):
        for fc, cin in zip(self.fc_layers, self._fc_in):
            fc.build((None, cin))
        self.output_layer.build((None, self._out_in))

    def pooled_vector(self, intermediates, training=None) -> tf.Tensor:
        """The ``[B, out_channels]`` output vector."""
        maps = require_feature_maps(intermediates, type(self).__name__)
        x = maps[-1]
        for conv in self.conv_layers:
            x = tf.nn.relu(conv(x))
        x = tf.reduce_max(x, axis=[1, 2])
        for fc in self.fc_layers:
            x = tf.nn.relu(fc(x))
        return self.output_layer(x)

    def call(self, intermediates, context=None, training=None):
        return self.pooled_vector(intermediates, training=training)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for i, conv in enumerate(self.conv_layers):
            out += conv.torch_params(join(prefix, f"conv_layers.{i}.0"))
        for i, fc in enumerate(self.fc_layers):
            out += dense_params(fc, join(prefix, f"fc_layers.{i}.0"))
        out += dense_params(self.output_layer, join(prefix, "output_layer"))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_conv_layers": self.num_conv_layers,
            "num_fc_layers": self.num_fc_layers,
            "conv_channels": self.conv_channels,
            "fc_channels": self.fc_channels,
        }


@keras.saving.register_keras_serializable(package="rskeras")
class SegmentationPoolingDecoder(PoolingDecoder):
    """PoolingDecoder whose vector is copied to every pixel of the input image.

    rslearn: ``rslearn.models.pooling_decoder.SegmentationPoolingDecoder``. For
    classification-like training on small windows that still predicts rasters.

    Args:
        in_channels, out_channels: as PoolingDecoder.
        image_key: str, context key of the image whose H, W the output takes, default "image".
        **kwargs: the other PoolingDecoder arguments.

    Call: FeatureMaps, context with ``context[image_key]`` ``[B, T, H, W, C]`` ->
    FeatureMaps with one map ``[B, H, W, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int, image_key: str = "image", **kwargs):
        super().__init__(in_channels=in_channels, out_channels=out_channels, **kwargs)
        self.image_key = image_key

    def call(self, intermediates, context=None, training=None):
        vector = self.pooled_vector(intermediates, training=training)
        if context is None or self.image_key not in context:
            raise ValueError(f"SegmentationPoolingDecoder: context must contain the image key {self.image_key!r}")
        image = context[self.image_key]
        shape = tf.shape(image)
        h, w = shape[-3], shape[-2]
        return [tf.tile(vector[:, None, None, :], tf.stack([1, h, w, 1]))]

    def get_config(self):
        return {**super().get_config(), "image_key": self.image_key}
