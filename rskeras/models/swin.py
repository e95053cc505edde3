"""Swin Transformer v1/v2 (torchvision's implementation) and rslearn's ``Swin`` feature extractor.

The port follows ``torchvision.models.swin_transformer`` operation by operation so that
torch weights give the same numbers:

* patch embedding: Conv(k = s = patch) -> LayerNorm, NHWC from then on;
* shifted-window attention pads the map bottom/right to a multiple of the window
  *inside* the attention with zeros that are **not** masked (they take part in every
  window's softmax), forces the shift to 0 on an axis whose padded size is <= the window,
  rolls cyclically by -shift (slice + concat, never ``tf.roll``, so TFLite converts with
  builtin ops), masks pairs of tokens from different shifted regions with -100, and
  crops the padding off after the reverse roll; a map smaller than one window (the deep
  stages of small tiles) takes a shortcut with the same result, computing only the real
  tokens' queries and outputs (``ShiftedWindowAttention._one_padded_window``);
* v1: scaled dot-product with a learned relative-position bias table; v2: cosine
  attention times ``exp(min(logit_scale, ln 100))`` with a continuous position bias
  ``16 sigmoid(MLP(log-spaced coords))`` and the key part of the qkv bias forced to 0 at
  run time (whatever value the weights hold);
* blocks: v1 pre-norm ``x + DropPath(Attn(LN(x)))``, v2 post-norm
  ``x + DropPath(LN(Attn(x)))``; MLP = Linear -> GELU (erf) -> Linear; LayerNorm eps 1e-5;
  per-sample stochastic depth with probability ``sd * i / (N - 1)`` for block i of N;
* patch merging: pad odd H/W bottom/right, concatenate the 2x2 neighbours in the order
  (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col);
  v1 LN(4C) -> Linear(4C, 2C), v2 Linear -> LN(2C).

Layouts: feature maps are NHWC. Torch keys follow torchvision's module tree
(``features.<k>...``, ``norm``, ``head``); inside rslearn's ``Swin`` they sit under
``model.``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import FeatureExtractor, single_timestep
from rskeras.models.shapes import dims, spatial_size
from rskeras.models.step_graph import in_trainer_step
from rskeras.models.torch_nn import Conv2d, layer_norm, normal_initializer
from rskeras.weights.torch_params import (
    TorchParam,
    dense_params,
    join,
    layer_norm_params,
    load_torch_state_dict,
)

# torchvision's hyperparameter table (version 1 = SwinTransformerBlock/PatchMerging,
# version 2 = SwinTransformerBlockV2/PatchMergingV2). Parameter counts with the
# 1000-class head and 3 input channels are those of torchvision's docs.
ARCHS: dict[str, dict[str, Any]] = {
    "swin_t": dict(version=1, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=[7, 7], stochastic_depth_prob=0.2),  # 28,288,354
    "swin_s": dict(version=1, embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=[7, 7], stochastic_depth_prob=0.3),  # 49,606,258
    "swin_b": dict(version=1, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=[7, 7], stochastic_depth_prob=0.5),  # 87,768,224
    "swin_v2_t": dict(version=2, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=[8, 8], stochastic_depth_prob=0.2),  # 28,351,570
    "swin_v2_s": dict(version=2, embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=[8, 8], stochastic_depth_prob=0.3),  # 49,737,442
    "swin_v2_b": dict(version=2, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=[8, 8], stochastic_depth_prob=0.5),  # 87,930,848
}

_LOG_100 = math.log(100.0)
_MASK_VALUE = -100.0


def _roll(x: tf.Tensor, shift: Any, axis: int) -> tf.Tensor:
    """``torch.roll(x, shift, axis)`` with split + concat (TFLite builtins only; the
    gradient of a split is one concat, where a strided slice's is a zero-filled scatter);
    outside a trainer step (exports) with strided slices + concat, the same values.

    ``shift`` is in ``[-n, n]`` (Python int or scalar tensor); positive shifts move
    elements towards higher indexes.
    """
    if isinstance(shift, int) and shift == 0:
        return x
    n = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]
    split = (n - shift) % n if isinstance(shift, int) and isinstance(n, int) else tf.math.floormod(n - shift, n)
    if isinstance(split, int) and split == 0:
        return x
    if not in_trainer_step() and isinstance(split, int):
        # Exports: two strided slices (an unequal split is TFLite's SPLIT_V, which
        # XNNPACK does not delegate, cutting the graph into more partitions).
        head = x[(slice(None),) * axis + (slice(None, split),)]
        tail = x[(slice(None),) * axis + (slice(split, None),)]
        return tf.concat([tail, head], axis=axis)
    sizes = [split, n - split] if isinstance(split, int) else tf.stack([split, n - split])
    head, tail = tf.split(x, sizes, axis=axis)
    return tf.concat([tail, head], axis=axis)


def _normalize(x: tf.Tensor) -> tf.Tensor:
    """torch ``F.normalize(x, dim=-1)`` (``x / max(||x||, 1e-12)``) with torch's gradient.

    Written as ``x * rsqrt(max(sum(x^2), 1e-24))`` in float32: the zero vectors of the
    unmasked padding tokens then get torch's gradient (``1 / eps`` through the numerator,
    nothing through the norm) instead of the ``0 * inf = NaN`` of a ``sqrt`` gradient at 0,
    which XLA produces; float32 also keeps ``1e-24`` from flushing to zero in float16.
    """
    x32 = tf.cast(x, tf.float32)
    # The TFLite converter fuses this into an L2_NORMALIZATION: XNNPACK does not delegate
    # it (one partition boundary per block), but written as x * x + sum + rsqrt (which it
    # does delegate) the int8 model's attention loses its accuracy (correlation 0.93).
    x32 = x32 * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x32), axis=-1, keepdims=True), 1e-24))
    return tf.cast(x32, x.dtype)


def _region_ids(n: Any, window: int, shift: Any) -> Any:
    """Shifted-window region index (0, 1, 2) of each position along one padded axis.

    torchvision labels slices [0, n - window), [n - window, n - shift), [n - shift, n);
    with shift 0 every position falls in one region.
    """
    if isinstance(n, int) and isinstance(shift, int):
        if shift == 0:
            return np.zeros([n], np.int32)
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int32) + (idx >= n - shift).astype(np.int32)
    idx = tf.range(n)
    ids = tf.cast(idx >= n - window, tf.int32) + tf.cast(idx >= n - shift, tf.int32)
    return tf.where(shift > 0, ids, tf.zeros_like(ids))


def _window_partition(x: Any, window: tuple[int, int], xp=tf) -> Any:
    """``[B, pH, pW, C]`` -> ``[B * nWindows, wh * ww, C]`` (torchvision's order)."""
    wh, ww = window
    b, ph, pw, c = dims(x)
    x = xp.reshape(x, [b, ph // wh, wh, pw // ww, ww, c])
    x = xp.transpose(x, [0, 1, 3, 2, 4, 5])
    return xp.reshape(x, [-1, wh * ww, c])


def _relative_position_index(window: tuple[int, int]) -> np.ndarray:
    """torchvision's ``relative_position_index`` (``[N * N]``) for one window."""
    wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1).reshape(-1).astype(np.int32)


def _relative_coords_table(window: tuple[int, int]) -> np.ndarray:
    """Swin-v2 log-spaced relative coordinates ``[(2wh-1) * (2ww-1), 2]`` (float32)."""
    wh, ww = window
    h = np.arange(-(wh - 1), wh, dtype=np.float32)
    w = np.arange(-(ww - 1), ww, dtype=np.float32)
    table = np.stack(np.meshgrid(h, w, indexing="ij")).transpose(1, 2, 0).astype(np.float32)
    table[:, :, 0] /= np.float32(wh - 1)
    table[:, :, 1] /= np.float32(ww - 1)
    table *= np.float32(8)
    table = np.sign(table) * np.log2(np.abs(table) + np.float32(1.0)) / np.float32(3.0)
    return table.reshape(-1, 2).astype(np.float32)


@keras.saving.register_keras_serializable(package="rskeras")
class StochasticDepth(keras.layers.Layer):
    """Per-sample ("row") stochastic depth: in training, zero whole examples with probability p
    and scale the survivors by 1 / (1 - p) (torchvision ``StochasticDepth(p, "row")``).

    Args:
        p: float, drop probability in [0, 1].

    Call: ``[B, ...]`` -> same shape; identity outside training or when p == 0.
    """

    def __init__(self, p: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"StochasticDepth: p must be in [0, 1], got {p}")
        self.p = float(p)

    def call(self, x, training=None):
        if not training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
        noise = tf.floor(survival + tf.random.uniform(shape, dtype=x.dtype))
        if survival > 0.0:
            noise = noise / survival
        return x * noise

    def get_config(self):
        return {**super().get_config(), "p": self.p}


class ShiftedWindowAttention(keras.layers.Layer):
    """Window multi-head self-attention with optional cyclic shift (v1 or v2).

    Args:
        dim: int, channels C.
        window_size: (wh, ww).
        shift_size: (sh, sw), 0 or half the window.
        num_heads: int, dividing ``dim``.
        version: 1 (scaled dot product + bias table) or 2 (cosine attention + CPB MLP).

    Call: ``[B, H, W, C]`` -> ``[B, H, W, C]``.
    """

    def __init__(self, dim: int, window_size, shift_size, num_heads: int, version: int, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads != 0:
            raise ValueError(f"ShiftedWindowAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if version == 2 and min(window_size) < 2:
            raise ValueError(f"Swin v2 needs a window of at least 2, got {list(window_size)}")
        self.dim = dim
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(int(s) for s in shift_size)
        self.num_heads = num_heads
        self.version = version
        # torchvision: trunc_normal_(std=0.02) and zero bias on every Linear; one
        # initializer instance per weight (a shared one would give identical values)
        self.qkv = keras.layers.Dense(3 * dim, kernel_initializer=normal_initializer(0.02), name="qkv")
        self.proj = keras.layers.Dense(dim, kernel_initializer=normal_initializer(0.02), name="proj")
        n = self.window_size[0] * self.window_size[1]
        self._index = _relative_position_index(self.window_size)
        self._n = n
        if version == 2:
            self.cpb_fc1 = keras.layers.Dense(512, kernel_initializer=normal_initializer(0.02), name="cpb_mlp_0")
            self.cpb_fc2 = keras.layers.Dense(num_heads, use_bias=False, kernel_initializer=normal_initializer(0.02), name="cpb_mlp_2")
            self._coords = _relative_coords_table(self.window_size)
            # key third of the qkv bias is zeroed at run time, as torchvision does
            self._qkv_bias_mask = np.concatenate([np.ones(dim), np.zeros(dim), np.ones(dim)]).astype(np.float32)

    def build(self, input_shape=None):
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))
        table_rows = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        if self.version == 1:
            self.relative_position_bias_table = self.add_weight(
                shape=(table_rows, self.num_heads),
                initializer=normal_initializer(0.02),  # torch trunc_normal_(std=.02) cuts at +-2, not 2 std
                name="relative_position_bias_table",
            )
        else:
            self.logit_scale = self.add_weight(
                shape=(self.num_heads, 1, 1),
                initializer=keras.initializers.Constant(math.log(10.0)),
                name="logit_scale",
            )
            self.cpb_fc1.build((None, 2))
            self.cpb_fc2.build((None, 512))

    def relative_position_bias(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> tf.Tensor:
        """``[1, heads, N, N]`` bias added to the attention logits; ``rows`` / ``cols``
        (window positions) select and order a ``[1, heads, len(rows), len(cols)]`` part."""
        if self.version == 1:
            table = self.relative_position_bias_table
        else:
            table = self.cpb_fc2(tf.nn.relu(self.cpb_fc1(tf.constant(self._coords))))
        index = self._index.reshape(self._n, self._n)
        rows = np.arange(self._n) if rows is None else rows
        cols = np.arange(self._n) if cols is None else cols
        bias = tf.gather(table, index[rows][:, cols].reshape(-1))
        bias = tf.transpose(tf.reshape(bias, [len(rows), len(cols), self.num_heads]), [2, 0, 1])[None]
        if self.version == 2:
            bias = 16.0 * tf.sigmoid(bias)
        return bias

    def _shift_mask(self, pad_h, pad_w, shift_h, shift_w) -> Any:
        """``[nWindows, N, N]`` additive mask (0 or -100) of the shifted windows."""
        rows = _region_ids(pad_h, self.window_size[0], shift_h)
        cols = _region_ids(pad_w, self.window_size[1], shift_w)
        static = isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)
        if static:
            ids = (rows[:, None] * 3 + cols[None, :]).astype(np.float32)[None, :, :, None]
            ids = _window_partition(ids, self.window_size, xp=np)[:, :, 0]
            diff = ids[:, None, :] - ids[:, :, None]
            return tf.constant(np.where(diff != 0, _MASK_VALUE, 0.0).astype(np.float32))
        ids = tf.cast(rows[:, None] * 3 + cols[None, :], tf.float32)[None, :, :, None]
        ids = _window_partition(ids, self.window_size)[:, :, 0]
        diff = ids[:, None, :] - ids[:, :, None]
        return tf.where(tf.not_equal(diff, 0.0), _MASK_VALUE, 0.0)

    def _qkv_weights(self, dtype):
        kernel = tf.cast(self.qkv.kernel, dtype)
        bias = tf.cast(self.qkv.bias, dtype)
        if self.version == 2:
            bias = bias * tf.constant(self._qkv_bias_mask, dtype)
        return kernel, bias

    def _logits(self, q, k, one_key: bool = False):
        """Attention logits ``[..., heads, Nq, Nk]`` before the position bias; with
        ``one_key``, ``k`` is one key ``[1, heads, 1, d]`` shared by the batch, taken by a
        product and a sum (oneDNN's batched matmul corrupts memory on that broadcast)."""

        def product(a, b):
            return tf.reduce_sum(a * b, axis=-1, keepdims=True) if one_key else tf.matmul(a, b, transpose_b=True)

        if self.version == 2:
            q, k = _normalize(q), _normalize(k)
            return product(q, k) * tf.exp(tf.minimum(tf.cast(self.logit_scale, q.dtype), _LOG_100))
        return product(q * (self.dim // self.num_heads) ** -0.5, k)

    def _one_padded_window(self, x, h: int, w: int):
        """The attention of a map smaller than one window (the deep stages of small tiles),
        computed for the real tokens only, with torchvision's result.

        torchvision pads the map to one window with zeros that are not masked: every padding
        token's key and value are the qkv bias (``0 @ W + b``), so all of them share one
        logit ``q . k_pad`` (plus each its own position bias) and one value ``v_pad``; their
        outputs are cropped away. Here the queries, the qkv and the output projection cover
        the ``h * w`` real tokens only, and the padding enters the softmax as that shared
        logit: ``out = P_real @ v_real + sum(P_pad) * v_pad`` (on a 2x2 map in an 8x8 window,
        4 of 64 tokens: the padded path spent most of a 64x64 tile's Swin step there).
        """
        wh, ww = self.window_size
        b, c, heads = dims(x)[0], self.dim, self.num_heads
        m, d = h * w, c // heads
        real = np.array([r * ww + col for r in range(h) for col in range(w)], np.int32)
        pad = np.setdiff1d(np.arange(self._n, dtype=np.int32), real)
        dtype = x.dtype
        kernel, bias = self._qkv_weights(dtype)
        qkv = tf.reshape(tf.matmul(tf.reshape(x, [-1, c]), kernel) + bias, [b, m, 3, heads, d])
        q, k, v = (tf.squeeze(t, 0) for t in tf.split(tf.transpose(qkv, [2, 0, 3, 1, 4]), 3, axis=0))  # [B, heads, m, d]
        _, k_pad, v_pad = tf.unstack(tf.reshape(bias, [3, 1, heads, 1, d]), 3, axis=0)  # [1, heads, 1, d]
        logits_real = self._logits(q, k)  # [B, heads, m, m]
        logits_pad = self._logits(q, k_pad, one_key=True)  # [B, heads, m, 1]
        attn = tf.concat([logits_real, tf.tile(logits_pad, [1, 1, 1, len(pad)])], axis=-1)
        attn = attn + tf.cast(self.relative_position_bias(real, np.concatenate([real, pad])), dtype)
        attn = tf.nn.softmax(attn, axis=-1)
        p_real, p_pad = tf.split(attn, [m, len(pad)], axis=-1)
        out = tf.matmul(p_real, v) + tf.reduce_sum(p_pad, axis=-1, keepdims=True) * v_pad
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, m, c])
        return tf.reshape(self.proj(out), [b, h, w, c])

    def call(self, x, training=None):
        wh, ww = self.window_size
        h, w = spatial_size(x)
        if isinstance(h, int) and isinstance(w, int) and h <= wh and w <= ww and h * w < self._n:
            return self._one_padded_window(x, h, w)
        pad_b = (wh - h % wh) % wh
        pad_r = (ww - w % ww) % ww
        if not (isinstance(pad_b, int) and isinstance(pad_r, int) and pad_b == 0 and pad_r == 0):
            x = tf.pad(x, [[0, 0], [0, pad_b], [0, pad_r], [0, 0]])
        pad_h, pad_w = h + pad_b, w + pad_r
        shift_h, shift_w = self.shift_size

        def effective(shift, window, padded):
            # torchvision: no shift along an axis the window already covers
            if isinstance(padded, int):
                return 0 if window >= padded else shift
            return tf.where(window >= padded, 0, shift)

        shift_h = effective(shift_h, wh, pad_h)
        shift_w = effective(shift_w, ww, pad_w)
        shifted = not (isinstance(shift_h, int) and isinstance(shift_w, int) and shift_h == 0 and shift_w == 0)
        if shifted:
            x = _roll(_roll(x, -shift_h, 1), -shift_w, 2)

        windows = _window_partition(x, self.window_size)  # [Bw, N, C]
        n, c, heads = self._n, self.dim, self.num_heads
        dtype = windows.dtype  # explicit casts keep mixed precision working
        kernel, bias = self._qkv_weights(dtype)
        # one 2-D product: a batched one broadcasting the kernel has a gradient that
        # computes a kernel-sized product per window, then sums them
        qkv = tf.reshape(tf.matmul(tf.reshape(windows, [-1, c]), kernel) + bias, [-1, n, 3, heads, c // heads])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])
        # an equal split, not unstack (TFLite's UNPACK, which XNNPACK does not delegate);
        # its gradient is one concat (a strided slice's is a zero-filled scatter each)
        q, k, v = (tf.squeeze(t, 0) for t in tf.split(qkv, 3, axis=0))
        attn = self._logits(q, k) + tf.cast(self.relative_position_bias(), dtype)
        if shifted:
            mask = self._shift_mask(pad_h, pad_w, shift_h, shift_w)  # [nW, N, N]
            num_windows = (pad_h // wh) * (pad_w // ww)
            attn = tf.reshape(attn, [-1, num_windows, heads, n, n]) + tf.cast(mask, dtype)[None, :, None]
            attn = tf.reshape(attn, [-1, heads, n, n])
        attn = tf.nn.softmax(attn, axis=-1)
        out = tf.reshape(tf.transpose(tf.matmul(attn, v), [0, 2, 1, 3]), [-1, n, c])
        out = self.proj(out)

        b = dims(x)[0]
        out = tf.reshape(out, [b, pad_h // wh, pad_w // ww, wh, ww, c])
        out = tf.reshape(tf.transpose(out, [0, 1, 3, 2, 4, 5]), [b, pad_h, pad_w, c])
        if shifted:
            out = _roll(_roll(out, shift_h, 1), shift_w, 2)
        if not (isinstance(pad_b, int) and isinstance(pad_r, int) and pad_b == 0 and pad_r == 0):
            out = out[:, :h, :w, :]
        return out

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out = dense_params(self.qkv, join(prefix, "qkv")) + dense_params(self.proj, join(prefix, "proj"))
        out.append(TorchParam(join(prefix, "relative_position_index"), None))
        if self.version == 1:
            out.append(TorchParam(join(prefix, "relative_position_bias_table"), self.relative_position_bias_table))
        else:
            out.append(TorchParam(join(prefix, "logit_scale"), self.logit_scale))
            out += dense_params(self.cpb_fc1, join(prefix, "cpb_mlp.0"))
            out += dense_params(self.cpb_fc2, join(prefix, "cpb_mlp.2"))
            out.append(TorchParam(join(prefix, "relative_coords_table"), None))
        return out


class SwinTransformerBlock(keras.layers.Layer):
    """One Swin block (v1 pre-norm or v2 post-norm), see the module docstring.

    Args:
        dim, num_heads, window_size, shift_size: as ShiftedWindowAttention.
        mlp_ratio: float, MLP hidden width = int(dim * mlp_ratio).
        stochastic_depth_prob: float, drop-path probability of this block.
        version: 1 or 2.

    Call: ``[B, H, W, C]`` -> ``[B, H, W, C]``.
    """

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, stochastic_depth_prob, version, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.version = version
        self.hidden = int(dim * mlp_ratio)
        self.norm1 = layer_norm(name="norm1")
        self.attn = ShiftedWindowAttention(dim, window_size, shift_size, num_heads, version, name="attn")
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, name="stochastic_depth")
        self.norm2 = layer_norm(name="norm2")
        self.mlp_fc1 = keras.layers.Dense(self.hidden, kernel_initializer=normal_initializer(0.02), name="mlp_0")
        self.mlp_fc2 = keras.layers.Dense(dim, kernel_initializer=normal_initializer(0.02), name="mlp_3")

    def build(self, input_shape=None):
        self.norm1.build((None, self.dim))
        self.norm2.build((None, self.dim))
        self.attn.build()
        self.mlp_fc1.build((None, self.dim))
        self.mlp_fc2.build((None, self.hidden))

    def mlp(self, x):
        return self.mlp_fc2(tf.nn.gelu(self.mlp_fc1(x), approximate=False))

    def call(self, x, training=None):
        if self.version == 1:
            x = x + self.stochastic_depth(self.attn(self.norm1(x)), training=training)
            x = x + self.stochastic_depth(self.mlp(self.norm2(x)), training=training)
        else:
            x = x + self.stochastic_depth(self.norm1(self.attn(x)), training=training)
            x = x + self.stochastic_depth(self.norm2(self.mlp(x)), training=training)
        return x

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return (
            layer_norm_params(self.norm1, join(prefix, "norm1"))
            + self.attn.torch_params(join(prefix, "attn"))
            + layer_norm_params(self.norm2, join(prefix, "norm2"))
            + dense_params(self.mlp_fc1, join(prefix, "mlp.0"))
            + dense_params(self.mlp_fc2, join(prefix, "mlp.3"))
        )


class PatchMerging(keras.layers.Layer):
    """Halves H and W and doubles C (v1: LN(4C) -> Linear; v2: Linear -> LN(2C)).

    Args:
        dim: int, input channels C.
        version: 1 or 2.

    Call: ``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), 2C]``.
    """

    def __init__(self, dim: int, version: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.version = version
        self.reduction = keras.layers.Dense(2 * dim, use_bias=False, kernel_initializer=normal_initializer(0.02), name="reduction")
        self.norm = layer_norm(name="norm")

    def build(self, input_shape=None):
        self.reduction.build((None, 4 * self.dim))
        self.norm.build((None, 4 * self.dim if self.version == 1 else 2 * self.dim))

    def call(self, x, training=None):
        h, w = spatial_size(x)
        pad_b, pad_r = h % 2, w % 2
        if not (isinstance(pad_b, int) and isinstance(pad_r, int) and pad_b == 0 and pad_r == 0):
            x = tf.pad(x, [[0, 0], [0, pad_b], [0, pad_r], [0, 0]])
        h, w = h + pad_b, w + pad_r
        if not in_trainer_step() and isinstance(h, int) and isinstance(w, int):
            # Exports: the same [x00, x10, x01, x11] channel blocks by reshape + transpose
            # (stride-2 strided slices are not delegated by XNNPACK).
            b = dims(x)[0]
            x = tf.reshape(x, [b, h // 2, 2, w // 2, 2, self.dim])
            x = tf.reshape(tf.transpose(x, [0, 1, 3, 4, 2, 5]), [b, h // 2, w // 2, 4 * self.dim])
        else:
            x = tf.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        if self.version == 1:
            return self.reduction(self.norm(x))
        return self.norm(self.reduction(x))

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return dense_params(self.reduction, join(prefix, "reduction")) + layer_norm_params(self.norm, join(prefix, "norm"))


@keras.saving.register_keras_serializable(package="rskeras")
class SwinTransformer(keras.layers.Layer):
    """torchvision's ``SwinTransformer`` (features, final norm and classification head).

    Args:
        patch_size: (ph, pw), default (4, 4).
        embed_dim: int, channels of stage 1.
        depths: list of int, blocks per stage.
        num_heads: list of int, attention heads per stage.
        window_size: (wh, ww).
        mlp_ratio: float, default 4.0.
        stochastic_depth_prob: float, drop-path probability of the last block.
        num_classes: int, outputs of the head, default 1000.
        version: 1 (Swin) or 2 (Swin-v2).
        in_channels: int, input channels of the patch embedding, default 3.

    ``features(x)`` maps ``[B, H, W, in_channels]`` to the list of the
    ``2 * len(depths)`` outputs of torchvision's ``features`` modules (NHWC, before the
    final norm); ``call(x)`` returns the ``[B, num_classes]`` logits.
    """

    def __init__(
        self,
        patch_size=(4, 4),
        embed_dim: int = 96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=(7, 7),
        mlp_ratio: float = 4.0,
        stochastic_depth_prob: float = 0.1,
        num_classes: int = 1000,
        version: int = 1,
        in_channels: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.patch_size = _int_pair(patch_size, "patch_size")
        self.window_size = _int_pair(window_size, "window_size")
        self.embed_dim = int(embed_dim)
        self.depths = [int(d) for d in depths]
        self.num_heads = [int(h) for h in num_heads]
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"SwinTransformer: depths {self.depths} and num_heads {self.num_heads} must be non-empty and of equal length")
        if version not in (1, 2):
            raise ValueError(f"SwinTransformer: version must be 1 or 2, got {version}")
        self.mlp_ratio = float(mlp_ratio)
        self.stochastic_depth_prob = float(stochastic_depth_prob)
        self.num_classes = int(num_classes)
        self.version = int(version)
        self.in_channels = int(in_channels)

        self.patch_conv = Conv2d(
            self.in_channels, self.embed_dim, self.patch_size, stride=self.patch_size, padding=0, name="patch_embed"
        )
        self.patch_norm = layer_norm(name="patch_norm")
        total = sum(self.depths)
        block_id = 0
        self.stages: list[list[SwinTransformerBlock]] = []
        self.blocks: list[SwinTransformerBlock] = []  # flat list, for Keras tracking
        self.mergers: list[PatchMerging] = []
        for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            dim = self.embed_dim * 2**s
            blocks = []
            for i in range(depth):
                # torchvision divides by (total - 1), which fails for a single block; use 0 there
                sd = self.stochastic_depth_prob * block_id / (total - 1) if total > 1 else 0.0
                shift = [0 if i % 2 == 0 else w // 2 for w in self.window_size]
                blocks.append(
                    SwinTransformerBlock(dim, heads, self.window_size, shift, self.mlp_ratio, sd, self.version, name=f"stage{s}_block{i}")
                )
                block_id += 1
            self.stages.append(blocks)
            self.blocks.extend(blocks)
            if s < len(self.depths) - 1:
                self.mergers.append(PatchMerging(dim, self.version, name=f"merge{s}"))
        self.num_features = self.embed_dim * 2 ** (len(self.depths) - 1)
        self.norm = layer_norm(name="norm")
        self.head = keras.layers.Dense(self.num_classes, kernel_initializer=normal_initializer(0.02), name="head")

    def build(self, input_shape=None):
        self.patch_norm.build((None, self.embed_dim))
        for blocks in self.stages:
            for block in blocks:
                block.build()
        for merger in self.mergers:
            merger.build()
        self.norm.build((None, self.num_features))
        self.head.build((None, self.num_features))

    @property
    def num_feature_layers(self) -> int:
        """Number of torchvision ``features`` modules (8 for four stages)."""
        return 2 * len(self.depths)

    def feature_channels(self) -> list[tuple[int, int]]:
        """(downsample factor, channels) of each ``features`` module output."""
        out = []
        for s in range(len(self.depths)):
            factor, dim = self.patch_size[0] * 2**s, self.embed_dim * 2**s
            out.append((factor, dim))  # features[2s]: embedding or merging
            out.append((factor, dim))  # features[2s + 1]: stage s
        return out

    def feature_module(self, k: int, x, training=None):
        """Applies torchvision's ``features[k]`` to ``x``."""
        if k == 0:
            return self.patch_norm(self.patch_conv(x))
        if k % 2 == 0:
            return self.mergers[k // 2 - 1](x)
        for block in self.stages[k // 2]:
            x = block(x, training=training)
        return x

    def features(self, x, training=None, upto: int | None = None) -> list[tf.Tensor]:
        """Outputs of ``features[0..upto]`` (all by default), NHWC."""
        last = self.num_feature_layers - 1 if upto is None else upto
        outputs = []
        for k in range(last + 1):
            x = self.feature_module(k, x, training=training)
            outputs.append(x)
        return outputs

    def classify(self, last_features, training=None):
        """final norm -> global average pool -> head."""
        x = self.norm(last_features)
        return self.head(tf.reduce_mean(x, axis=[1, 2]))

    def call(self, x, training=None):
        return self.classify(self.features(x, training=training)[-1], training=training)

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out = self.patch_conv.torch_params(join(prefix, "features.0.0"))
        out += layer_norm_params(self.patch_norm, join(prefix, "features.0.2"))
        for s, blocks in enumerate(self.stages):
            for i, block in enumerate(blocks):
                out += block.torch_params(join(prefix, f"features.{2 * s + 1}.{i}"))
            if s < len(self.mergers):
                out += self.mergers[s].torch_params(join(prefix, f"features.{2 * s + 2}"))
        out += layer_norm_params(self.norm, join(prefix, "norm"))
        out += dense_params(self.head, join(prefix, "head"))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": list(self.patch_size),
            "embed_dim": self.embed_dim,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "window_size": list(self.window_size),
            "mlp_ratio": self.mlp_ratio,
            "stochastic_depth_prob": self.stochastic_depth_prob,
            "num_classes": self.num_classes,
            "version": self.version,
            "in_channels": self.in_channels,
        }


def _int_pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


def build_swin_transformer(arch: str, in_channels: int = 3, num_classes: int = 1000, name: str = "model", **overrides) -> SwinTransformer:
    """The torchvision architecture ``arch`` with optional hyperparameter overrides.

    Args:
        arch: one of ``ARCHS``.
        in_channels: int, input channels of the patch embedding.
        num_classes: int, head outputs.
        name: Keras layer name.
        **overrides: any of patch_size, embed_dim, depths, num_heads, window_size,
            mlp_ratio, stochastic_depth_prob (None values are ignored).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown swin architecture {arch!r}; expected one of {sorted(ARCHS)}")
    params = dict(ARCHS[arch])
    params.setdefault("patch_size", [4, 4])
    params.update({k: v for k, v in overrides.items() if v is not None})
    return SwinTransformer(in_channels=in_channels, num_classes=num_classes, name=name, **params)


@keras.saving.register_keras_serializable(package="rskeras")
class Swin(FeatureExtractor):
    """Swin Transformer backbone or classifier (rslearn ``rslearn.models.swin.Swin``).

    With ``output_layers`` the outputs of the selected torchvision ``features`` modules
    are returned as FeatureMaps (NHWC, before the final LayerNorm): index 0 = patch
    embedding, 1 = stage 1, 2 = merging, 3 = stage 2, ... 7 = stage 4; ``[1, 3, 5, 7]`` gives
    maps at 1/4, 1/8, 1/16, 1/32 with C, 2C, 4C, 8C channels. Without ``output_layers``
    the model classifies: features -> final norm -> average pool -> head, a FeatureVector
    of ``num_outputs`` logits. The final norm and head hold weights in both modes (as in
    rslearn, so parameter counts and state dicts match); with ``output_layers`` they are
    not trainable (never used, so they get no gradient: torch's optimizer skips them too).
    No input normalisation is done.

    Torch keys: ``model.<torchvision key>`` (``model.features.0.0.weight``, ...).

    Args:
        arch: str, "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s" or "swin_v2_b"
            (default "swin_v2_b").
        pretrained: bool, load ImageNet weights. They cannot be downloaded here: pass
            ``weights_path`` to a local copy of torchvision's ``.pth`` for the arch (or a
            state dict converted with ``tools/convert_weights.py``); without it the model
            is randomly initialised, with a warning (as SatlasPretrain without weights). As in rslearn, the
            patch-embedding conv stays randomly initialised when ``input_channels != 3``
            and the head when ``num_outputs != 1000``.
        input_channels: int, image channels, default 3.
        output_layers: list of int in 0..7, or None for classification mode.
        num_outputs: int, logits of the head, default 1000.
        weights_path: str or None, local torchvision-keyed state dict used when
            ``pretrained`` (keys may carry a leading ``model.``).
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
        stochastic_depth_prob: optional overrides of the arch's hyperparameters (for
            small models such as the test fixtures; rslearn itself has no such options).

    Call: context with ``"image"`` ``[B, 1, H, W, C]`` (or ``[B, H, W, C]``) -> FeatureMaps
    or FeatureVector ``[B, num_outputs]``.
    """

    def __init__(
        self,
        arch: str = "swin_v2_b",
        pretrained: bool = False,
        input_channels: int = 3,
        output_layers: list[int] | None = None,
        num_outputs: int = 1000,
        weights_path: str | None = None,
        patch_size=None,
        embed_dim: int | None = None,
        depths=None,
        num_heads=None,
        window_size=None,
        mlp_ratio: float | None = None,
        stochastic_depth_prob: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.arch = arch
        self.pretrained = bool(pretrained)
        self.input_channels = int(input_channels)
        self.output_layers = None if output_layers is None else [int(i) for i in output_layers]
        self.num_outputs = int(num_outputs)
        self.weights_path = weights_path
        self.overrides = dict(
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            stochastic_depth_prob=stochastic_depth_prob,
        )
        self.model = build_swin_transformer(arch, self.input_channels, self.num_outputs, name="model", **self.overrides)
        if self.output_layers is not None:
            bad = [i for i in self.output_layers if not 0 <= i < self.model.num_feature_layers]
            if bad or not self.output_layers:
                raise ValueError(f"Swin: output_layers must be non-empty indexes in 0..{self.model.num_feature_layers - 1}, got {output_layers}")
        self.build()
        if self.pretrained and weights_path:
            self.load_pretrained(weights_path)
        elif self.pretrained:
            # The one policy of rskeras' pretrained encoders (Swin, SatlasPretrain): weights
            # come from local files only; without one the encoder trains from random init,
            # with this warning (docs/weights.md).
            logging.getLogger(__name__).warning(
                "Swin(arch=%r, pretrained=True): no weights_path given, the model is randomly initialised "
                "(rskeras downloads nothing: pass a local copy of torchvision's .pth for the arch, or a "
                "conversion by `rskeras convert-weights`, as weights_path)",
                arch,
            )

    def build(self, input_shape=None):
        self.model.build()
        if self.output_layers is not None:
            # Feature mode never runs the final norm and head: they keep their weights (state
            # dicts and parameter counts match rslearn's) but are not trainable, so that no
            # step asks for their (non-existent) gradients.
            for layer in (self.model.norm, self.model.head):
                layer.trainable = False
        self.built = True

    def load_pretrained(self, path: str):
        """Loads a torchvision-keyed state dict (skipping the conv/head rslearn re-creates)."""
        from rskeras.weights.files import read_state_dict

        state = read_state_dict(path)
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model.") :]: v for k, v in state.items()}
        params = self.model.torch_params("")
        skip = []
        if self.input_channels != 3:
            skip.append("features.0.0.")
        if self.num_outputs != 1000:
            skip.append("head.")
        params = [p for p in params if not any(p.key.startswith(s) for s in skip)]
        state = {k: v for k, v in state.items() if not any(k.startswith(s) for s in skip)}
        load_torch_state_dict(self.model, state, params=params)

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        """(downsample factor, channels) of each output layer.

        Computed from the actual hyperparameters. rslearn uses a fixed per-arch table
        whose base-arch version has 9 entries (an extra ``(4, 128)``), so for swin_b /
        swin_v2_b it returns wrong values for indexes 2, 4 and 6; rskeras returns the true
        channels there (identical for 1, 3, 5, 7 and for every index of the tiny/small
        archs), because a wrong table only makes downstream layers fail to build.
        """
        if not self.output_layers:
            raise ValueError("Swin.get_backbone_channels requires output_layers")
        table = self.model.feature_channels()
        return [table[i] for i in self.output_layers]

    def call(self, context, training=None):
        images = context["image"] if isinstance(context, dict) else context
        x = tf.cast(single_timestep(images, "Swin"), self.compute_dtype)
        if self.output_layers:
            feats = self.model.features(x, training=training, upto=max(self.output_layers))
            return [feats[i] for i in self.output_layers]
        return self.model(x, training=training)

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return self.model.torch_params(join(prefix, "model"))

    def get_config(self):
        config = {
            **super().get_config(),
            "arch": self.arch,
            "pretrained": self.pretrained,
            "input_channels": self.input_channels,
            "output_layers": self.output_layers,
            "num_outputs": self.num_outputs,
            "weights_path": self.weights_path,
        }
        config.update({k: v for k, v in self.overrides.items()})
        return config
