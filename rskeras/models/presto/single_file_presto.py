"""The Presto encoder (Tseng et al. 2023, "Lightweight, Pre-trained Transformers for Remote
Sensing Timeseries"), as packaged in rslearn's ``single_file_presto.py``.

Presto encodes one pixel's time series. Its 17 input bands (S1 vv, vh; S2 B02, B03, B04,
B05, B06, B07, B08, B8A, B11, B12; ERA5 temperature_2m, total_precipitation; SRTM elevation,
slope; NDVI) are split into 9 channel groups, each projected by a Linear to one token per
timestep (SRTM: a single token from the first timestep). A Dynamic World class token per
timestep (class 9 = missing) and an optional lat/lon token (prepended, no encoding) complete
the sequence. Each timestep token gets ``[month (D/4) | channel (D/4) | position (D/2)]``
(SRTM: zeros for month and position). Masked tokens are removed; the transformer output
is averaged over the remaining tokens and layer-normalised.

rskeras builds tokens only for groups that have inputs (removing the others is what Presto
does), and masks Dynamic World tokens of class 9 in attention and in the average, which
equals Presto's removal when every pixel masks the same tokens.

Torch keys (``Encoder`` state dict): ``pos_embed`` ``[1, L, D/2]``, ``month_embed.weight``,
``channel_embed.weight`` ``[10, D/4]``, ``eo_patch_embed.<group>.*``, ``dw_embed.weight``
``[10, D]``, ``latlon_embed.*``, ``blocks.<i>.*`` (fused qkv), ``norm.*``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import keras
import numpy as np
import tensorflow as tf

from rskeras.weights.torch_params import TorchParam, dense_params, join, layer_norm_params
from rskeras.models.transformer import Block, layer_norm, xavier_dense

PRESTO_S2_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
PRESTO_S1_BANDS = ["vv", "vh"]
ERA5_BANDS = ["temperature_2m", "total_precipitation"]
SRTM_BANDS = ["elevation", "slope"]
PRESTO_BANDS = PRESTO_S1_BANDS + PRESTO_S2_BANDS + ERA5_BANDS + SRTM_BANDS + ["NDVI"]
# The encoder's 17 input bands: B09 is not one of them.
INPUT_PRESTO_BANDS = [b for b in PRESTO_BANDS if b != "B09"]
INPUT_PRESTO_S2_BANDS = [b for b in PRESTO_S2_BANDS if b != "B09"]

# normalisation: (x + ADD_BY) / DIV_BY, per band of INPUT_PRESTO_BANDS
PRESTO_ADD_BY = np.array([25.0, 25.0] + [0.0] * 10 + [-272.15, 0.0, 0.0, 0.0, 0.0], np.float32)
PRESTO_DIV_BY = np.array([25.0, 25.0] + [1e4] * 10 + [35.0, 0.03, 2000.0, 50.0, 1.0], np.float32)

BANDS_GROUPS_IDX: OrderedDict[str, list[int]] = OrderedDict(
    [
        ("S1", [0, 1]),
        ("S2_RGB", [2, 3, 4]),
        ("S2_Red_Edge", [5, 6, 7]),
        ("S2_NIR_10m", [8]),
        ("S2_NIR_20m", [9]),
        ("S2_SWIR", [10, 11]),
        ("ERA5", [12, 13]),
        ("SRTM", [14, 15]),
        ("NDVI", [16]),
    ]
)
NUM_DYNAMIC_WORLD_CLASSES = 9
DW_CHANNEL_INDEX = len(BANDS_GROUPS_IDX)  # channel embedding row of the Dynamic World tokens


def sinusoid_table(positions: int, d_hid: int, base: float = 1000.0) -> np.ndarray:
    """``[positions, d_hid]`` Presto position table: even dims sin, odd dims cos of
    ``pos / base^(2 (i // 2) / d_hid)``."""
    pos = np.arange(positions, dtype=np.float64)[:, None]
    i = np.arange(d_hid)[None, :]
    angles = pos / np.power(base, 2 * (i // 2) / d_hid)
    table = angles.copy()
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table.astype(np.float32)


def month_table(d_hid: int) -> np.ndarray:
    """``[12, d_hid]``: sin of the month angle in the first half, cos in the second."""
    angles = np.arange(0, 13) / (12 / (2 * np.pi))
    sin = np.sin(np.stack([angles] * (d_hid // 2), axis=-1))
    cos = np.cos(np.stack([angles] * (d_hid // 2), axis=-1))
    return np.concatenate([sin[:-1], cos[:-1]], axis=-1).astype(np.float32)


def to_cartesian(latlon: tf.Tensor) -> tf.Tensor:
    """``[..., 2]`` (lat, lon) degrees -> ``[..., 3]`` unit vector (x, y, z)."""
    rad = latlon * (math.pi / 180.0)
    lat, lon = rad[..., 0], rad[..., 1]
    return tf.stack([tf.cos(lat) * tf.cos(lon), tf.cos(lat) * tf.sin(lon), tf.sin(lat)], axis=-1)


@keras.saving.register_keras_serializable(package="rskeras")
class PrestoEncoder(keras.layers.Layer):
    """Presto's ``Encoder``.

    Args:
        embedding_size: int D, default 128.
        channel_embed_ratio: float, share of D for the channel embedding, default 0.25.
        month_embed_ratio: float, share of D for the month embedding, default 0.25.
        depth: int, transformer blocks, default 2.
        mlp_ratio: float, default 2 (``Presto.construct()``, which rslearn uses, passes 4).
        num_heads: int, default 8.
        max_sequence_length: int, rows of ``pos_embed``, default 24.

    Call: see :meth:`encode`.
    """

    def __init__(
        self,
        embedding_size: int = 128,
        channel_embed_ratio: float = 0.25,
        month_embed_ratio: float = 0.25,
        depth: int = 2,
        mlp_ratio: float = 2,
        num_heads: int = 8,
        max_sequence_length: int = 24,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embedding_size = int(embedding_size)
        self.channel_embed_ratio = float(channel_embed_ratio)
        self.month_embed_ratio = float(month_embed_ratio)
        self.depth = int(depth)
        self.mlp_ratio = float(mlp_ratio)
        self.num_heads = int(num_heads)
        self.max_sequence_length = int(max_sequence_length)
        d = self.embedding_size
        self.pos_dim = int(d * (1 - (self.channel_embed_ratio + self.month_embed_ratio)))
        self.channel_dim = int(d * self.channel_embed_ratio)
        self.month_dim = int(d * self.month_embed_ratio)
        if self.pos_dim + self.channel_dim + self.month_dim != d:
            raise ValueError(f"PrestoEncoder: the embedding ratios do not split {d} into whole parts")
        policy = self.dtype_policy
        self.eo_patch_embed = {g: xavier_dense(d, f"eo_patch_embed_{g}", policy) for g in BANDS_GROUPS_IDX}
        for g, idx in BANDS_GROUPS_IDX.items():
            self.eo_patch_embed[g].build((None, len(idx)))
        self.dw_embed = self.add_weight(name="dw_embed", shape=(NUM_DYNAMIC_WORLD_CLASSES + 1, d), initializer=keras.initializers.RandomNormal(stddev=1.0))  # nn.Embedding: N(0, 1)
        self.latlon_embed = xavier_dense(d, "latlon_embed", policy)
        self.latlon_embed.build((None, 3))
        self.blocks = [
            Block(d, self.num_heads, self.mlp_ratio, qkv_layout="fused", name=f"blocks_{i}", dtype=policy) for i in range(self.depth)
        ]
        self.norm = layer_norm("norm", policy)
        self.norm.build((None, d))
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(1, self.max_sequence_length, self.pos_dim), trainable=False,
            initializer=keras.initializers.Constant(sinusoid_table(self.max_sequence_length, self.pos_dim)[None]),
        )
        self.month_embed = self.add_weight(
            name="month_embed", shape=(12, self.month_dim), trainable=False, initializer=keras.initializers.Constant(month_table(self.month_dim))
        )
        self.channel_embed = self.add_weight(name="channel_embed", shape=(len(BANDS_GROUPS_IDX) + 1, self.channel_dim), initializer=keras.initializers.RandomNormal(stddev=1.0))  # nn.Embedding: N(0, 1)
        self.built = True

    def encode(self, groups: dict[str, tf.Tensor], months: tf.Tensor, dynamic_world: tf.Tensor | None = None,
               latlons: tf.Tensor | None = None, timestep_masks: dict[str, tf.Tensor] | None = None, training=None) -> tf.Tensor:
        """Encodes pixel time series.

        Args:
            groups: group name -> normalised ``[N, T, C_g]`` (groups of BANDS_GROUPS_IDX that
                have inputs; SRTM uses its first timestep only).
            months: int ``[N, T]`` months 0-11.
            dynamic_world: int ``[N, T]`` classes 0-8, 9 = missing; None = all missing.
            latlons: ``[N, 2]`` degrees or None.
            timestep_masks: optional group -> bool ``[N, T]`` (True = real timestep): tokens
                of padded timesteps are left out of attention and of the mean.

        Returns:
            ``[N, D]``: LayerNorm of the mean of the output tokens.
        """
        # tokens and encodings are float32 (as under torch autocast); projections use the policy
        dtype = tf.float32
        months = tf.cast(months, tf.int32)
        n, t = tf.shape(months)[0], tf.shape(months)[1]
        month_emb = tf.gather(tf.cast(self.month_embed, dtype), months)  # [N, T, m]
        pos_emb = tf.broadcast_to(tf.cast(self.pos_embed[:, :t], dtype), tf.stack([n, t, self.pos_dim]))
        channel = tf.cast(self.channel_embed, dtype)
        names = list(BANDS_GROUPS_IDX)
        masks = timestep_masks or {}
        tokens, valid = [], []
        for g in [g for g in BANDS_GROUPS_IDX if g in groups]:
            x = groups[g]
            ch = channel[names.index(g)]
            if g == "SRTM":
                e = tf.cast(self.eo_patch_embed[g](x[:, 0:1]), dtype)
                enc = tf.concat(
                    [tf.zeros(tf.stack([n, 1, self.month_dim]), dtype), tf.broadcast_to(ch, tf.stack([n, 1, self.channel_dim])),
                     tf.zeros(tf.stack([n, 1, self.pos_dim]), dtype)],
                    axis=-1,
                )
            else:
                e = tf.cast(self.eo_patch_embed[g](x), dtype)
                enc = tf.concat([month_emb, tf.broadcast_to(ch, tf.stack([n, t, self.channel_dim])), pos_emb], axis=-1)
            tokens.append(e + enc)
            if g in masks:
                valid.append(masks[g][:, :1] if g == "SRTM" else masks[g])
            else:
                valid.append(tf.ones(tf.shape(e)[:2], tf.bool))
        key_mask = None
        if dynamic_world is not None:
            dw = tf.cast(dynamic_world, tf.int32)
            e = tf.gather(tf.cast(self.dw_embed, dtype), dw)
            enc = tf.concat([month_emb, tf.broadcast_to(channel[DW_CHANNEL_INDEX], tf.stack([n, t, self.channel_dim])), pos_emb], axis=-1)
            tokens.append(e + enc)
            valid.append(tf.not_equal(dw, NUM_DYNAMIC_WORLD_CLASSES))
        if latlons is not None:
            tokens.insert(0, tf.cast(self.latlon_embed(to_cartesian(tf.cast(latlons, tf.float32))), dtype)[:, None, :])
            valid.insert(0, tf.ones(tf.stack([n, 1]), tf.bool))
        if not tokens:
            raise ValueError("PrestoEncoder: at least one input group must be given")
        x = tf.concat(tokens, axis=1)
        if dynamic_world is not None or masks:
            key_mask = tf.concat(valid, axis=1)
        for block in self.blocks:
            x = block(x, key_mask=key_mask, training=training)
        if key_mask is None:
            pooled = tf.reduce_mean(x, axis=1)
        else:
            w = tf.cast(key_mask, x.dtype)[..., None]
            pooled = tf.reduce_sum(x * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1.0)
        return tf.cast(self.norm(pooled), tf.float32)

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out = [TorchParam(join(prefix, "pos_embed"), self.pos_embed)]
        for g, layer in self.eo_patch_embed.items():
            out += dense_params(layer, join(prefix, f"eo_patch_embed.{g}"))
        out.append(TorchParam(join(prefix, "dw_embed.weight"), self.dw_embed))
        out += dense_params(self.latlon_embed, join(prefix, "latlon_embed"))
        for i, block in enumerate(self.blocks):
            out += block.torch_params(join(prefix, f"blocks.{i}"))
        out += layer_norm_params(self.norm, join(prefix, "norm"))
        out.append(TorchParam(join(prefix, "month_embed.weight"), self.month_embed))
        out.append(TorchParam(join(prefix, "channel_embed.weight"), self.channel_embed))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "embedding_size": self.embedding_size,
            "channel_embed_ratio": self.channel_embed_ratio,
            "month_embed_ratio": self.month_embed_ratio,
            "depth": self.depth,
            "mlp_ratio": self.mlp_ratio,
            "num_heads": self.num_heads,
            "max_sequence_length": self.max_sequence_length,
        }
