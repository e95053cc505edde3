"""OlmoEarth's transformer block (olmoearth_pretrain ``nn/attention.py``): pre-norm
``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``; multi-head attention with
q/k/v biases, optional q/k LayerNorm and RoPE; MLP Linear -> GELU (erf) -> Linear;
LayerNorm eps 1e-5; DropPath (stochastic depth) per sample, at the same rate in every
block. Linear layers: Xavier-uniform weights, zero biases.

Which keys a query may attend to is given as an additive ``key_bias`` ``[B, N]`` (0,
:data:`MASKED`, or the log of a multiplicity): see ``encoder.py`` for how the
missing-token handling of olmoearth_pretrain maps onto it.
"""

from __future__ import annotations


import keras
import numpy as np
import tensorflow as tf

from rskeras.keras_compat import keep_input_dtypes
from rskeras.models.olmoearth_pretrain import rope
from rskeras.models.olmoearth_pretrain.config import EncoderConfig
from rskeras.models.olmoearth_pretrain.patch_embed import xavier_linear
from rskeras.models.torch_nn import TORCH_NORM_EPS
from rskeras.models.transformer import vit_block_params
from rskeras.weights.torch_params import TorchParam, dense_params, join, layer_norm_params


# Key bias of keys that take no part in attention: finite, so that a row without any valid
# key stays NaN-free (its output is discarded).
MASKED = -1e9


def torch_layer_norm(name: str, dtype=None) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(axis=-1, epsilon=TORCH_NORM_EPS, name=name, dtype=dtype)


def norm_policy(policy):
    """LayerNorms run in float32 under mixed precision, as under torch autocast."""
    name = getattr(policy, "name", str(policy))
    return "float32" if name.startswith("mixed_") else policy


def _global_seed() -> int:
    return int(keras.random.randint((), 0, 2**31 - 1).numpy())


class DropPath(keras.layers.Layer):
    """Stochastic depth: in training, zeroes a sample's branch with probability ``rate``
    and scales kept branches by ``1 / (1 - rate)``."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed_generator = keras.random.SeedGenerator(_global_seed()) if self.rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        mask = tf.floor(keep + keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator))
        return x / tf.cast(keep, x.dtype) * mask


class Attention(keras.layers.Layer):
    """Multi-head self-attention.

    Args:
        dim: token width.
        num_heads: heads (head_dim = dim / num_heads).
        qk_norm: LayerNorm over head_dim on q and k.
        config: the encoder config, for the position encoding and RoPE settings.

    Call: ``x`` ``[B, N, dim]``, ``key_bias`` float32 ``[B, N]``, ``positions``
    ``[B, N, 2|3]`` (RoPE modes) -> ``[B, N, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.encoding = config.position_encoding
        self.config = config
        policy = self.dtype_policy
        self.q = xavier_linear(self.dim, name="q", dtype=policy)
        self.k = xavier_linear(self.dim, name="k", dtype=policy)
        self.v = xavier_linear(self.dim, name="v", dtype=policy)
        self.proj = xavier_linear(self.dim, name="proj", dtype=policy)
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build((None, self.dim))
        self.qk_norm = bool(config.qk_norm)
        if self.qk_norm:
            self.q_norm = torch_layer_norm("q_norm", norm_policy(policy))
            self.k_norm = torch_layer_norm("k_norm", norm_policy(policy))
            self.q_norm.build((None, self.head_dim))
            self.k_norm.build((None, self.head_dim))
        self.rope_mixed_freqs = None
        if self.encoding in ("rope_mixed", "rope_3d_mixed"):
            rng = np.random.default_rng(_global_seed())
            init = (rope.init_3d_mixed_rope_freqs if self.encoding == "rope_3d_mixed" else rope.init_2d_mixed_rope_freqs)(
                self.head_dim, self.num_heads, config.rope_mixed_base, rng
            )
            self.rope_mixed_freqs = self.add_weight(
                name="rope_mixed_freqs", shape=init.shape, initializer=keras.initializers.Constant(init), dtype="float32"
            )
        keep_input_dtypes(self)  # key biases and positions stay float32
        self.built = True

    def _heads(self, x):
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def _rope(self, x, positions):
        c = self.config
        if self.encoding == "rope":
            return rope.apply_2d_axial_rope(x, positions, c.rope_base)
        if self.encoding == "rope_3d":
            return rope.apply_3d_axial_rope(x, positions, c.rope_base, c.temporal_rope_dim_frac, c.rope_temporal_base)
        return rope.apply_mixed_rope(x, positions, self.rope_mixed_freqs)

    def call(self, x, key_bias, positions=None):
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if self.qk_norm:
            q = tf.cast(self.q_norm(q), v.dtype)
            k = tf.cast(self.k_norm(k), v.dtype)
        if self.encoding not in ("absolute", "none"):
            q, k = self._rope(q, positions), self._rope(k, positions)
        logits = tf.einsum("bhnd,bhmd->bhnm", q, k)
        logits = tf.cast(logits, tf.float32) * self.scale + key_bias[:, None, None, :]
        weights = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
        out = tf.einsum("bhnm,bhmd->bhnd", weights, v)
        shape = tf.shape(out)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [shape[0], shape[2], self.dim])
        return self.proj(out)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        if self.rope_mixed_freqs is not None:
            out.append(TorchParam(join(prefix, "rope_mixed_freqs"), self.rope_mixed_freqs))
        for name in ("q", "k", "v"):
            out += dense_params(getattr(self, name), join(prefix, name))
        if self.qk_norm:
            out += layer_norm_params(self.q_norm, join(prefix, "q_norm")) + layer_norm_params(self.k_norm, join(prefix, "k_norm"))
        out += dense_params(self.proj, join(prefix, "proj"))
        return out


class Block(keras.layers.Layer):
    """Pre-norm transformer block (see the module docstring).

    Call: ``x`` ``[B, N, dim]``, ``key_bias`` ``[B, N]``, ``positions`` -> ``[B, N, dim]``.
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        dim = config.embedding_size
        policy = self.dtype_policy
        self.norm1 = torch_layer_norm("norm1", norm_policy(policy))
        self.norm2 = torch_layer_norm("norm2", norm_policy(policy))
        self.norm1.build((None, dim))
        self.norm2.build((None, dim))
        self.attn = Attention(dim, config.num_heads, config, name="attn", dtype=policy)
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = xavier_linear(hidden, name="fc1", dtype=policy)
        self.fc2 = xavier_linear(dim, name="fc2", dtype=policy)
        self.fc1.build((None, dim))
        self.fc2.build((None, hidden))
        self.drop_path = DropPath(config.drop_path, name="drop_path")
        keep_input_dtypes(self)
        self.built = True

    def call(self, x, key_bias, positions=None, training=None):
        dtype = self.compute_dtype
        x = tf.cast(x, tf.float32)
        y = self.attn(tf.cast(self.norm1(x), dtype), key_bias, positions)
        x = x + tf.cast(self.drop_path(y, training=training), tf.float32)
        y = self.fc2(tf.nn.gelu(self.fc1(tf.cast(self.norm2(x), dtype)), approximate=False))
        return x + tf.cast(self.drop_path(y, training=training), tf.float32)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return vit_block_params(self, prefix)

