"""OlmoEarth's additive token encodings (olmoearth_pretrain ``CompositeEncodings``).

Every token of a modality gets ``tokens + [channel | time | month | space]``, each part a
quarter (``n = int(D / 4)``) of the embedding:

* channel: a learnable embedding per band group (``per_modality_channel_embeddings``);
* time (multitemporal modalities, not with 3D RoPE): 1D sin-cos of the timestep *index*;
* month (multitemporal modalities): a frozen sin-cos table indexed by the 0-based month
  (``month_embed``; loaded from the weights like any parameter);
* space (``absolute`` position encoding only): 2D sin-cos of the patch grid scaled by the
  GSD ratio ``input_res * patch_size / 10``; the first half encodes the column, the
  second the row (olmoearth_pretrain's ``meshgrid(..., indexing="xy")``).

The 1D sin-cos uses olmoearth_pretrain's frequencies ``1 / 10000 ** (k / d / 2)`` for
``k < d / 2`` (not the usual ``2k / d``), then ``[sin | cos]``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from rskeras.keras_compat import keep_input_dtypes
from rskeras.models.olmoearth_pretrain import modalities as mod
from rskeras.weights.torch_params import TorchParam, join

BASE_GSD = 10


def sincos_1d(pos: tf.Tensor, dim: int) -> tf.Tensor:
    """``[L]`` positions -> ``[L, dim]`` encodings (``[sin | cos]``)."""
    if dim % 2:
        raise ValueError(f"sin-cos encoding dimension must be even, got {dim}")
    k = tf.range(dim // 2, dtype=tf.float32)
    omega = 1.0 / tf.pow(tf.constant(10000.0), k / float(dim) / 2.0)
    out = tf.cast(tf.reshape(pos, [-1, 1]), tf.float32) * omega[None, :]
    return tf.concat([tf.sin(out), tf.cos(out)], axis=1)


def sincos_2d(h, w, res: float, dim: int) -> tf.Tensor:
    """``[h, w, dim]``: column encoding then row encoding of the grid scaled by ``res``."""
    cols = tf.cast(tf.range(w), tf.float32) * res
    rows = tf.cast(tf.range(h), tf.float32) * res
    col_grid = tf.reshape(tf.tile(cols[None, :], [h, 1]), [-1])
    row_grid = tf.reshape(tf.tile(rows[:, None], [1, w]), [-1])
    emb = tf.concat([sincos_1d(col_grid, dim // 2), sincos_1d(row_grid, dim // 2)], axis=1)
    return tf.reshape(emb, [h, w, dim])


def month_table(dim: int) -> np.ndarray:
    """The month encoding table ``[12, dim]`` (``[sin | cos]`` of ``2 pi m / 12``)."""
    angles = np.arange(13, dtype=np.float32) / np.float32(12 / (2 * math.pi))
    half = dim // 2
    sin = np.repeat(np.sin(angles)[:, None], half, axis=1)
    cos = np.repeat(np.cos(angles)[:, None], half, axis=1)
    return np.concatenate([sin[:-1], cos[:-1]], axis=1).astype(np.float32)


class CompositeEncodings(keras.layers.Layer):
    """Adds the channel / time / month / space encodings to per-modality tokens.

    Args:
        embedding_size: token width D.
        num_band_groups: modality -> number of band groups (channel embeddings).
        position_encoding: the encoder's position encoding (``absolute`` adds the space
            part; 3D RoPE modes drop the time-index part).
        learnable_channel_embeddings / random_channel_embeddings: olmoearth_pretrain's
            flags (zeros, trainable unless both are False; uniform [0, 1) when random).

    Call: ``tokens`` ``[B, T, S, h, w, D]`` of one modality, ``months`` int ``[B, T]``,
    ``gsd_ratio`` float -> same shape.
    """

    def __init__(
        self,
        embedding_size: int,
        num_band_groups: dict[str, int],
        position_encoding: str = "absolute",
        learnable_channel_embeddings: bool = True,
        random_channel_embeddings: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embedding_size = int(embedding_size)
        self.n = int(self.embedding_size * 0.25)
        self.position_encoding = position_encoding
        self.num_band_groups = dict(num_band_groups)
        # olmoearth_pretrain: zeros (uniform [0, 1) when random), requires_grad = learnable.
        trainable = bool(learnable_channel_embeddings)
        init = keras.initializers.RandomUniform(0.0, 1.0) if random_channel_embeddings else "zeros"
        self.channel_embeddings = {
            name: self.add_weight(
                name=f"channel_{name}", shape=(groups, self.n), initializer=init, trainable=trainable, dtype="float32"
            )
            for name, groups in self.num_band_groups.items()
        }
        self.month_embed = self.add_weight(
            name="month_embed",
            shape=(12, self.n),
            initializer=keras.initializers.Constant(month_table(self.n)),
            trainable=False,
            dtype="float32",
        )
        keep_input_dtypes(self)  # months are int; tokens keep their dtype
        self.built = True

    def call(self, tokens, months, modality: str = "", gsd_ratio: float = 1.0):
        n = self.n
        shape = tf.shape(tokens)
        b, t, s, h, w = shape[0], shape[1], shape[2], shape[3], shape[4]
        spec = mod.get(modality)
        zeros = tf.zeros([b, t, s, h, w, n], tf.float32)
        parts = [zeros + tf.reshape(self.channel_embeddings[modality], [1, 1, -1, 1, 1, n])]
        if spec.is_multitemporal and self.position_encoding not in ("rope_3d", "rope_3d_mixed"):
            time = sincos_1d(tf.range(t), n)
            parts.append(zeros + tf.reshape(time, [1, -1, 1, 1, 1, n]))
        else:
            parts.append(zeros)
        if spec.is_multitemporal:
            month = tf.gather(tf.convert_to_tensor(self.month_embed), months)
            parts.append(zeros + tf.reshape(month, [b, t, 1, 1, 1, n]))
        else:
            parts.append(zeros)
        if self.position_encoding == "absolute":
            space = sincos_2d(h, w, gsd_ratio, n)
            parts.append(zeros + tf.reshape(space, [1, 1, 1, h, w, n]))
        else:
            parts.append(zeros)
        rest = self.embedding_size - 4 * n
        if rest:
            parts.append(tf.zeros([b, t, s, h, w, rest], tf.float32))
        embed = tf.concat(parts, axis=-1)
        return tokens + tf.cast(embed, tokens.dtype)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out = [TorchParam(join(prefix, "month_embed.weight"), self.month_embed)]
        for name, variable in self.channel_embeddings.items():
            out.append(TorchParam(join(prefix, f"per_modality_channel_embeddings.{name}"), variable))
        # Older checkpoints still hold the frozen time table; olmoearth_pretrain drops it.
        out.append(TorchParam(join(prefix, "pos_embed"), None))
        return out
