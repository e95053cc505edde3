"""Pre-processing inside exported models: raw input bands -> the model-input dict.

An exported model takes the RAW bands of every passthrough raster DataInput (float32 raw
values such as Sentinel-2 L2A reflectance, or int32 for ``dtype: INT32`` inputs, channels
in the DataInput's ``bands`` order) and applies the predict split's per-example
transforms itself, so that a client never re-implements normalisation.

Raw inputs are NHWC ``[B, H, W, C]`` for single-timestep rasters (the common case) and
``[B, T, H, W, C]`` for multi-timestep ones; inside, every raster is ``[B, T, H, W, C]``,
the batched form of the pipeline's ``[T, H, W, C]``.

Transforms are written per example (``[T, H, W, C]``); ``plan_transforms`` decides for
each one how it runs on a batch:

* channel-wise / spatial transforms that address only the trailing ``[..., H, W, C]``
  axes run unchanged on ``[B, T, H, W, C]`` (Normalize, SelectBands, Sentinel1ToDecibels,
  Resize, AdaptivePooling, Mask, Sentinel2SCLToMask, EarthDailyCloudMaskToMask, Pad with a
  fixed size, Crop with a fixed size and offset);
* Concatenate joins along time (axis 1) or channels (axis -1) of the batched tensors; one
  selection is a rename (``{sentinel2: []} -> image``);
* ElevationToSlopeAspect runs on the batch folded into time (``[B*T, H, W, 1]``);
* random augmentations (Flip, GaussianNoise, RandomTimeDropping, random Crop / Pad) are
  skipped, with a logged warning;
* Identity is dropped, Sequential is expanded;
* transforms whose class sets ``applies_to_batches = True`` (their per-example code only
  addresses trailing axes, e.g. ``OlmoEarthNormalize``) run as they are;
* any other transform raises ``ExportError`` naming it and its config position.

Selectors that address targets (``target/...``) are dropped: exported models have no
targets.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Callable

import keras
import tensorflow as tf

from rskeras.export.errors import ExportError

logger = logging.getLogger(__name__)

# Transforms whose per-example code only addresses the trailing [..., H, W, C] axes (or is
# element-wise), so that it computes the same on a [B, T, H, W, C] batch.
TRAILING_AXES_TRANSFORMS = (
    "Normalize",
    "SelectBands",
    "Sentinel1ToDecibels",
    "Resize",
    "AdaptivePooling",
    "Mask",
    "Sentinel2SCLToMask",
    "EarthDailyCloudMaskToMask",
)
RANDOM_TRANSFORMS = {
    "Flip": "random flips",
    "GaussianNoise": "random noise",
    "RandomTimeDropping": "random timestep dropping",
}
LIST_SELECTOR_ATTRS = ("selectors", "image_selectors")
SINGLE_SELECTOR_ATTRS = ("input_selector", "scl_selector", "cloud_mask_selector", "mask_selector")


@dataclasses.dataclass(frozen=True)
class RawInput:
    """One raw raster input of an exported model.

    Args:
        name: the DataInput key (the signature input name).
        bands: band names, in channel order.
        dtype: "float32" or "int32" (the DataInput dtype).
        num_timesteps: 1 for NHWC ``[B, H, W, C]`` inputs, else ``[B, T, H, W, C]``.
    """

    name: str
    bands: tuple[str, ...]
    dtype: str = "float32"
    num_timesteps: int = 1

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    def shape(self, height: int | None = None, width: int | None = None, batch: int | None = None) -> list[int | None]:
        """Signature shape: ``[B, H, W, C]`` or ``[B, T, H, W, C]``."""
        if self.num_timesteps == 1:
            return [batch, height, width, self.num_channels]
        return [batch, self.num_timesteps, height, width, self.num_channels]

    def spec(self, height: int | None = None, width: int | None = None, batch: int | None = None) -> tf.TensorSpec:
        return tf.TensorSpec(self.shape(height, width, batch), tf.as_dtype(self.dtype), name=self.name)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bands": list(self.bands), "dtype": self.dtype, "num_timesteps": self.num_timesteps}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RawInput":
        return cls(d["name"], tuple(d["bands"]), d.get("dtype", "float32"), int(d.get("num_timesteps", 1)))


@dataclasses.dataclass
class PlannedTransform:
    """How one configured transform runs inside the exported model.

    Attributes:
        where: config position, e.g. ``data.init_args.predict_config.transforms[1]``.
        name: the transform's class name.
        action: "apply" or "skip".
        reason: why it is skipped (empty when applied).
        fn: batched function ``dict -> dict`` (None when skipped).
        transform: the per-example transform without target selectors (None when
            skipped): what the data pipeline computes, for parity checks.
    """

    where: str
    name: str
    action: str
    reason: str = ""
    fn: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None
    transform: Any = None

    def describe(self) -> str:
        return f"{self.name} ({self.where})" + (f": skipped, {self.reason}" if self.action == "skip" else "")


def _is_target(selector: str) -> bool:
    return isinstance(selector, str) and selector.startswith("target/")


def _plain_key(selector: str, where: str, name: str) -> str:
    """The input-dict key of a non-nested selector (``image`` / ``input/image``)."""
    key = selector[len("input/"):] if selector.startswith("input/") else selector
    if not key or "/" in key:
        raise ExportError(f"{where}: {name} selector {selector!r} addresses a nested item; exported models only have flat raster inputs")
    return key


def _inputs_only(transform: Any) -> Any | None:
    """A shallow copy of ``transform`` without target selectors; None when nothing is left."""
    t = copy.copy(transform)
    for attr in SINGLE_SELECTOR_ATTRS:
        if _is_target(getattr(t, attr, None)):
            return None
    for attr in LIST_SELECTOR_ATTRS:
        value = getattr(t, attr, None)
        if isinstance(value, list):
            kept = [s for s in value if not _is_target(s)]
            if value and not kept:
                return None
            setattr(t, attr, kept)
    if isinstance(getattr(t, "box_selectors", None), list):
        t.box_selectors = []
    return t


def _apply_in_place(transform: Any) -> Callable[[dict], dict]:
    def fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out, _ = transform(dict(inputs), {})
        return out

    return fn


def _concatenate(transform: Any, where: str) -> Callable[[dict], dict]:
    selections = {_plain_key(s, where, "Concatenate"): list(bands) for s, bands in transform.selections.items()}
    out_key = _plain_key(transform.output_selector, where, "Concatenate")
    time_axis = getattr(transform, "concatenate_dim", 1) == 1

    def fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tensors = []
        for key, bands in selections.items():
            if key not in inputs:
                raise ExportError(f"{where}: Concatenate reads {key!r}, which is not an input of the exported model ({sorted(inputs)})")
            x = inputs[key]
            tensors.append(tf.gather(x, bands, axis=-1) if bands else x)
        if len({t.dtype for t in tensors}) > 1:
            tensors = [tf.cast(t, tf.float32) for t in tensors]
        out = dict(inputs)
        out[out_key] = tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=1 if time_axis else -1)
        return out

    return fn


def _folded(transform: Any, in_key: str, out_key: str) -> Callable[[dict], dict]:
    """Runs a per-example ``[T, H, W, C]`` transform on the batch folded into time."""

    def fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = inputs[in_key]
        shape = tf.shape(x)
        flat = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
        d, _ = transform({in_key: flat}, {})
        y = d[out_key]
        out = dict(inputs)
        out[out_key] = tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], 0))
        return out

    return fn


def _plan_one(transform: Any, where: str) -> list[PlannedTransform]:
    name = type(transform).__name__
    module = type(transform).__module__ or ""
    if getattr(type(transform), "applies_to_batches", False):
        # The transform declares that its per-example code is channel-wise / trailing-axes
        # only (e.g. rskeras.models.olmoearth_pretrain.norm.OlmoEarthNormalize).
        return [PlannedTransform(where, name, "apply", fn=_apply_in_place(transform), transform=transform)]
    if not module.startswith("rskeras.train.transforms"):
        raise ExportError(
            f"{where}: transform {module}.{name} cannot be exported (only rskeras.train.transforms.* transforms are "
            "known to run on batches inside a model); remove it from the predict transforms or apply it before export"
        )
    if name == "Identity":
        return []
    if name == "Sequential":
        planned = []
        for i, inner in enumerate(transform.transforms):
            planned.extend(_plan_one(inner, f"{where}.transforms[{i}]"))
        return planned
    if name in RANDOM_TRANSFORMS:
        return [PlannedTransform(where, name, "skip", f"random augmentation ({RANDOM_TRANSFORMS[name]})")]
    if name == "Crop" and (transform.crop_size[1] - transform.crop_size[0] != 1 or transform.offset is None):
        return [PlannedTransform(where, name, "skip", "random augmentation (random crop size or offset)")]
    if name == "Pad" and transform.size[1] - transform.size[0] != 1:
        return [PlannedTransform(where, name, "skip", "random augmentation (random pad size)")]
    inputs_only = _inputs_only(transform)
    if inputs_only is None:
        return [PlannedTransform(where, name, "skip", "it only addresses targets")]
    if name in TRAILING_AXES_TRANSFORMS or name in ("Crop", "Pad"):
        return [PlannedTransform(where, name, "apply", fn=_apply_in_place(inputs_only), transform=inputs_only)]
    if name == "Concatenate":
        if any(_is_target(s) for s in transform.selections) or _is_target(transform.output_selector):
            return [PlannedTransform(where, name, "skip", "it only addresses targets")]
        return [PlannedTransform(where, name, "apply", fn=_concatenate(transform, where), transform=transform)]
    if name == "ElevationToSlopeAspect":
        in_key = _plain_key(transform.input_selector, where, name)
        out_key = _plain_key(transform.output_selector, where, name)
        flat = copy.copy(transform)
        flat.input_selector, flat.output_selector = in_key, out_key
        return [PlannedTransform(where, name, "apply", fn=_folded(flat, in_key, out_key), transform=transform)]
    raise ExportError(
        f"{where}: transform {name} is not supported inside exported models (supported: "
        f"{', '.join(sorted(TRAILING_AXES_TRANSFORMS + ('Concatenate', 'Crop', 'Pad', 'ElevationToSlopeAspect')))}; "
        f"skipped as random: {', '.join(sorted(RANDOM_TRANSFORMS))})"
    )


def plan_transforms(transforms: list[Any] | None, where: str) -> list[PlannedTransform]:
    """How each transform of ``transforms`` (config position ``where``) runs inside an
    exported model; raises ``ExportError`` for unsupported ones."""
    planned: list[PlannedTransform] = []
    for i, transform in enumerate(transforms or []):
        planned.extend(_plan_one(transform, f"{where}[{i}]"))
    for p in planned:
        if p.action == "skip":
            logger.warning("export: %s", p.describe())
    return planned


class Preprocessing(keras.layers.Layer):
    """Applies the planned transforms to a batch of raw inputs.

    Args:
        raw_inputs: the raw inputs (``RawInput``), in signature order.
        planned: ``plan_transforms`` output (skipped entries are ignored).

    Call: dict name -> ``[B, H, W, C]`` (single timestep) or ``[B, T, H, W, C]`` raw
    tensors; returns the model-input dict of ``[B, T, H, W, C]`` tensors (the raw inputs,
    transformed, plus every item the transforms write).

    Not serializable with ``get_config`` (the transforms are Python objects); exports
    trace it into SavedModel / TFLite graphs.
    """

    def __init__(self, raw_inputs: list[RawInput], planned: list[PlannedTransform], **kwargs):
        super().__init__(**kwargs)
        self.raw_inputs = list(raw_inputs)
        self.planned = [p for p in planned if p.action == "apply"]

    def call(self, inputs):
        x = {}
        for raw in self.raw_inputs:
            if raw.name not in inputs:
                raise ExportError(f"Preprocessing: missing raw input {raw.name!r}")
            value = inputs[raw.name]
            x[raw.name] = tf.expand_dims(value, 1) if raw.num_timesteps == 1 else value
        for step in self.planned:
            try:
                # The scope names the transform in TFLite "unsupported op" errors.
                with tf.name_scope(step.name):
                    x = step.fn(x)
            except KeyError as e:
                raise ExportError(f"{step.where} ({step.name}): {e.args[0] if e.args else e}; the exported model's items are {sorted(x)}") from None
        return x
