"""Pre-norm ViT blocks (timm's ``Block`` / ``Attention`` / ``Mlp``) on ``[B, N, D]`` tokens.

The Galileo and Presto encoders (and timm-style ViTs in general) are stacks of

    x = x + DropPath(Attn(LN1(x)));  x = x + DropPath(Mlp(LN2(x)))

with LayerNorm eps 1e-5, multi-head scaled dot-product attention (scale ``head_dim ** -0.5``)
and an MLP Linear -> GELU (erf) -> Linear. Torch keys: ``norm1``, ``attn.{q,k,v}`` (split
projections, ``qkv_layout="split"``) or ``attn.qkv`` (one fused projection whose output is
``[q | k | v]``, ``qkv_layout="fused"``), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.

An optional key mask (True = the token takes part) removes padded tokens from the softmax
with an additive ``-1e9`` bias, which gives exactly 0 weight in float32.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.swin import StochasticDepth
from rskeras.models.torch_nn import TORCH_NORM_EPS
from rskeras.weights.torch_params import TorchParam, dense_params, join, layer_norm_params

_MASK_BIAS = -1e9


def xavier_dense(units: int, name: str, dtype=None) -> keras.layers.Dense:
    """``nn.Linear`` initialised as timm/Galileo/Presto do: xavier-uniform weight, zero bias."""
    return keras.layers.Dense(units, kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name, dtype=dtype)


def layer_norm(name: str, dtype=None) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(axis=-1, epsilon=TORCH_NORM_EPS, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="rskeras")
def vit_block_params(block: keras.layers.Layer, prefix: str) -> list[TorchParam]:
    """The torch keys of a timm-style ViT block (``norm1``, ``attn``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``) for a Keras block with those attributes."""
    return (
        layer_norm_params(block.norm1, join(prefix, "norm1"))
        + block.attn.torch_params(join(prefix, "attn"))
        + layer_norm_params(block.norm2, join(prefix, "norm2"))
        + dense_params(block.fc1, join(prefix, "mlp.fc1"))
        + dense_params(block.fc2, join(prefix, "mlp.fc2"))
    )


class Attention(keras.layers.Layer):
    """Multi-head self-attention with a bias on every projection.

    Args:
        dim: int, token width D (divisible by ``num_heads``).
        num_heads: int.
        qkv_layout: "split" (torch ``q``, ``k``, ``v`` Linear layers) or "fused" (``qkv``).

    Call: ``x [B, N, D]``, optional ``key_mask`` bool ``[B, N]`` -> ``[B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_layout: str = "split", **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if qkv_layout not in ("split", "fused"):
            raise ValueError(f"Attention: qkv_layout must be 'split' or 'fused', got {qkv_layout!r}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.qkv_layout = qkv_layout
        policy = self.dtype_policy
        if qkv_layout == "split":
            self.q = xavier_dense(dim, "q", policy)
            self.k = xavier_dense(dim, "k", policy)
            self.v = xavier_dense(dim, "v", policy)
            for layer in (self.q, self.k, self.v):
                layer.build((None, dim))
        else:
            self.qkv = xavier_dense(3 * dim, "qkv", policy)
            self.qkv.build((None, dim))
        self.proj = xavier_dense(dim, "proj", policy)
        self.proj.build((None, dim))
        self.built = True

    def _heads(self, x, b, n):
        return tf.transpose(tf.reshape(x, [b, n, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def call(self, x, key_mask=None):
        b, n = tf.shape(x)[0], tf.shape(x)[1]
        if self.qkv_layout == "split":
            q, k, v = self.q(x), self.k(x), self.v(x)
        else:
            qkv = self.qkv(x)
            q, k, v = tf.split(qkv, 3, axis=-1)  # a split's gradient is one concat (slices: a zero-filled scatter each)
        q, k, v = self._heads(q, b, n), self._heads(k, b, n), self._heads(v, b, n)
        scores = tf.matmul(q, k, transpose_b=True) * tf.cast(self.head_dim**-0.5, q.dtype)
        if key_mask is not None:
            bias = tf.where(key_mask, tf.zeros([], scores.dtype), tf.cast(_MASK_BIAS, scores.dtype))
            scores = scores + bias[:, None, None, :]
        out = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, n, self.dim])
        return self.proj(out)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        names = ("q", "k", "v") if self.qkv_layout == "split" else ("qkv",)
        out: list[TorchParam] = []
        for name in names + ("proj",):
            out += dense_params(getattr(self, name), join(prefix, name))
        return out

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "qkv_layout": self.qkv_layout}


@keras.saving.register_keras_serializable(package="rskeras")
class Block(keras.layers.Layer):
    """timm pre-norm transformer block (no LayerScale).

    Args:
        dim: int, token width.
        num_heads: int.
        mlp_ratio: float, hidden width of the MLP is ``int(dim * mlp_ratio)``.
        drop_path: float, per-sample stochastic-depth probability of both residual
            branches (training only), default 0.
        qkv_layout: see :class:`Attention`.

    Call: ``x [B, N, D]``, optional ``key_mask`` bool ``[B, N]`` -> ``[B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, qkv_layout: str = "split", **kwargs):
        # The residual stream keeps the dtype it comes in (float32 under mixed precision, as
        # with torch autocast); the norms, attention and MLP compute in the layer's policy.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.drop_path = float(drop_path)
        self.qkv_layout = qkv_layout
        policy = self.dtype_policy
        hidden = int(self.dim * self.mlp_ratio)
        self.norm1 = layer_norm("norm1", policy)
        self.attn = Attention(self.dim, self.num_heads, qkv_layout, name="attn", dtype=policy)
        self.norm2 = layer_norm("norm2", policy)
        self.fc1 = xavier_dense(hidden, "fc1", policy)
        self.fc2 = xavier_dense(self.dim, "fc2", policy)
        self.norm1.build((None, self.dim))
        self.norm2.build((None, self.dim))
        self.fc1.build((None, self.dim))
        self.fc2.build((None, hidden))
        self.drop1 = StochasticDepth(self.drop_path, name="drop_path1", autocast=False)
        self.drop2 = StochasticDepth(self.drop_path, name="drop_path2", autocast=False)
        self.built = True

    def call(self, x, key_mask=None, training=None):
        a = tf.cast(self.attn(self.norm1(x), key_mask=key_mask), x.dtype)
        x = x + self.drop1(a, training=training)
        h = tf.cast(self.fc2(tf.nn.gelu(self.fc1(self.norm2(x)), approximate=False)), x.dtype)
        return x + self.drop2(h, training=training)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return vit_block_params(self, prefix)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path": self.drop_path,
            "qkv_layout": self.qkv_layout,
        }
