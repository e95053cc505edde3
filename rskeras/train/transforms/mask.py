"""Mask: set image pixels to a value where a mask image is 0."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, read_selector, selector_exists


class Mask(Transform):
    """Sets each selected image to ``mask_value`` wherever the mask is 0.

    Args:
        selectors: images to mask (default ["image"]).
        mask_selector: the mask image (default "mask").
        mask_value: value written where the mask is 0 (default 0).
        skip_missing: skip missing selectors (and everything when the mask is missing).

    Call-time: images ``[T, H, W, C]``; the mask ``[T or 1, H, W, C or 1]`` is broadcast
    over channels and timesteps when it has one of them.
    """

    def __init__(self, selectors: list[str] | None = None, mask_selector: str = "mask", mask_value: float = 0, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        self.selectors = list(selectors) if selectors is not None else ["image"]
        self.mask_selector = mask_selector
        self.mask_value = mask_value

    def apply_image(self, image: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        c_img, c_mask = image.shape[-1], mask.shape[-1]
        if c_img is not None and c_mask is not None and c_mask not in (1, c_img):
            raise ValueError(f"Mask: expected the mask to have the image's {c_img} bands or one band, got {c_mask}")
        checks = [
            tf.debugging.Assert(
                (tf.shape(mask)[0] == 1) | (tf.shape(mask)[0] == tf.shape(image)[0]),
                ["Mask: expected the mask to have the image's timesteps or one timestep; mask/image T:", tf.shape(mask)[0], tf.shape(image)[0]],
            )
        ]
        with tf.control_dependencies(checks):
            zero = tf.broadcast_to(tf.equal(mask, tf.zeros([], mask.dtype)), tf.shape(image))
        return tf.where(zero, tf.cast(self.mask_value, image.dtype), image)

    def forward(self, input_dict, target_dict):
        if self.skip_missing and not selector_exists(input_dict, target_dict, self.mask_selector):
            return input_dict, target_dict
        mask = read_selector(input_dict, target_dict, self.mask_selector)
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors, mask=mask)
        return input_dict, target_dict
