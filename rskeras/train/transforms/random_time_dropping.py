"""RandomTimeDropping: drop random timesteps of time series."""

from __future__ import annotations

import tensorflow as tf

from rskeras.models.time_inputs import TIMESTAMPS_SUFFIX, TIMESTEP_MASK_SUFFIX
from rskeras.train import randomness

from rskeras.train.transforms.transform import Transform, parent_of, read_selector, selector_exists


class RandomTimeDropping(Transform):
    """Drops each timestep with probability ``drop_ratio``, keeping at least ``min_keep``.

    If the image has at most ``min_keep`` timesteps it is unchanged; if fewer than
    ``min_keep`` survive the draw, a random subset of ``min_keep`` timesteps (in time
    order) is kept instead. The ``<name>_timestamps`` and ``<name>_timestep_mask`` items
    beside the image (DataInput ``load_timestamps``) lose the same timesteps.

    Args:
        selectors: images to augment (default ["image"]).
        drop_ratio: probability of dropping a timestep, in [0, 1] (default 0.2).
        min_keep: minimum number of timesteps kept (at least 1; default 1).
        skip_missing: skip missing selectors.

    Call-time: ``[T, H, W, C]`` -> ``[T', H, W, C]``.
    """

    def __init__(self, selectors: list[str] | None = None, drop_ratio: float = 0.2, min_keep: int = 1, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        if not 0 <= drop_ratio <= 1:
            raise ValueError(f"drop_ratio must be between 0 and 1, got {drop_ratio}")
        self.selectors = list(selectors) if selectors is not None else ["image"]
        self.drop_ratio = float(drop_ratio)
        self.min_keep = max(int(min_keep), 1)

    def keep_mask(self, t: tf.Tensor) -> tf.Tensor:
        """bool [T]: the timesteps to keep."""
        keep = randomness.uniform([t]) >= self.drop_ratio
        order = tf.argsort(randomness.uniform([t]))
        forced = tf.scatter_nd(tf.reshape(order[: self.min_keep], [-1, 1]), tf.ones([tf.minimum(t, self.min_keep)], tf.bool), [t])
        keep = tf.where(tf.reduce_sum(tf.cast(keep, tf.int32)) < self.min_keep, forced, keep)
        return tf.where(t <= self.min_keep, tf.ones([t], tf.bool), keep)

    def forward(self, input_dict, target_dict):
        for selector in self.selectors:
            if self.skip_missing and not selector_exists(input_dict, target_dict, selector):
                continue
            image = read_selector(input_dict, target_dict, selector)
            keep = self.keep_mask(tf.shape(image)[0])
            holder, key = parent_of(input_dict, target_dict, selector)
            holder[key] = tf.boolean_mask(image, keep)
            for suffix in (TIMESTAMPS_SUFFIX, TIMESTEP_MASK_SUFFIX):
                if key + suffix in holder:
                    holder[key + suffix] = tf.boolean_mask(holder[key + suffix], keep)
        return input_dict, target_dict
