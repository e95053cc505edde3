"""The small set of types passed between pipeline stages.

rslearn passes Python objects (``RasterImage``, ``SampleMetadata``, ``ModelContext``,
``ModelOutput``) between the dataset, the model and the task. In rskeras the same
information travels as dicts of tensors so that it can flow through ``tf.data`` and
through traced Keras functions:

* A raster is a tensor of shape ``[T, H, W, C]`` per example (``[B, T, H, W, C]`` in a
  batch): rslearn's ``C×T×H×W`` RasterImage, time-major and channels-last.
* A vector input is a dict of per-feature tensors, see :data:`VECTOR_KEYS`.
* Sample metadata is a dict of scalar tensors, see :data:`METADATA_KEYS`.
* The model context is the batched input dict itself (key -> tensor).
* A model output is a dict ``{"outputs": ..., "loss_dict": {name: scalar}}``, built by
  ``rskeras.models.component.model_output`` (models import it without reaching up here).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

# Keys of a raw vector input (one entry per feature, N features, padded nowhere):
#   bounds:      float64 [N, 4]  geometry bounds (minx, miny, maxx, maxy) in absolute
#                                window pixel coordinates
#   centroid:    float64 [N, 2]  shapely centroid of the geometry (x, y)
#   geometry_type: string [N]    GeoJSON geometry type ("Point", "Polygon", ...)
#   properties/<name>: string [N] the property value rendered as text (numbers with
#                                repr(), so float parsing is exact); "" when absent
#   has_property/<name>: bool [N] whether the feature has the property
# The property names read are the union of Task.vector_property_names() of the task.
VECTOR_KEYS = ("bounds", "centroid", "geometry_type")

# Keys of per-example metadata (rslearn SampleMetadata):
METADATA_KEYS = (
    "window_index",  # int64: index of the window in the split's window list
    "window_group",  # string
    "window_name",  # string
    "window_bounds",  # int64 [4] pixel bounds of the window
    "crop_bounds",  # int64 [4] pixel bounds of the crop (== window bounds if no crop)
    "crop_idx",  # int64
    "num_crops_in_window",  # int64
    "dataset_source",  # string ("" for None)
)


def metadata_signature() -> dict[str, tf.TensorSpec]:
    """TensorSpecs of the metadata dict of one example."""
    return {
        "window_index": tf.TensorSpec([], tf.int64),
        "window_group": tf.TensorSpec([], tf.string),
        "window_name": tf.TensorSpec([], tf.string),
        "window_bounds": tf.TensorSpec([4], tf.int64),
        "crop_bounds": tf.TensorSpec([4], tf.int64),
        "crop_idx": tf.TensorSpec([], tf.int64),
        "num_crops_in_window": tf.TensorSpec([], tf.int64),
        "dataset_source": tf.TensorSpec([], tf.string),
    }


@dataclasses.dataclass
class SampleMetadata:
    """Host-side (numpy) view of one example's metadata, used by writers and tasks'
    ``process_output``. Build it from the metadata tensors with :meth:`from_tensors`."""

    window_group: str
    window_name: str
    window_bounds: tuple[int, int, int, int]
    crop_bounds: tuple[int, int, int, int]
    crop_idx: int = 0
    num_crops_in_window: int = 1
    dataset_source: str | None = None
    window_index: int = -1

    @classmethod
    def from_tensors(cls, md: dict[str, Any], i: int | None = None) -> "SampleMetadata":
        """From a metadata dict of (numpy or eager) values; ``i`` indexes a batch."""

        def get(key):
            v = md[key]
            v = v.numpy() if hasattr(v, "numpy") else v
            return v if i is None else v[i]

        def text(key):
            v = get(key)
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)

        source = text("dataset_source") if "dataset_source" in md else ""
        return cls(
            window_group=text("window_group"),
            window_name=text("window_name"),
            window_bounds=tuple(int(x) for x in get("window_bounds")),
            crop_bounds=tuple(int(x) for x in get("crop_bounds")),
            crop_idx=int(get("crop_idx")) if "crop_idx" in md else 0,
            num_crops_in_window=int(get("num_crops_in_window"))
            if "num_crops_in_window" in md
            else 1,
            dataset_source=source or None,
            window_index=int(get("window_index")) if "window_index" in md else -1,
        )

    def to_tensors(self) -> dict[str, Any]:
        """The metadata dict form (plain Python/numpy values)."""
        import numpy as np

        return {
            "window_index": np.int64(self.window_index),
            "window_group": self.window_group,
            "window_name": self.window_name,
            "window_bounds": np.asarray(self.window_bounds, np.int64),
            "crop_bounds": np.asarray(self.crop_bounds, np.int64),
            "crop_idx": np.int64(self.crop_idx),
            "num_crops_in_window": np.int64(self.num_crops_in_window),
            "dataset_source": self.dataset_source or "",
        }
