"""SimpleTimeSeries: applies a single-image encoder to each timestep and pools over time."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from rskeras.models.component import FeatureExtractor
from rskeras.models.shapes import dims
from rskeras.models.torch_nn import Conv2d, torch_kernel_initializer, TorchBiasInitializer
from rskeras.weights.torch_params import TorchParam, conv_params, join

logger = logging.getLogger(__name__)

OPS = ("max", "mean", "convrnn", "conv3d", "conv1d")


@keras.saving.register_keras_serializable(package="rskeras")
class SimpleTimeSeries(FeatureExtractor):
    """Encodes every timestep (or chunk of timesteps) with ``encoder`` and combines them.

    For each image key the ``[B, T, H, W, C]`` series is split into ``n = T / k``
    consecutive chunks of ``k = num_timesteps_per_forward_pass`` timesteps, batched
    **example-major** (b0t0, b0t1, ..., b1t0, ...) and encoded in one call. Per scale and
    group of chunk indexes the features are combined with ``op``:

    * ``max`` / ``mean`` over the group;
    * ``convrnn``: ``hidden = 0``; for each image in group order
      ``hidden = L(concat([hidden, feat]))`` (hidden first) with
      L = Conv(2C->C, 3, same) + ReLU, then (num_layers - 1) x [Conv(C->C) + ReLU];
    * ``conv3d``: images as depth, num_layers x [Conv3d(C->C, 3, padding 1,
      stride (2, 1, 1)) + ReLU]; the depth must reach exactly 1;
    * ``conv1d``: per pixel, images as a sequence, num_layers x [Conv1d(C->C, 3,
      padding 1, stride 2) + ReLU]; the length must reach exactly 1.

    Groups are concatenated along channels in group order.

    rslearn: ``rslearn.models.simple_time_series.SimpleTimeSeries``. Torch keys:
    ``encoder.*``, ``rnn_layers.<scale>.<layer>.0.*``, ``conv3d_layers.<scale>.<layer>.0.*``,
    ``conv1d_layers.<scale>.<layer>.0.*``.

    Args:
        encoder: FeatureExtractor returning FeatureMaps.
        num_timesteps_per_forward_pass: int k, timesteps per encoder image, default 1.
        op: str, one of "max" (default), "mean", "convrnn", "conv3d", "conv1d".
        groups: list of lists of image indexes, default all images in one group.
        num_layers: int, required for convrnn / conv3d / conv1d.
        image_key: str, input key when ``image_keys`` is not set, default "image".
        backbone_channels: list of ``[factor, channels]`` of the encoder outputs; default
            ``encoder.get_backbone_channels()``.
        image_keys: list of input keys encoded together (all must give the same number
            of chunks); the deprecated dict form key -> channels per forward pass is
            accepted (k = channels // C per key).
        image_channels: deprecated; k = image_channels // C.

    Call: context with ``[B, T, H, W, C]`` images -> FeatureMaps
    ``[B, h_i, w_i, C_i * len(groups)]``.
    """

    def __init__(
        self,
        encoder: keras.layers.Layer,
        num_timesteps_per_forward_pass: int = 1,
        op: str = "max",
        groups: list[list[int]] | None = None,
        num_layers: int | None = None,
        image_key: str = "image",
        backbone_channels: list | None = None,
        image_keys: list[str] | dict[str, int] | None = None,
        image_channels: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if op not in OPS:
            raise ValueError(f"SimpleTimeSeries: op must be one of {OPS}, got {op!r}")
        if op in ("convrnn", "conv3d", "conv1d") and num_layers is None:
            raise ValueError(f"SimpleTimeSeries: num_layers must be specified for {op} op")
        if num_timesteps_per_forward_pass < 1:
            raise ValueError(f"SimpleTimeSeries: num_timesteps_per_forward_pass must be >= 1, got {num_timesteps_per_forward_pass}")
        if image_channels is not None:
            logger.warning("SimpleTimeSeries: image_channels is deprecated, use num_timesteps_per_forward_pass")
        self.encoder = encoder
        self.num_timesteps_per_forward_pass = int(num_timesteps_per_forward_pass)
        self.op = op
        self.groups = [list(g) for g in groups] if groups else None
        self.num_layers = num_layers
        self.image_key = image_key
        self.image_channels = image_channels
        self.deprecated_image_keys = None
        if isinstance(image_keys, dict):
            logger.warning("SimpleTimeSeries: image_keys as a dict is deprecated, use a list and num_timesteps_per_forward_pass")
            self.deprecated_image_keys = {k: int(v) for k, v in image_keys.items()}
            self.image_keys = list(image_keys)
        else:
            self.image_keys = list(image_keys) if image_keys is not None else [image_key]
        self._image_keys_arg = image_keys
        if backbone_channels is not None:
            channels = [(int(f), int(c)) for f, c in backbone_channels]
        elif hasattr(encoder, "get_backbone_channels"):
            channels = [tuple(x) for x in encoder.get_backbone_channels()]
        else:
            raise ValueError("SimpleTimeSeries: backbone_channels must be given when the encoder has no get_backbone_channels()")
        self.backbone_channels = channels
        self.num_groups = len(self.groups) if self.groups else 1

        self.rnn_layers: list[list[Conv2d]] = []
        self.conv3d_layers: list[list[keras.layers.Conv3D]] = []
        self.conv1d_layers: list[list[keras.layers.Conv1D]] = []
        for scale, (_, count) in enumerate(channels):
            if op == "convrnn":
                layers = [Conv2d(2 * count, count, 3, padding="same", name=f"rnn_{scale}_0")]
                layers += [Conv2d(count, count, 3, padding="same", name=f"rnn_{scale}_{i}") for i in range(1, num_layers)]
                self.rnn_layers.append(layers)
            elif op == "conv3d":
                layers = [
                    keras.layers.Conv3D(
                        count, 3, strides=(2, 1, 1), padding="valid", kernel_initializer=torch_kernel_initializer(),
                        bias_initializer=TorchBiasInitializer(27 * count), name=f"conv3d_{scale}_{i}",
                    )
                    for i in range(num_layers)
                ]
                for layer in layers:
                    layer.build((None, None, None, None, count))
                self.conv3d_layers.append(layers)
            elif op == "conv1d":
                layers = [
                    keras.layers.Conv1D(
                        count, 3, strides=2, padding="valid", kernel_initializer=torch_kernel_initializer(),
                        bias_initializer=TorchBiasInitializer(3 * count), name=f"conv1d_{scale}_{i}",
                    )
                    for i in range(num_layers)
                ]
                for layer in layers:
                    layer.build((None, None, count))
                self.conv1d_layers.append(layers)
        self._temporal = [layer for group in self.rnn_layers + self.conv3d_layers + self.conv1d_layers for layer in group]
        self.built = True

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        """(factor, channels * number of groups) per output map."""
        return [(f, c * self.num_groups) for f, c in self.backbone_channels]

    def _timesteps_per_pass(self, key: str, image: tf.Tensor) -> int:
        channels = image.shape[-1]
        if self.deprecated_image_keys is not None:
            return self.deprecated_image_keys[key] // channels
        if self.image_channels is not None:
            return self.image_channels // channels
        return self.num_timesteps_per_forward_pass

    def _batched_images(self, context: dict) -> tuple[dict, int]:
        """Each key's ``[B, T, H, W, C]`` -> ``[B * n, k, H, W, C]`` (example-major), and n."""
        batched, n_images = {}, None
        for key in self.image_keys:
            if key not in context:
                raise ValueError(f"SimpleTimeSeries: input {key!r} missing from the context (keys {sorted(context)})")
            image = context[key]
            if len(image.shape) != 5:
                raise ValueError(f"SimpleTimeSeries: input {key!r} must be [B, T, H, W, C], got shape {tuple(image.shape)}")
            t = image.shape[1]
            k = self._timesteps_per_pass(key, image)
            if t is None:
                raise ValueError(f"SimpleTimeSeries: the number of timesteps of {key!r} must be static")
            if k < 1 or t % k != 0:
                raise ValueError(f"SimpleTimeSeries: {t} timesteps of {key!r} are not divisible into chunks of {k}")
            n = t // k
            if n_images is not None and n != n_images:
                raise ValueError("SimpleTimeSeries: expected all modalities to have the same number of timesteps")
            n_images = n
            shape = dims(image, range(2, 5))
            batched[key] = tf.reshape(image, [-1, k] + shape)
        return batched, n_images

    def call(self, context, training=None):
        batched, n_images = self._batched_images(context)
        features = self.encoder(batched, training=training)
        if not isinstance(features, (list, tuple)):
            raise ValueError("SimpleTimeSeries: the encoder must return FeatureMaps (a list of maps)")
        groups = self.groups or [list(range(n_images))]
        for group in groups:
            for i in group:
                if not 0 <= i < n_images:
                    raise ValueError(f"SimpleTimeSeries: group index {i} out of range for {n_images} images")
        outputs = []
        for scale, feat in enumerate(features):
            sizes = dims(feat, range(1, 4))
            per_image = tf.reshape(feat, [-1, n_images] + sizes)  # [B, n, h, w, c]
            combined = [self._combine(scale, tf.stack([per_image[:, i] for i in group], axis=1), training) for group in groups]
            outputs.append(combined[0] if len(combined) == 1 else tf.concat(combined, axis=-1))
        return outputs

    def _combine(self, scale: int, x: tf.Tensor, training) -> tf.Tensor:
        """``[B, g, h, w, c]`` -> ``[B, h, w, c]``."""
        if self.op == "max":
            return tf.reduce_max(x, axis=1)
        if self.op == "mean":
            return tf.reduce_mean(x, axis=1)
        if self.op == "convrnn":
            hidden = tf.zeros_like(x[:, 0])
            for i in range(x.shape[1]):
                hidden = tf.concat([hidden, x[:, i]], axis=-1)
                for conv in self.rnn_layers[scale]:
                    hidden = tf.nn.relu(conv(hidden))
            return hidden
        if self.op == "conv3d":
            for conv in self.conv3d_layers[scale]:
                x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]])
                x = tf.nn.relu(conv(x))
            if x.shape[1] != 1:
                raise ValueError(f"SimpleTimeSeries conv3d: depth after {self.num_layers} layers is {x.shape[1]}, not 1")
            return x[:, 0]
        # conv1d: per pixel, the images form a sequence
        b, g, h, w, c = dims(x)
        seq = tf.reshape(tf.transpose(x, [0, 2, 3, 1, 4]), [-1, g, c])
        for conv in self.conv1d_layers[scale]:
            seq = tf.nn.relu(conv(tf.pad(seq, [[0, 0], [1, 1], [0, 0]])))
        if seq.shape[1] != 1:
            raise ValueError(f"SimpleTimeSeries conv1d: length after {self.num_layers} layers is {seq.shape[1]}, not 1")
        return tf.reshape(seq[:, 0], [-1, h, w, c])

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out: list[TorchParam] = []
        if hasattr(self.encoder, "torch_params"):
            out += self.encoder.torch_params(join(prefix, "encoder"))
        for scale, layers in enumerate(self.rnn_layers):
            for i, conv in enumerate(layers):
                out += conv.torch_params(join(prefix, f"rnn_layers.{scale}.{i}.0"))
        for scale, layers in enumerate(self.conv3d_layers):
            for i, conv in enumerate(layers):
                out += conv_params(conv, join(prefix, f"conv3d_layers.{scale}.{i}.0"), "conv3d")
        for scale, layers in enumerate(self.conv1d_layers):
            for i, conv in enumerate(layers):
                out += conv_params(conv, join(prefix, f"conv1d_layers.{scale}.{i}.0"), "conv1d")
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_timesteps_per_forward_pass": self.num_timesteps_per_forward_pass,
            "op": self.op,
            "groups": self.groups,
            "num_layers": self.num_layers,
            "image_key": self.image_key,
            "backbone_channels": [list(x) for x in self.backbone_channels],
            "image_keys": self._image_keys_arg,
            "image_channels": self.image_channels,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
