"""EarthDailyCloudMaskToMask: a validity mask from an EarthDaily cloud-mask band."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.sentinel2 import values_to_mask
from rskeras.train.transforms.transform import Transform, read_selector, selector_exists, write_selector


class EarthDailyCloudMaskToMask(Transform):
    """Writes an int32 mask that is 1 where the cloud-mask value is a clear value.

    EarthDaily EDA cloud-mask values: 0 nodata, 1 clear, 2 cloud, 3 cloud shadow,
    4 thin cloud.

    Args:
        cloud_mask_selector: the one-band cloud-mask image (default "cloud_mask").
        output_selector: where to write the mask (default "mask").
        clear_values: values counted as clear (default [1]).
        skip_missing: do nothing when the cloud mask is missing.

    Call-time: ``[T, H, W, 1]`` -> int32 ``[T, H, W, 1]``.
    """

    DEFAULT_CLEAR_VALUES = [1]

    def __init__(self, cloud_mask_selector: str = "cloud_mask", output_selector: str = "mask", clear_values: list[int] | None = None, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        self.cloud_mask_selector = cloud_mask_selector
        self.output_selector = output_selector
        self.clear_values = list(self.DEFAULT_CLEAR_VALUES if clear_values is None else clear_values)

    def forward(self, input_dict, target_dict):
        if self.skip_missing and not selector_exists(input_dict, target_dict, self.cloud_mask_selector):
            return input_dict, target_dict
        cloud = read_selector(input_dict, target_dict, self.cloud_mask_selector)
        mask = tf.cast(values_to_mask(cloud, self.clear_values, "EarthDailyCloudMaskToMask"), tf.int32)
        write_selector(input_dict, target_dict, self.output_selector, mask)
        return input_dict, target_dict
