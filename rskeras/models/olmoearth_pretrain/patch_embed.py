"""Flexible patch embeddings (olmoearth_pretrain ``FlexiPatchEmbed`` and
``MultiModalPatchEmbeddings``).

Each band group of each modality has its own embedding at the base patch size
(``max_patch_size``, 8). Another patch size p is served by first resizing the image to
``(H // p * 8, W // p * 8)`` with torch's antialiased bicubic (``resize.py``), so the grid
has ``H // p`` x ``W // p`` tokens:

* v1 (``use_linear_patch_embed=False``): a Conv2d with kernel = stride = 8;
* v1.1+ (linear): an optional per-pixel MLP (``pixel_proj``: Linear -> ReLU per hidden
  size, weights shared by all pixels), then the 8 x 8 patch flattened in (row, col,
  channel) order and a Linear to the embedding size (``proj``); an optional
  ``post_proj`` (ReLU -> Linear per hidden size) follows.

Initialisation as olmoearth_pretrain: every Linear gets Xavier-uniform weights and zero
biases (the encoder re-initialises them all), the Conv2d keeps torch's default.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.olmoearth_pretrain.config import EncoderConfig
from rskeras.models.olmoearth_pretrain.resize import resize_aa_bicubic
from rskeras.models.torch_nn import Conv2d
from rskeras.weights.torch_params import TorchParam, dense_params, join


def xavier_linear(units: int, name: str | None = None, dtype=None) -> keras.layers.Dense:
    """A torch Linear initialised as olmoearth_pretrain does (Xavier uniform, zero bias)."""
    return keras.layers.Dense(units, kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name, dtype=dtype)


class FlexiPatchEmbed(keras.layers.Layer):
    """Embeds ``[N, H', W', in_chans]`` images (already resized to a multiple of the base
    patch size) into ``[N, H' / p0, W' / p0, embedding_size]`` tokens.

    Args:
        in_chans: channels of the band group.
        embedding_size: token width.
        base_patch_size: p0, the embedding's patch size (the encoder's max_patch_size).
        use_linear_patch_embed: Linear projection of flattened patches (else Conv2d).
        patch_embed_hidden_sizes: widths of the per-pixel MLP before patchifying.
        post_proj_hidden_sizes: widths of the MLP after the projection.
    """

    def __init__(
        self,
        in_chans: int,
        embedding_size: int,
        base_patch_size: int = 8,
        use_linear_patch_embed: bool = True,
        patch_embed_hidden_sizes: list[int] | None = None,
        post_proj_hidden_sizes: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_chans = int(in_chans)
        self.embedding_size = int(embedding_size)
        self.base_patch_size = int(base_patch_size)
        self.use_linear_patch_embed = bool(use_linear_patch_embed)
        self.hidden_sizes = list(patch_embed_hidden_sizes or [])
        self.post_sizes = list(post_proj_hidden_sizes or [])
        if (self.hidden_sizes or self.post_sizes) and not self.use_linear_patch_embed:
            raise ValueError("patch_embed_hidden_sizes / post_proj_hidden_sizes need use_linear_patch_embed=True")
        p = self.base_patch_size
        if self.use_linear_patch_embed:
            self.pixel_proj = []
            prev = self.in_chans
            for i, h in enumerate(self.hidden_sizes):
                layer = xavier_linear(h, name=f"pixel_proj_{i}", dtype=self.dtype_policy)
                layer.build((None, prev))
                self.pixel_proj.append(layer)
                prev = h
            self.proj = xavier_linear(self.embedding_size, name="proj", dtype=self.dtype_policy)
            self.proj.build((None, prev * p * p))
            self.post_proj = []
            prev = self.embedding_size
            for i, h in enumerate(self.post_sizes):
                layer = xavier_linear(h, name=f"post_proj_{i}", dtype=self.dtype_policy)
                layer.build((None, prev))
                self.post_proj.append(layer)
                prev = h
        else:
            self.proj = Conv2d(self.in_chans, self.embedding_size, p, stride=p, name="proj", dtype=self.dtype_policy)
        self.built = True

    def call(self, x):
        p = self.base_patch_size
        if not self.use_linear_patch_embed:
            return self.proj(x)
        for layer in self.pixel_proj:
            x = tf.nn.relu(layer(x))
        shape = tf.shape(x)
        n, h, w, c = shape[0], shape[1] // p, shape[2] // p, x.shape[-1]
        x = tf.reshape(x, [n, h, p, w, p, c])
        x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
        x = tf.reshape(x, [n, h, w, p * p * c])
        x = self.proj(x)
        for layer in self.post_proj:
            x = layer(tf.nn.relu(x))
        return x

    def torch_params(self, prefix: str) -> list[TorchParam]:
        if not self.use_linear_patch_embed:
            return self.proj.torch_params(join(prefix, "proj"))
        out: list[TorchParam] = []
        for i, layer in enumerate(self.pixel_proj):
            out += dense_params(layer, join(prefix, f"pixel_proj.{2 * i}"))
        out += dense_params(self.proj, join(prefix, "proj"))
        for i, layer in enumerate(self.post_proj):
            out += dense_params(layer, join(prefix, f"post_proj.{2 * i + 1}"))
        return out


class MultiModalPatchEmbeddings(keras.layers.Layer):
    """Per-modality, per-band-group patch embeddings of an OlmoEarth encoder.

    Args:
        config: the encoder architecture (supported modalities, band groups, sizes).

    Call: ``x`` ``[B, T, H, W, C]`` of ``modality`` (canonical band order) and the
    requested ``patch_size`` -> tokens ``[B, T, S, H // p, W // p, D]`` (S band groups).
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.max_patch_size = int(config.max_patch_size)
        self.group_indices = {m: config.group_indices(m) for m in config.supported_modality_names}
        self.embeddings = {
            m: [
                FlexiPatchEmbed(
                    len(indices),
                    config.embedding_size,
                    self.max_patch_size,
                    use_linear_patch_embed=config.use_linear_patch_embed,
                    patch_embed_hidden_sizes=config.patch_embed_hidden_sizes,
                    post_proj_hidden_sizes=config.post_proj_hidden_sizes,
                    name=f"{m}__{i}",
                    dtype=self.dtype_policy,
                )
                for i, indices in enumerate(groups)
            ]
            for m, groups in self.group_indices.items()
        }
        if config.frozen_patch_embeddings:
            for layers in self.embeddings.values():
                for layer in layers:
                    layer.trainable = False
        self.built = True

    def call(self, x, modality: str = "", patch_size: int = 8):
        p0 = self.max_patch_size
        shape = tf.shape(x)
        b, t = shape[0], shape[1]
        h = x.shape[2] if x.shape[2] is not None else shape[2]
        w = x.shape[3] if x.shape[3] is not None else shape[3]
        images = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
        if patch_size != p0:
            images = resize_aa_bicubic(images, h // patch_size * p0, w // patch_size * p0)
        tokens = []
        for indices, layer in zip(self.group_indices[modality], self.embeddings[modality]):
            group = images if indices == list(range(images.shape[-1])) else tf.gather(images, indices, axis=-1)
            tokens.append(layer(group))
        out = tf.stack(tokens, axis=1)  # [B*T, S, h, w, D]
        out_shape = tf.shape(out)
        return tf.reshape(out, tf.concat([[b, t], out_shape[1:]], 0))

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for m, layers in self.embeddings.items():
            for i, layer in enumerate(layers):
                out += layer.torch_params(join(prefix, f"per_modality_embeddings.{m}.{m}__{i}"))
        return out
