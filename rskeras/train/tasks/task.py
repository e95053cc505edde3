"""Task base classes.

A Task turns raw inputs into targets (``process_inputs``, a ``tf.data`` map function on
one example), turns one example's model output into what a writer stores
(``process_output``, host side), builds the export post-processing layer
(``output_layer``) and describes what it exports (``export_description``), defines
metrics (``get_metrics``) and debug images (``visualize``).

Raw inputs of one example (see ``rskeras.train.model_context``): rasters are tensors
``[T, H, W, C]``; vector inputs are dicts of per-feature tensors. Metadata is a dict of
scalar tensors. Everything in ``process_inputs`` must be graph-compatible TF code (no
Python per example), because it runs inside ``Dataset.map``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.train.model_context import SampleMetadata


class Task:
    """Base class of all tasks."""

    def process_inputs(
        self, raw_inputs: dict[str, Any], metadata: dict[str, tf.Tensor], load_targets: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Computes ``(input_dict, target_dict)`` for one example (graph mode)."""
        raise NotImplementedError

    def vector_property_names(self) -> list[str]:
        """Property columns this task reads from vector inputs."""
        return []

    def target_padding_values(self) -> dict[str, Any]:
        """Padding values for variable-length target tensors when batching (default 0).

        A (nested) dict mirroring the target dict; keys left out pad with 0.
        """
        return {}

    def process_output(self, raw_output: Any, metadata: SampleMetadata) -> Any:
        """One example's (numpy) model output -> ``[C, H, W]`` numpy raster or list of Features."""
        raise NotImplementedError

    def output_layer(self) -> keras.layers.Layer:
        """Keras layer mapping the predictor's batch outputs to named export outputs."""
        raise NotImplementedError

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        """What ``output_layer()`` exports, as JSON for clients (``rskeras_export.json``;
        see ``rskeras.export.description``): ``kind``, ``outputs`` (role -> output name,
        each name prefixed with ``prefix``), ``dtypes`` (role -> dtype), ``merge`` (how a
        writer merges the outputs of a scene's crops: ``raster``, ``point`` or ``boxes``),
        ``raster`` (the role a raster merge writes) and what a client needs to read the
        outputs (class names, property name, ...)."""
        raise NotImplementedError(f"{type(self).__name__} has no export description")

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Metric name -> Keras metric updated with ``update_state(outputs, targets)``."""
        return {}

    def visualize(self, input_dict: dict[str, Any], target_dict: dict[str, Any] | None, output: Any) -> dict[str, np.ndarray]:
        """Debug images, name -> H×W×3 uint8."""
        raise NotImplementedError


def export_outputs(prefix: str, dtypes: dict[str, str]) -> dict[str, Any]:
    """The ``outputs`` (role -> ``prefix + role``) and ``dtypes`` entries of an export
    description whose output names are the roles."""
    return {"outputs": {role: f"{prefix}{role}" for role in dtypes}, "dtypes": dict(dtypes)}


class BasicTask(Task):
    """Task with the visualisation options shared by the single tasks.

    Args:
        image_bands: channel indexes of ``input_dict["image"]`` (first timestep) shown by
            ``visualize`` (default (0, 1, 2)).
        remap_values: optional ``[[lo, hi], [lo2, hi2]]`` linear remap of pixel values
            for visualisation, then clipped to 0..255.
    """

    def __init__(self, image_bands: tuple[int, ...] | list[int] = (0, 1, 2), remap_values: list[list[float]] | None = None):
        self.image_bands = tuple(image_bands)
        self.remap_values = remap_values

    @staticmethod
    def window_valid_mask(height: Any, width: Any, metadata: dict[str, Any]) -> tf.Tensor:
        """``[H, W]`` float32 mask, 1 where the crop pixel lies inside the window (graph).

        rslearn ``BasicTask._get_window_valid_mask``: the intersection of
        ``metadata["crop_bounds"]`` and ``metadata["window_bounds"]``, offset by the crop
        origin, is valid; pixels of an overhanging crop outside the window are not.
        """
        crop = tf.cast(metadata["crop_bounds"], tf.int64)
        window = tf.cast(metadata["window_bounds"], tf.int64)
        x0 = tf.maximum(window[0], crop[0]) - crop[0]
        y0 = tf.maximum(window[1], crop[1]) - crop[1]
        x1 = tf.minimum(window[2], crop[2]) - crop[0]
        y1 = tf.minimum(window[3], crop[3]) - crop[1]
        cols = tf.range(tf.cast(width, tf.int64))
        rows = tf.range(tf.cast(height, tf.int64))
        in_x = (cols >= x0) & (cols < x1)
        in_y = (rows >= y0) & (rows < y1)
        return tf.cast(in_y[:, None] & in_x[None, :], tf.float32)

    def visualize(self, input_dict: dict[str, Any], target_dict: dict[str, Any] | None, output: Any) -> dict[str, np.ndarray]:
        """``{"image": H×W×3 uint8}`` of ``input_dict["image"]`` (see :meth:`visualize_image`)."""
        return {"image": self.visualize_image(input_dict["image"])}

    def visualize_image(self, image: np.ndarray) -> np.ndarray:
        """``[T, H, W, C]`` (or ``[H, W, C]``) image -> H×W×3 uint8 of ``image_bands``."""
        image = np.asarray(image)
        if image.ndim == 4:
            image = image[0]
        array = image[:, :, list(self.image_bands)].astype(np.float64)
        if self.remap_values:
            (lo, hi), (lo2, hi2) = self.remap_values
            array = (array - lo) * (hi2 - lo2) / (hi - lo) + lo2
        return np.clip(array, 0, 255).astype(np.uint8)


# ---- target helpers shared by the tasks (graph code) -----------------------------------


def window_label(metadata: dict[str, tf.Tensor]) -> tf.Tensor:
    """``<group>/<name>`` of the example's window (a string scalar, for assertion messages)."""
    return tf.strings.join([metadata["window_group"], "/", metadata["window_name"]])


