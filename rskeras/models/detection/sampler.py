"""BalancedPositiveNegativeSampler: a fixed-size, fixed-proportion sample for the losses."""

from __future__ import annotations

import tensorflow as tf


class BalancedPositiveNegativeSampler:
    """Samples up to ``batch_size_per_image`` elements per image, at most
    ``int(batch_size_per_image * positive_fraction)`` of them positive
    (torchvision ``BalancedPositiveNegativeSampler``).

    Positives and negatives are drawn uniformly without replacement; when positives
    are short, negatives fill the rest (as far as there are negatives).

    Args:
        batch_size_per_image: int, elements sampled per image.
        positive_fraction: float in [0, 1], the positive quota.

    Call: ``sampler(labels, seed=None)`` with ``labels`` ``[B, N]`` (1 positive, 0
    negative, -1 ignored; any value >= 1 counts as positive) returns two ``[B, N]``
    bool masks ``(positive, negative)``. ``seed`` None draws with ``tf.random.uniform``
    (stateful; graph mode and tf.distribute safe), a shape-[2] int seed draws with the
    stateless op (reproducible, used for validation losses).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image <= 0:
            raise ValueError(f"BalancedPositiveNegativeSampler: batch_size_per_image must be > 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"BalancedPositiveNegativeSampler: positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels: tf.Tensor, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        positive = labels >= 1
        negative = tf.equal(labels, 0)
        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_pos)
        num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), self.batch_size_per_image - num_pos)
        shape = tf.shape(labels)
        if seed is None:
            noise = tf.random.uniform(shape, dtype=tf.float32)
        else:
            noise = tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
        pos_mask = _random_subset(positive, noise, num_pos, max_pos)
        neg_mask = _random_subset(negative, noise, num_neg, self.batch_size_per_image)
        return pos_mask, neg_mask


def _random_subset(candidates: tf.Tensor, noise: tf.Tensor, count: tf.Tensor, max_count: int) -> tf.Tensor:
    """Mask of ``count[b]`` elements of ``candidates[b]`` (``[B, N]`` bool) picked by the
    largest ``noise`` values; ``count <= max_count``."""
    n = candidates.shape[1]
    k = min(max_count, n) if n is not None else tf.minimum(max_count, tf.shape(candidates)[1])
    keys = tf.where(candidates, noise, -1.0)
    _, idx = tf.math.top_k(keys, k=k, sorted=True)
    take = tf.range(tf.shape(idx)[1])[None, :] < count[:, None]
    batch = tf.broadcast_to(tf.range(tf.shape(idx)[0])[:, None], tf.shape(idx))
    scatter_idx = tf.stack([batch, idx], axis=-1)
    picked = tf.scatter_nd(scatter_idx, tf.cast(take, tf.int32), tf.shape(candidates))
    return picked > 0
