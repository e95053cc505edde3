"""From encoder tokens to rslearn's OlmoEarth outputs.

* ``token_pooling=True``: per modality, the mean over timesteps and band groups of the
  *valid* tokens (count clamped to >= 1, so a modality an example lacks pools to 0),
  then the plain mean over the modalities present in the batch (present in at least one
  example: an example lacking a modality still averages that modality's 0 in, as rslearn
  does) -> ``[B, h, w, D]``.
* ``token_pooling=False``: tokens ``[B, h, w, N, D]`` with ``N`` = (timestep, band group)
  timestep-major per modality, modalities in the wrapper's order, and the bool validity
  mask ``[B, h, w, N]`` (rslearn ``TokenFeatureMaps`` B×C×H×W×N, channels last here).
"""

from __future__ import annotations

import tensorflow as tf


def pool_tokens(tokens: dict[str, tf.Tensor], valid: dict[str, tf.Tensor]) -> tf.Tensor:
    """modality -> ``[B, T, S, h, w, D]`` tokens, ``[B, T]`` validity -> ``[B, h, w, D]``."""
    total, present_count = None, None
    for m, tok in tokens.items():
        ok = tf.cast(valid[m], tok.dtype)  # [B, T]
        s = tf.cast(tf.shape(tok)[2], tok.dtype)
        weights = ok[:, :, None, None, None, None]
        summed = tf.reduce_sum(tok * weights, axis=[1, 2])  # [B, h, w, D]
        count = tf.reduce_sum(ok, axis=1) * s  # [B]
        pooled = summed / tf.maximum(count, 1.0)[:, None, None, None]
        present = tf.cast(tf.reduce_any(valid[m]), tok.dtype)
        total = pooled * present if total is None else total + pooled * present
        present_count = present if present_count is None else present_count + present
    return total / tf.maximum(present_count, 1.0)


def unpooled_tokens(tokens: dict[str, tf.Tensor], valid: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """(tokens ``[B, h, w, N, D]``, mask ``[B, h, w, N]``) of all modalities."""
    outs, masks = [], []
    for m, tok in tokens.items():
        shape = tf.shape(tok)
        b, t, s, h, w, d = shape[0], shape[1], shape[2], shape[3], shape[4], tok.shape[-1]
        outs.append(tf.reshape(tf.transpose(tok, [0, 3, 4, 1, 2, 5]), [b, h, w, t * s, d]))
        mask = tf.broadcast_to(valid[m][:, None, None, :, None], tf.stack([b, h, w, t, s]))
        masks.append(tf.reshape(mask, [b, h, w, t * s]))
    if len(outs) == 1:
        return outs[0], masks[0]
    return tf.concat(outs, axis=3), tf.concat(masks, axis=3)