def unknown_class_message(task: str, metadata: dict[str, tf.Tensor], property_name: str, value: tf.Tensor, classes: list[str]) -> tf.Tensor:
    """The message of a task's assertion on a label with an unknown class (one string:
    window, property, value, the classes and the way out)."""
    return tf.strings.join(
        [
            f"{task}: window ",
            window_label(metadata),
            f", input targets: value '",
            value,
            f"' of property '{property_name}' is not one of {list(classes)} (set skip_unknown_categories to skip such features)",
        ]
    )


def property_found_check(task: str, metadata: dict[str, tf.Tensor], property_name: str, found: tf.Tensor) -> tf.Operation:
    """The assertion that some feature of the window has ``property_name`` (for tasks
    without ``allow_invalid``): its message names the task, the window and the way out."""
    message = tf.strings.join(
        [
            f"{task}: window ",
            window_label(metadata),
            f", input targets: no feature with property '{property_name}' (set allow_invalid to mark such examples invalid)",
        ]
    )
    return tf.debugging.Assert(found, [message])


def class_ids_from_text(values: tf.Tensor, classes: list[str], read_class_id: bool) -> tf.Tensor:
    """Property texts ``[N]`` -> class ids int32 ``[N]`` (graph).

    With ``read_class_id`` the text is parsed as a number and truncated toward zero
    (Python ``int(v)``); otherwise the id is the index of the text in ``classes``, -1 when
    absent.
    """
    if read_class_id:
        return tf.cast(tf.strings.to_number(values, tf.float64), tf.int32)
    names = tf.constant(list(classes), tf.string)
    eq = tf.equal(values[:, None], names[None, :])
    index = tf.argmax(tf.cast(eq, tf.int32), axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(eq, axis=1), index, -1)


def first_true_index(mask: tf.Tensor) -> tf.Tensor:
    """Index of the first True of a bool ``[N]`` vector, N when there is none (graph)."""
    return tf.argmax(tf.cast(tf.concat([mask, [True]], 0), tf.int32), output_type=tf.int32)


def single_band_raster(raw: Any, task: str) -> tf.Tensor:
    """``[T, H, W, C]`` raster with T = C = 1 -> ``[H, W]`` (graph)."""
    if isinstance(raw, dict):
        raise ValueError(f"{task}: the 'targets' input must be a raster, got a vector input")
    raw = tf.convert_to_tensor(raw)
    if len(raw.shape) != 4:
        raise ValueError(f"{task}: the 'targets' raster must be [T, H, W, C], got shape {tuple(raw.shape)}")
    t, c = raw.shape[0], raw.shape[3]
    if (t is not None and t != 1) or (c is not None and c != 1):
        raise ValueError(f"{task}: the 'targets' raster must have one band and one timestep, got shape {tuple(raw.shape)}")
    checks = []
    if t is None or c is None:
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(raw)[0] * tf.shape(raw)[3], 1, message=f"{task}: targets must have one band and one timestep"
            )
        )
    with tf.control_dependencies(checks):
        return raw[0, :, :, 0]


def raster_target(hw: tf.Tensor) -> tf.Tensor:
    """``[H, W]`` -> the raster target form ``[1, H, W, 1]``."""
    return hw[None, :, :, None]


def batch_hw(target: tf.Tensor) -> tf.Tensor:
    """Batched raster target ``[B, 1, H, W, 1]`` (or ``[B, H, W]``) -> ``[B, H, W]``."""
    target = tf.convert_to_tensor(target)
    if len(target.shape) == 5:
        return target[:, 0, :, :, 0]
    if len(target.shape) == 4:
        return target[..., 0] if target.shape[-1] == 1 else target[:, 0]
    return target


def save_visualizations(images: dict[str, np.ndarray], directory: str, stem: str) -> list[str]:
    """Writes ``visualize`` images as ``<directory>/<stem>_<name>.png`` (PNG via
    ``tf.io.encode_png``); returns the paths. rslearn names the stem
    ``<window_name>_<crop_x0>_<crop_y0>``. 2-D images are written as grayscale."""
    import os

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, image in images.items():
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.dtype != np.uint8:
            raise ValueError(f"visualization {name!r} must be uint8, got {array.dtype}")
        path = os.path.join(directory, f"{stem}_{name}.png")
        tf.io.write_file(path, tf.io.encode_png(array))
        paths.append(path)
    return paths


def draw_label_text(image: np.ndarray, text: str) -> np.ndarray:
    """Draws ``text`` (white on a black box) at the top-left of an H×W×3 uint8 image, as
    rslearn's classification/regression ``visualize`` does. Pillow is optional in rskeras:
    without it the image is returned unchanged."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - depends on the environment
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(pil)
    box = draw.textbbox(xy=(0, 0), text=text, font_size=12)
    draw.rectangle(xy=box, fill=(0, 0, 0))
    draw.text(xy=(0, 0), text=text, font_size=12, fill=(255, 255, 255))
    return np.array(pil)
