"""Crop: a random (or fixed) square crop of images and detection boxes."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train import randomness

from rskeras.train.transforms.transform import Transform, int_range, parent_of, read_selector, selector_exists, write_selector


class Crop(Transform):
    """Crops the selected images to a square of side ``crop_size``.

    The reference is the selected image with the smallest width: the crop size and
    offsets are drawn for it and scaled to every other image by its width/height ratio
    (integer division), so inputs at different resolutions stay aligned.

    Args:
        crop_size: side length, or a ``[min, max)`` range to draw it from.
        image_selectors: images / raster targets to crop (default ["image"]).
        box_selectors: detection boxes to crop: a ``[N, 4]`` box tensor (``target/boxes``)
            or a detection target dict (``target/``); boxes are shifted by the crop
            origin, clamped to ``[0, size]`` and zero-area boxes are dropped together with
            their ``labels`` (a ``labels`` item beside the boxes); ``width``/``height``
            beside them become the crop size.
        skip_missing: skip missing selectors.
        offset: ``[left, top]`` for a deterministic crop (bounds-checked).

    Differences from rslearn (intended behaviour, see docs/data.md): the random offset
    is uniform over ``[0, W - size]`` inclusive (rslearn never picks the last offset and
    fails when ``size == W``), and labels of dropped boxes are dropped too.

    Call-time: images ``[..., H, W, C]`` -> ``[..., size_i, size_i, C]``.
    """

    def __init__(
        self,
        crop_size: int | list[int] = 0,
        image_selectors: list[str] | None = None,
        box_selectors: list[str] | None = None,
        skip_missing: bool = False,
        offset: list[int] | None = None,
    ):
        super().__init__(skip_missing=skip_missing)
        self.crop_size = int_range(crop_size, "Crop.crop_size")
        if self.crop_size[0] <= 0:
            raise ValueError(f"Crop: crop_size must be positive, got {crop_size!r}")
        if offset is not None and (len(offset) != 2 or min(offset) < 0):
            raise ValueError(f"Crop: offset must be [left, top] with non-negative values, got {offset!r}")
        self.offset = list(offset) if offset is not None else None
        self.image_selectors = list(image_selectors) if image_selectors is not None else ["image"]
        self.box_selectors = list(box_selectors or [])

    def sample_state(self, ref_hw: tf.Tensor) -> dict[str, tf.Tensor]:
        """Crop size and offsets for the reference image of size ``ref_hw`` (int32 [2])."""
        lo, hi = self.crop_size
        size = tf.constant(lo, tf.int32) if hi - lo == 1 else randomness.uniform([], lo, hi, dtype=tf.int32)
        h, w = ref_hw[0], ref_hw[1]
        fits = tf.debugging.Assert((h >= size) & (w >= size), ["Crop: crop size", size, "exceeds the image size (h, w)", h, w])
        with tf.control_dependencies([fits]):
            if self.offset is not None:
                left = tf.constant(self.offset[0], tf.int32)
                top = tf.constant(self.offset[1], tf.int32)
                ok = tf.debugging.Assert(
                    (left + size <= w) & (top + size <= h),
                    ["Crop: offset", left, top, "+ crop size", size, "exceeds the image size (h, w)", h, w],
                )
                with tf.control_dependencies([ok]):
                    left, top = tf.identity(left), tf.identity(top)
            else:
                left = randomness.uniform([], 0, w - size + 1, dtype=tf.int32)
                top = randomness.uniform([], 0, h - size + 1, dtype=tf.int32)
        return {"ref_hw": ref_hw, "crop_size": size, "left": left, "top": top}

    def apply_image(self, image: tf.Tensor, state: dict[str, tf.Tensor]) -> tf.Tensor:
        shape = tf.shape(image, out_type=tf.int32)
        h, w = shape[-3], shape[-2]
        ref_h, ref_w = state["ref_hw"][0], state["ref_hw"][1]
        size = state["crop_size"] * w // ref_w
        left = state["left"] * w // ref_w
        top = state["top"] * h // ref_h
        return image[..., top : top + size, left : left + size, :]

    def crop_boxes(self, boxes: tf.Tensor, state: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(cropped boxes, keep mask over the input boxes)."""
        size = tf.cast(state["crop_size"], boxes.dtype)
        left = tf.cast(state["left"], boxes.dtype)
        top = tf.cast(state["top"], boxes.dtype)
        shifted = boxes - tf.stack([left, top, left, top])
        clamped = tf.clip_by_value(shifted, tf.zeros([], boxes.dtype), size)
        keep = (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
        return tf.reshape(tf.boolean_mask(clamped, keep), [-1, 4]), keep

    def apply_box_selector(self, input_dict: dict, target_dict: dict, selector: str, state: dict[str, tf.Tensor]) -> None:
        value = read_selector(input_dict, target_dict, selector)
        if isinstance(value, dict):
            if "boxes" not in value:
                raise ValueError(f"Crop: box selector {selector!r} points at a dict without 'boxes'")
            holder, key = dict(value), "boxes"
        else:
            holder, key = parent_of(input_dict, target_dict, selector)
            if holder is None:
                raise ValueError(f"Crop: box selector {selector!r} must point at a box tensor or a detection target dict")
        cropped, keep = self.crop_boxes(holder[key], state)
        holder[key] = cropped
        if key == "boxes":
            # The labels (and sizes) of the same detection target follow the boxes.
            if "labels" in holder:
                holder["labels"] = tf.boolean_mask(holder["labels"], keep)
            for dim in ("width", "height"):
                if dim in holder:
                    holder[dim] = tf.cast(state["crop_size"], holder[dim].dtype)
        if isinstance(value, dict):
            write_selector(input_dict, target_dict, selector, holder)

    def forward(self, input_dict, target_dict):
        ref = None
        for selector in self.image_selectors:
            if self.skip_missing and not selector_exists(input_dict, target_dict, selector):
                continue
            shape = tf.shape(read_selector(input_dict, target_dict, selector), out_type=tf.int32)
            hw = tf.stack([shape[-3], shape[-2]])
            ref = hw if ref is None else tf.where(hw[1] < ref[1], hw, ref)
        if ref is None:
            if self.skip_missing:
                return input_dict, target_dict
            raise ValueError("Crop: no image found to crop")
        state = self.sample_state(ref)
        self.apply_fn(self.apply_image, input_dict, target_dict, self.image_selectors, state=state)
        for selector in self.box_selectors:
            if self.skip_missing and not selector_exists(input_dict, target_dict, selector):
                continue
            self.apply_box_selector(input_dict, target_dict, selector, state)
        return input_dict, target_dict
