"""GaussianNoise: additive N(0, std²) noise."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train import randomness

from rskeras.train.transforms.transform import Transform


class GaussianNoise(Transform):
    """Adds independent Gaussian noise to every value of the selected images.

    Args:
        std: standard deviation of the noise.
        selectors: images to augment (default ["image"]).
        skip_missing: skip missing selectors.

    Call-time: any float tensor; same shape out (integer images become float32).
    """

    def __init__(self, std: float, selectors: list[str] | None = None, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)
        self.selectors = list(selectors) if selectors is not None else ["image"]

    def apply_image(self, image: tf.Tensor) -> tf.Tensor:
        if not image.dtype.is_floating:
            image = tf.cast(image, tf.float32)
        return image + randomness.normal(tf.shape(image), stddev=self.std, dtype=image.dtype)

    def forward(self, input_dict, target_dict):
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors)
        return input_dict, target_dict
