"""The OlmoEarth encoder (olmoearth_pretrain ``flexi_vit.Encoder``) as a Keras layer.

Per modality: patch embeddings (``patch_embed.py``), additive encodings
(``encodings.py``) and, for RoPE models, per-token coordinates; the tokens of all
modalities form one sequence that goes through the transformer blocks and a final
LayerNorm. Tokens of missing timesteps / modalities come out as exact zeros.

Missing tokens (olmoearth_pretrain's ``fast_pass=False``): the package removes them (valid
tokens first), pads every example to the longest valid length of the batch with **zero
tokens** at position 0, and, in eval mode, does **not** mask the attention
(``_maybe_get_attn_mask`` returns None), so an example with ``n_b`` valid tokens attends to
``m_b = max_b' n_b' - n_b`` zero padding tokens as well; in training the padding is masked.
The padding tokens of one example are identical (same input, same position) and stay
identical through the blocks, so rskeras keeps the tokens in place, masks the missing
ones out of the keys, and appends **one** zero "padding token" whose key bias is
``log(m_b)`` (``-inf`` when ``m_b = 0``, and always in training): ``exp(s + log m) = m
exp(s)`` is exactly the softmax weight of ``m`` identical keys. Shapes stay static (no
sort/gather), which keeps the encoder exportable to TFLite.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rskeras.keras_compat import keep_input_dtypes
from rskeras.models.olmoearth_pretrain.attention import MASKED, Block, norm_policy, torch_layer_norm
from rskeras.models.olmoearth_pretrain.config import EncoderConfig
from rskeras.models.olmoearth_pretrain.encodings import BASE_GSD, CompositeEncodings
from rskeras.models.olmoearth_pretrain.patch_embed import MultiModalPatchEmbeddings, xavier_linear
from rskeras.weights.torch_params import TorchParam, dense_params, join, layer_norm_params

# Days before the start of each 0-based month (non-leap year).
_DAYS_BEFORE_MONTH = np.asarray([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334], np.float32)


def timestamps_to_days(timestamps: tf.Tensor) -> tf.Tensor:
    """``[..., 3]`` (day, 0-based month, year) -> float32 days since 2000-01-01
    (365.25 days a year, non-leap month offsets; olmoearth_pretrain ``timestamps_to_days``)."""
    day = tf.cast(timestamps[..., 0], tf.float32)
    month = tf.cast(timestamps[..., 1], tf.int32)
    year = tf.cast(timestamps[..., 2], tf.float32)
    offsets = tf.gather(tf.constant(_DAYS_BEFORE_MONTH), month)
    return (year - 2000.0) * 365.25 + offsets + (day - 1.0)


class Encoder(keras.layers.Layer):
    """OlmoEarth encoder.

    Args:
        config: the architecture (``config.EncoderConfig``).

    Call: ``inputs`` modality -> ``[B, T, H, W, C]`` (canonical band order, every
    modality with the same T, H, W), ``valid`` modality -> bool ``[B, T]`` (the timestep
    is present), ``timestamps`` int32 ``[B, T, 3]`` (day, 0-based month, year),
    ``patch_size`` (H and W divisible by it) -> modality -> tokens
    ``[B, T, S, H / p, W / p, D]`` (S band groups; zeros where not valid).
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        config.validate()
        self.config = config
        policy = self.dtype_policy
        dim = config.embedding_size
        self.patch_embeddings = MultiModalPatchEmbeddings(config, name="patch_embeddings", dtype=policy)
        self.composite_encodings = CompositeEncodings(
            dim,
            {m: config.num_band_groups(m) for m in config.supported_modality_names},
            config.position_encoding,
            config.learnable_channel_embeddings,
            config.random_channel_embeddings,
            name="composite_encodings",
        )
        self.blocks = [Block(config, name=f"block_{i}", dtype=policy) for i in range(config.depth)]
        self.norm = torch_layer_norm("norm", norm_policy(policy))
        self.norm.build((None, dim))
        # The contrastive projection of pretraining: part of the weights, unused here.
        self.projection = []
        for i in range(config.num_projection_layers):
            layer = xavier_linear(dim, name=f"projection_{i}", dtype=policy)
            layer.build((None, dim))
            self.projection.append(layer)
        self.register_tokens = None
        if config.num_register_tokens > 0:
            self.register_tokens = self.add_weight(
                name="register_tokens", shape=(config.num_register_tokens, dim), initializer="glorot_uniform", dtype="float32"
            )
        keep_input_dtypes(self)  # timestamps, positions and biases keep their dtypes
        self.built = True

    # ---- positions --------------------------------------------------------------------

    def _positions(self, shape, timestamps, gsd_ratio: float) -> tf.Tensor | None:
        """RoPE coordinates ``[B, T, S, h, w, A]`` of one modality's tokens."""
        c = self.config
        if c.position_encoding in ("absolute", "none"):
            return None
        b, t, s, h, w = shape[0], shape[1], shape[2], shape[3], shape[4]
        scale = gsd_ratio * c.rope_coordinate_scale
        rows = tf.cast(tf.range(h), tf.float32) * scale
        cols = tf.cast(tf.range(w), tf.float32) * scale
        zeros = tf.zeros([b, t, s, h, w], tf.float32)
        row = zeros + tf.reshape(rows, [1, 1, 1, -1, 1])
        col = zeros + tf.reshape(cols, [1, 1, 1, 1, -1])
        if c.position_encoding in ("rope", "rope_mixed"):
            return tf.stack([row, col], axis=-1)
        days = timestamps_to_days(timestamps) * tf.constant(c.rope_temporal_coordinate_scale, tf.float32)
        time = zeros + tf.reshape(days, [b, t, 1, 1, 1])
        return tf.stack([time, row, col], axis=-1)

    # ---- forward ----------------------------------------------------------------------

    def call(self, inputs, valid, timestamps, patch_size: int, input_res: float = BASE_GSD, training=None):
        c = self.config
        gsd_ratio = input_res * patch_size / BASE_GSD
        months = tf.cast(timestamps[..., 1], tf.int32)
        names = list(inputs)
        tokens, keep, positions, shapes = [], [], [], []
        for m in names:
            tok = self.patch_embeddings(inputs[m], modality=m, patch_size=patch_size)
            tok = self.composite_encodings(tok, months, modality=m, gsd_ratio=gsd_ratio)
            shape = tf.shape(tok)
            shapes.append(shape)
            b, d = shape[0], tok.shape[-1]
            ok = tf.broadcast_to(tf.reshape(valid[m], [b, -1, 1, 1, 1]), shape[:5])
            tokens.append(tf.reshape(tok, [b, -1, d]))
            keep.append(tf.reshape(ok, [b, -1]))
            pos = self._positions(shape, timestamps, gsd_ratio)
            if pos is not None:
                positions.append(tf.reshape(pos, [b, -1, pos.shape[-1]]))
        x = tf.concat(tokens, axis=1) if len(tokens) > 1 else tokens[0]
        keep = tf.concat(keep, axis=1) if len(keep) > 1 else keep[0]
        pos = (tf.concat(positions, axis=1) if len(positions) > 1 else positions[0]) if positions else None
        b = tf.shape(x)[0]
        dim = x.shape[-1]

        # Key bias: valid tokens 0, missing tokens masked, then the padding token.
        count = tf.reduce_sum(tf.cast(keep, tf.float32), axis=1)
        if training or c.use_flash_attn:
            pad_bias = tf.fill([b], MASKED)
        else:
            multiplicity = tf.reduce_max(count) - count
            pad_bias = tf.where(multiplicity > 0, tf.math.log(tf.maximum(multiplicity, 1.0)), MASKED)
        key_bias = tf.concat([tf.where(keep, 0.0, MASKED), pad_bias[:, None]], axis=1)
        x = tf.concat([tf.cast(x, tf.float32), tf.zeros([b, 1, dim], tf.float32)], axis=1)
        if pos is not None:
            pos = tf.concat([pos, tf.zeros([b, 1, pos.shape[-1]], tf.float32)], axis=1)
        registers = c.num_register_tokens
        if registers:
            x = tf.concat([tf.tile(tf.convert_to_tensor(self.register_tokens)[None], [b, 1, 1]), x], axis=1)
            key_bias = tf.concat([tf.zeros([b, registers]), key_bias], axis=1)
            if pos is not None:
                pos = tf.concat([tf.zeros([b, registers, pos.shape[-1]]), pos], axis=1)

        for block in self.blocks:
            x = block(x, key_bias, pos, training=training)

        x = x[:, registers:-1]
        x = tf.cast(self.norm(x), tf.float32)
        x = tf.where(keep[..., None], x, 0.0)

        out, start = {}, 0
        for m, shape in zip(names, shapes):
            n = tf.reduce_prod(shape[1:5])
            out[m] = tf.reshape(x[:, start : start + n], shape)
            start = start + n
        return out

    # ---- weights ----------------------------------------------------------------------

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for i, block in enumerate(self.blocks):
            out += block.torch_params(join(prefix, f"blocks.{i}"))
        out += self.composite_encodings.torch_params(join(prefix, "composite_encodings"))
        if self.register_tokens is not None:
            out.append(TorchParam(join(prefix, "register_tokens"), self.register_tokens))
        out += self.patch_embeddings.torch_params(join(prefix, "patch_embeddings"))
        out += layer_norm_params(self.norm, join(prefix, "norm"))
        for i, layer in enumerate(self.projection):
            out += dense_params(layer, join(prefix, f"project_and_aggregate.projection.{2 * i}"))
        return out
