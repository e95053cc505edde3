"""Pad: pad (or crop) images to a square size."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train import randomness

from rskeras.train.transforms.transform import Transform, int_range


class Pad(Transform):
    """Pads images with zeros, or crops them, to ``size``×``size``.

    Args:
        size: target side, or a ``[min, max)`` range to draw it from per example.
        mode: "topleft" (pad/crop on the right and bottom, default) or "center" (split
            the difference ``extra // 2`` before, the rest after, per axis).
        image_selectors: images to pad (default ["image"]).
        box_selectors: not supported (NotImplementedError when given, as in rslearn).
        skip_missing: skip missing selectors.

    Differences from rslearn (intended behaviour, see docs/data.md): center mode pads
    the height axis vertically (rslearn pads the width axis twice), and topleft mode
    can also crop (rslearn's topleft cropping fails an assertion).

    Call-time: ``[..., H, W, C]`` -> ``[..., size, size, C]``.
    """

    def __init__(
        self,
        size: int | list[int],
        mode: str = "topleft",
        image_selectors: list[str] | None = None,
        box_selectors: list[str] | None = None,
        skip_missing: bool = False,
    ):
        super().__init__(skip_missing=skip_missing)
        if mode not in ("topleft", "center"):
            raise ValueError(f"Pad: mode must be 'topleft' or 'center', got {mode!r}")
        self.size = int_range(size, "Pad.size")
        if self.size[0] <= 0:
            raise ValueError(f"Pad: size must be positive, got {size!r}")
        self.mode = mode
        self.image_selectors = list(image_selectors) if image_selectors is not None else ["image"]
        self.box_selectors = list(box_selectors or [])

    def apply_image(self, image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        rank = image.shape.rank
        if rank is None or rank < 3:
            raise ValueError(f"Pad: expected an image [..., H, W, C], got shape {image.shape}")
        shape = tf.shape(image, out_type=tf.int32)
        for axis in (rank - 3, rank - 2):
            extra = size - shape[axis]
            before = extra // 2 if self.mode == "center" else tf.zeros([], tf.int32)
            after = extra - before
            # Crop where negative, pad where positive.
            start = tf.maximum(-before, 0)
            keep = shape[axis] - start - tf.maximum(-after, 0)
            begin = [0] * rank
            length = [-1] * rank
            begin[axis] = start
            length[axis] = keep
            image = tf.slice(image, tf.stack(begin), tf.stack(length))
            paddings = [[0, 0]] * rank
            paddings[axis] = [tf.maximum(before, 0), tf.maximum(after, 0)]
            image = tf.pad(image, tf.convert_to_tensor(paddings))
        return image

    def forward(self, input_dict, target_dict):
        if self.box_selectors:
            raise NotImplementedError("Pad: box_selectors are not supported (as in rslearn)")
        lo, hi = self.size
        size = tf.constant(lo, tf.int32) if hi - lo == 1 else randomness.uniform([], lo, hi, dtype=tf.int32)
        self.apply_fn(self.apply_image, input_dict, target_dict, self.image_selectors, size=size)
        return input_dict, target_dict
