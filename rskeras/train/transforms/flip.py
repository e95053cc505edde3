"""Flip: random horizontal / vertical flips of images and detection boxes."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, coin


class Flip(Transform):
    """Flips images (and boxes) horizontally and/or vertically, each with probability 0.5.

    One draw per example is shared by every selected item, so images, raster targets
    and boxes stay aligned.

    Args:
        horizontal: randomly flip left-right (default true).
        vertical: randomly flip top-bottom (default true).
        image_selectors: images / raster targets to flip (default ["image"]).
        box_selectors: detection target dicts (``target/`` or ``target/<task>``) with
            ``boxes`` [N, 4] (x1, y1, x2, y2 crop pixels), ``width`` and ``height``.
        skip_missing: skip missing selectors.

    Call-time: images ``[..., H, W, C]`` (flipped on axes -2 / -3); boxes:
    ``x1' = width - x2, x2' = width - x1`` (horizontal), likewise with height.
    """

    def __init__(
        self,
        horizontal: bool = True,
        vertical: bool = True,
        image_selectors: list[str] | None = None,
        box_selectors: list[str] | None = None,
        skip_missing: bool = False,
    ):
        super().__init__(skip_missing=skip_missing)
        self.horizontal = horizontal
        self.vertical = vertical
        self.image_selectors = list(image_selectors) if image_selectors is not None else ["image"]
        self.box_selectors = list(box_selectors or [])

    def sample_state(self) -> dict[str, tf.Tensor]:
        false = tf.constant(False)
        return {"horizontal": coin() if self.horizontal else false, "vertical": coin() if self.vertical else false}

    def apply_image(self, image: tf.Tensor, state: dict[str, tf.Tensor]) -> tf.Tensor:
        image = tf.cond(state["horizontal"], lambda: tf.reverse(image, [-2]), lambda: image)
        return tf.cond(state["vertical"], lambda: tf.reverse(image, [-3]), lambda: image)

    def apply_boxes(self, target: dict, state: dict[str, tf.Tensor]) -> dict:
        if not isinstance(target, dict) or "boxes" not in target:
            raise ValueError("Flip: box_selectors must point at a detection target dict with 'boxes', 'width' and 'height'")
        out = dict(target)
        boxes = out["boxes"]
        width = tf.cast(out["width"], boxes.dtype)
        height = tf.cast(out["height"], boxes.dtype)
        x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
        boxes = tf.cond(state["horizontal"], lambda: tf.stack([width - x2, y1, width - x1, y2], -1), lambda: boxes)
        x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
        boxes = tf.cond(state["vertical"], lambda: tf.stack([x1, height - y2, x2, height - y1], -1), lambda: boxes)
        out["boxes"] = tf.reshape(boxes, [-1, 4])
        return out

    def forward(self, input_dict, target_dict):
        state = self.sample_state()
        self.apply_fn(self.apply_image, input_dict, target_dict, self.image_selectors, state=state)
        self.apply_fn(self.apply_boxes, input_dict, target_dict, self.box_selectors, state=state)
        return input_dict, target_dict
