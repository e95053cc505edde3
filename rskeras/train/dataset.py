"""What the trainer reads per window: DataInput, SplitConfig, window selection and reading.

This module is the host-side (numpy) half of the input pipeline; ``data_module`` wraps it
in ``tf.data``. Semantics follow rslearn's ``rslearn.train.dataset`` and
``rslearn.train.all_crops_dataset`` (spec dataset_format.md §6-7).

The unit of host-side work is a *window unit*: the raw data of one window over a pixel
*region* (the crop itself, the window, or the window grown by the overhang of random crops
larger than the window), for one or all candidate item groups of every input. The
``tf.data`` graph then selects the item group(s) and slices the crop out of the region
(``data_module``). Reading only the chosen groups over the crop (no cache) and reading all
groups over the whole region once (input cache) therefore share one graph.

Unit structure (numpy, see :meth:`ModelDataset.unit_signature`)::

    {"ok": bool,                       # False: a bad window skipped (skip_bad_windows)
     "window_index": int64,
     "region": int64 [4],              # pixel bounds read (window grid, factor 1)
     "crop_bounds": int64 [4],         # the crop chosen on the host (no-cache path)
     "choice": int32 [num_inputs],     # item group chosen on the host (-1: all)
     "crops": int64 [K, 4],            # all crops of the window (load_all_crops)
     "inputs": {key: raster or vector unit}}
    raster unit: {"image": [sum T, H, W, C] (region at the input's resolution),
                  "group_t": int32 [G + 1] (T offsets of the G item groups),
                  "timestamps": float64 [sum T, 2] (POSIX seconds, NaN unknown)}
    vector unit: features_to_tensors(...) + {"group": int32 [N], "num_groups": int32,
                  "crop_mask": bool [K, N] (feature intersects crop k; all-crops only)}
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import warnings
from typing import Any

import numpy as np
import shapely

from rskeras.config.dataset import DType, LayerConfig
from rskeras.dataset.dataset import Dataset
from rskeras.dataset.window import Window, WindowError, parse_layer_dir_name, parse_time
from rskeras.models.time_inputs import TIMESTAMPS_SUFFIX
from rskeras.train.model_context import SampleMetadata
from rskeras.utils.feature import Feature, features_to_tensors, utf8_array
from rskeras.utils.geometry import PixelBounds, ResolutionFactor
from rskeras.utils.raster_format import RasterReadError, read_geotiff_coverage, read_timestep_metadata
from rskeras.utils.vector_format import VectorReadError, geojson_coordinate_mode, read_features_for_window

logger = logging.getLogger(__name__)


class DataReadError(ValueError):
    """Reading one input of one window failed; the message names window, input and layer."""


# Warnings about one kind of suspicious read are logged for this many windows, then at
# every power of ten (with the running count).
WARN_FIRST = 5


class ReadChecks:
    """The checks made on raster values as they are read, and what they found
    (shared by the reading threads of one split).

    * dtype: a GeoTIFF whose values do not fit the band set's dtype in config.json (e.g.
      float64 values in the millions for ``uint16``) is an error; a different but fitting
      dtype is a warning (once per layer and dtype).
    * coverage: a GeoTIFF that covers none of the window (another CRS, or a transform
      elsewhere: the input reads as nodata) is a warning naming the window and the
      fraction covered; with ``strict`` any window not fully covered is an error.
    * non-finite pixels (NaN, +-Inf): an error with ``check_nan``; otherwise the windows
      holding them are recorded (:attr:`non_finite`), so that a non-finite loss can
      name them.
    """

    def __init__(self, check_nan: bool = False, strict: bool = False):
        self.check_nan = check_nan
        self.strict = strict
        self.non_finite: dict[str, int] = {}
        self.uncovered: dict[str, float] = {}
        self._dtype_warned: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def dtype(self, where: str, path: str, layer: str, data: np.ndarray, band_set) -> None:
        expected = np.dtype(band_set.numpy_dtype)
        if data.dtype == expected or data.size == 0:
            return
        if np.issubdtype(expected, np.integer):
            info = np.iinfo(expected)
            finite = bool(np.isfinite(data).all()) if data.dtype.kind == "f" else True
            lo, hi = (data.min(), data.max()) if finite else (None, None)
            fits = finite and lo >= info.min and hi <= info.max and (data.dtype.kind != "f" or bool((data == np.round(data)).all()))
        else:
            finite_values = data[np.isfinite(data)] if data.dtype.kind == "f" else data
            lo, hi = (finite_values.min(), finite_values.max()) if finite_values.size else (0, 0)
            fits = bool(np.abs(finite_values).max(initial=0) <= np.finfo(expected).max)
        if not fits:
            span = f"values {lo:g} to {hi:g}" if lo is not None else "non-finite values"
            raise DataReadError(
                f"{where}: {path} stores {data.dtype.name} pixels but config.json declares band set "
                f"{band_set.bands} as {expected.name}: {span} do not fit {expected.name} (wrong file, or wrong dtype in config.json)"
            )
        key = (layer, str(band_set.bands), data.dtype.name)
        with self._lock:
            if key in self._dtype_warned:
                return
            self._dtype_warned.add(key)
        logger.warning(
            "%s: %s stores %s pixels, config.json declares %s for band set %s (values fit; further windows of this layer not reported)",
            where,
            path,
            data.dtype.name,
            expected.name,
            band_set.bands,
        )

    def coverage(self, where: str, window_label: str, path: str, fraction: float | None, window_crs: str, file_crs: Any) -> None:
        if fraction is None or fraction >= 1.0 - 1e-9:
            return
        detail = f"{path} covers {fraction:.0%} of the window (file CRS {file_crs}, window CRS {window_crs}): the rest reads as nodata"
        if self.strict:
            raise DataReadError(f"{where}: {detail} (strict is set)")
        if fraction > 0:
            logger.debug("%s: %s", where, detail)
            return
        with self._lock:
            self.uncovered[window_label] = fraction
            count = len(self.uncovered)
        if count <= WARN_FIRST or _power_of_ten(count):
            logger.warning("%s: %s [%d window(s) so far; set strict to make this an error]", where, detail, count)

    def non_finite_values(self, where: str, window_label: str, image: np.ndarray) -> None:
        if image.dtype.kind != "f" or image.size == 0:
            return
        finite = np.isfinite(image)
        if finite.all():
            return
        nan = int(np.isnan(image).sum())
        pos = int(np.isposinf(image).sum())
        neg = int(np.isneginf(image).sum())
        if self.check_nan:
            parts = [f"{n} {name}" for n, name in ((nan, "NaN"), (pos, "+Inf"), (neg, "-Inf")) if n]
            raise DataReadError(f"{where}: {', '.join(parts)} pixel values (check_nan is set)")
        with self._lock:
            self.non_finite[window_label] = self.non_finite.get(window_label, 0) + nan + pos + neg


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


# ---- DataInput --------------------------------------------------------------------------


class DataInput:
    """One piece of data read from every window (rslearn ``DataInput``).

    Args:
        data_type: "raster" or "vector".
        layers: item-group specifiers ("s2", "s2.1"), or layer names with
            ``load_all_item_groups``.
        bands: raster bands to read, in output channel order.
        use_all_bands_in_order_of_band_set_idx: alternative to ``bands``: all bands of that
            band set of the (first) layer, in config order.
        required: drop windows lacking this input (default true). A window lacking an
            optional input gets an empty value: a raster with T=0 or no features.
        passthrough: copy the raw value into the model input dict.
        is_target: this input is a label (dropped when the split has ``skip_targets``).
        dtype: FLOAT32 (default) or INT32; other types raise ValueError (rslearn raises
            the same error, but only when the first example is read).
        load_all_layers: read every available entry (stacked along time) instead of one
            random entry; windows then need all entries.
        load_all_item_groups: expand each layer name into all its completed item groups.
        resolution_factor: read at window resolution × this factor, e.g.
            ``{class_path: rslearn.utils.geometry.ResolutionFactor, init_args:
            {denominator: 2}}`` for half resolution.
        resampling: accepted for compatibility; reads always use nearest neighbour (as in
            rslearn, where the option is stored but unused).
        load_timestamps: rskeras extension: also provide ``<key>_timestamps``, float64
            ``[T, 2]`` (start, end) POSIX seconds of every timestep (NaN when unknown), in
            the raw inputs (and the model inputs when ``passthrough``).
    """

    def __init__(
        self,
        data_type: str,
        layers: list[str],
        bands: list[str] | None = None,
        use_all_bands_in_order_of_band_set_idx: int | None = None,
        required: bool = True,
        passthrough: bool = False,
        is_target: bool = False,
        dtype: DType = DType.FLOAT32,
        load_all_layers: bool = False,
        load_all_item_groups: bool = False,
        resolution_factor: ResolutionFactor | None = None,
        resampling: Any = None,
        load_timestamps: bool = False,
    ):
        if data_type not in ("raster", "vector"):
            raise ValueError(f"data_type must be 'raster' or 'vector', got {data_type!r}")
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
        if bands is not None and use_all_bands_in_order_of_band_set_idx is not None:
            raise ValueError("only one of bands and use_all_bands_in_order_of_band_set_idx should be set")
        if data_type == "raster" and bands is None and use_all_bands_in_order_of_band_set_idx is None:
            raise ValueError("for raster DataInputs, one of bands and use_all_bands_in_order_of_band_set_idx must be set")
        if isinstance(dtype, str):
            if dtype.upper() in DType.__members__:
                dtype = DType[dtype.upper()]
            else:
                raise ValueError(f"dtype must be FLOAT32 or INT32, got {dtype!r}")
        if dtype not in (DType.FLOAT32, DType.INT32):
            raise ValueError(f"DataInput dtype must be FLOAT32 or INT32 (the types rslearn can read), got {dtype.name}")
        for entry in layers:
            if load_all_item_groups and "." in entry:
                raise ValueError(f"with load_all_item_groups, layers are layer names without '.<group>', got {entry!r}")
            parse_layer_dir_name(entry)
        self.data_type = data_type
        self.layers = list(layers)
        self.bands = list(bands) if bands is not None else None
        self.use_all_bands_in_order_of_band_set_idx = use_all_bands_in_order_of_band_set_idx
        self.required = required
        self.passthrough = passthrough
        self.is_target = is_target
        self.dtype = dtype
        self.load_all_layers = load_all_layers
        self.load_all_item_groups = load_all_item_groups
        self.resolution_factor = resolution_factor or ResolutionFactor()
        self.resampling = resampling
        self.load_timestamps = load_timestamps

    def resolve_bands(self, dataset: Dataset) -> list[str]:
        """The band list read for a raster input (resolving the band-set-index form)."""
        if self.bands is not None:
            return self.bands
        layer_name = parse_layer_dir_name(self.layers[0])[0]
        layer = dataset.layers.get(layer_name)
        if layer is None:
            raise ValueError(f"DataInput: layer {layer_name!r} is not in the dataset config")
        idx = self.use_all_bands_in_order_of_band_set_idx
        if idx is None or idx < 0 or idx >= len(layer.band_sets):
            raise ValueError(
                f"DataInput: invalid use_all_bands_in_order_of_band_set_idx={idx} for layer {layer_name!r}; "
                f"expected a value in [0, {len(layer.band_sets) - 1}]"
            )
        return list(layer.band_sets[idx].bands)

    def numpy_dtype(self):
        return self.dtype.numpy_dtype

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (used in cache keys)."""
        rf = self.resolution_factor
        return {
            "data_type": self.data_type,
            "layers": self.layers,
            "bands": self.bands,
            "band_set_idx": self.use_all_bands_in_order_of_band_set_idx,
            "required": self.required,
            "is_target": self.is_target,
            "dtype": self.dtype.name,
            "load_all_layers": self.load_all_layers,
            "load_all_item_groups": self.load_all_item_groups,
            "resolution_factor": [rf.numerator, rf.denominator],
        }


# ---- SplitConfig ------------------------------------------------------------------------


class SplitConfig:
    """Per-split window selection and iteration options (rslearn ``SplitConfig``).

    Args:
        groups: only windows in these groups.
        names: only windows with these names.
        tags: window ``options`` must contain each key; a truthy value must also match
            (falsy values such as "", 0, false or null mean "key exists", as in rslearn).
        num_samples: keep the first N windows after ordering by SHA-256 of the name.
        transforms: transforms applied per example (replace, never extend, the default).
        sampler: a sampler factory (RandomSamplerFactory / WeightedRandomSamplerFactory).
        crop_size: int or [width, height]: read crops instead of whole windows.
        overlap_pixels: sliding-window overlap (requires load_all_crops when > 0).
        load_all_crops: iterate over all crops of every window.
        skip_targets: drop ``is_target`` inputs; tasks produce empty targets.
        output_layer_name_skip_inference_if_exists: drop windows whose group 0 of this
            layer is completed.
        num_patches: accepted for compatibility (unused, as in rslearn).
        patch_size, overlap_ratio, load_all_patches: deprecated spellings of crop_size,
            overlap_pixels (``round(crop width * ratio)``) and load_all_crops; giving both
            spellings is an error.
    """

    def __init__(
        self,
        groups: list[str] | None = None,
        names: list[str] | None = None,
        tags: dict[str, Any] | None = None,
        num_samples: int | None = None,
        num_patches: int | None = None,
        transforms: list[Any] | None = None,
        sampler: Any | None = None,
        crop_size: int | list[int] | None = None,
        overlap_pixels: int | None = None,
        load_all_crops: bool | None = None,
        skip_targets: bool | None = None,
        output_layer_name_skip_inference_if_exists: str | None = None,
        patch_size: int | list[int] | None = None,
        overlap_ratio: float | None = None,
        load_all_patches: bool | None = None,
    ):
        for name, size in (("crop_size", crop_size), ("patch_size", patch_size)):
            if size is not None and not isinstance(size, int):
                if len(size) != 2:
                    raise ValueError(f"{name} must be an int or [width, height], got {size!r}")
        self.groups = groups
        self.names = names
        self.tags = tags
        self.num_samples = num_samples
        self.num_patches = num_patches
        self.transforms = transforms
        self.sampler = sampler
        self.skip_targets = skip_targets
        self.output_layer_name_skip_inference_if_exists = output_layer_name_skip_inference_if_exists
        self._crop_size = crop_size
        self._patch_size = patch_size
        self._overlap_pixels = overlap_pixels
        self._overlap_ratio = overlap_ratio
        self._load_all_crops = load_all_crops
        self._load_all_patches = load_all_patches

    def merged(self, other: "SplitConfig") -> "SplitConfig":
        """This config overridden by the "set" values of ``other`` (truthy for
        groups/names/tags/num_samples/num_patches/transforms/sampler, non-null for the
        rest). Not validated: see :meth:`merge_and_validate`."""
        out = SplitConfig()
        out.__dict__.update(self.__dict__)
        for attr in ("groups", "names", "tags", "num_samples", "num_patches", "transforms", "sampler"):
            if getattr(other, attr):
                setattr(out, attr, getattr(other, attr))
        for attr in (
            "skip_targets",
            "output_layer_name_skip_inference_if_exists",
            "_crop_size",
            "_patch_size",
            "_overlap_pixels",
            "_overlap_ratio",
            "_load_all_crops",
            "_load_all_patches",
        ):
            if getattr(other, attr) is not None:
                setattr(out, attr, getattr(other, attr))
        return out

    @staticmethod
    def merge_and_validate(configs: list["SplitConfig"]) -> "SplitConfig":
        """Merges configs (later ones override earlier ones) and validates the result."""
        if not configs:
            return SplitConfig()
        result = configs[0]
        for config in configs[1:]:
            result = result.merged(config)
        return result.validate()

    def validate(self) -> "SplitConfig":
        """Checks deprecated/new spellings and option combinations (after merging)."""
        for new, old in (("crop_size", "patch_size"), ("overlap_pixels", "overlap_ratio"), ("load_all_crops", "load_all_patches")):
            if getattr(self, "_" + old) is not None:
                warnings.warn(f"{old} is deprecated, use {new} instead", FutureWarning, stacklevel=3)
            if getattr(self, "_" + new) is not None and getattr(self, "_" + old) is not None:
                raise ValueError(f"Cannot specify both {new} and {old}")
        if self._overlap_pixels is not None and self._overlap_pixels < 0:
            raise ValueError(f"overlap_pixels must be non-negative, got {self._overlap_pixels}")
        if self._overlap_ratio is not None and self.get_crop_size() is None:
            raise ValueError("overlap_ratio requires crop_size to be set")
        overlap = self.get_overlap_pixels()
        if overlap > 0 and not self.get_load_all_crops():
            raise ValueError(f"overlap_pixels={overlap} requires load_all_crops (overlap is only used for sliding-window crops)")
        if self.get_load_all_crops() and self.get_crop_size() is None:
            raise ValueError("load_all_crops requires crop_size")
        size = self.get_crop_size()
        if size is not None:
            if size[0] <= 0 or size[1] <= 0:
                raise ValueError(f"crop_size must be positive, got {list(size)}")
            if self.get_load_all_crops() and (overlap >= size[0] or overlap >= size[1]):
                raise ValueError(f"overlap_pixels={overlap} must be smaller than crop_size {list(size)}")
        return self

    def get_crop_size(self) -> tuple[int, int] | None:
        """(width, height) of crops, or None."""
        size = self._crop_size if self._crop_size is not None else self._patch_size
        if size is None:
            return None
        if isinstance(size, int):
            return size, size
        return int(size[0]), int(size[1])

    def get_overlap_pixels(self) -> int:
        if self._overlap_pixels is not None:
            return self._overlap_pixels
        if self._overlap_ratio is not None:
            size = self.get_crop_size()
            if size is None:
                raise ValueError("overlap_ratio requires crop_size to be set")
            return round(size[0] * self._overlap_ratio)
        return 0

    def get_load_all_crops(self) -> bool:
        if self._load_all_crops is not None:
            return bool(self._load_all_crops)
        return bool(self._load_all_patches)

    def get_skip_targets(self) -> bool:
        return self.skip_targets is True

    def get_output_layer_name_skip_inference_if_exists(self) -> str | None:
        return self.output_layer_name_skip_inference_if_exists

    def describe(self) -> dict[str, Any]:
        """JSON-able selection/cropping options (used in cache keys)."""
        return {
            "groups": self.groups,
            "names": self.names,
            "tags": self.tags,
            "num_samples": self.num_samples,
            "crop_size": self.get_crop_size(),
            "overlap": self.get_overlap_pixels(),
            "load_all_crops": self.get_load_all_crops(),
            "skip_targets": self.get_skip_targets(),
            "skip_if_exists": self.output_layer_name_skip_inference_if_exists,
        }


# ---- samplers ---------------------------------------------------------------------------


class RandomSamplerFactory:
    """Random order of examples, redrawn every epoch (rslearn ``RandomSamplerFactory``).

    Args:
        replacement: sample with replacement (default false).
        num_samples: examples per epoch (default: the dataset size).
    """

    def __init__(self, replacement: bool = False, num_samples: int | None = None):
        if num_samples is not None and num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.replacement = replacement
        self.num_samples = num_samples

    def example_weights(self, dataset: "ModelDataset") -> np.ndarray | None:
        return None

    def draw(self, n: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
        """Indices of one epoch."""
        count = self.num_samples or n
        if self.replacement:
            return rng.integers(0, n, size=count)
        # Without replacement: whole permutations, then a partial one (as torch).
        parts = [rng.permutation(n) for _ in range(count // n)]
        if count % n:
            parts.append(rng.permutation(n)[: count % n])
        return np.concatenate(parts) if parts else np.zeros((0,), np.int64)


class WeightedRandomSamplerFactory:
    """Samples examples with probability proportional to ``window.options[option_key]``
    (rslearn ``WeightedRandomSamplerFactory``).

    Args:
        option_key: window option holding the weight.
        num_samples: examples per epoch.
        replacement: sample with replacement (default true).
    """

    def __init__(self, option_key: str, num_samples: int, replacement: bool = True):
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.option_key = option_key
        self.num_samples = num_samples
        self.replacement = replacement

    def example_weights(self, dataset: "ModelDataset") -> np.ndarray:
        out = []
        for w in dataset.windows:
            if self.option_key not in w.options:
                raise ValueError(f"WeightedRandomSamplerFactory: window {w.label} has no option {self.option_key!r}")
            try:
                out.append(float(w.options[self.option_key]))
            except (TypeError, ValueError):
                raise ValueError(
                    f"WeightedRandomSamplerFactory: window {w.label} option {self.option_key!r} is not a number: "
                    f"{w.options[self.option_key]!r}"
                ) from None
        weights = np.asarray(out, np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"WeightedRandomSamplerFactory: weights from option {self.option_key!r} must be finite, >= 0, not all 0")
        # Examples of a window share its weight (one example per window unless all crops).
        return weights[[wi for wi, _, _, _ in dataset.examples]]

    def draw(self, n: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
        assert weights is not None
        p = weights / weights.sum()
        if not self.replacement and self.num_samples > int((p > 0).sum()):
            raise ValueError(
                f"WeightedRandomSamplerFactory: num_samples={self.num_samples} without replacement exceeds the "
                f"{int((p > 0).sum())} examples with non-zero weight"
            )
        return rng.choice(n, size=self.num_samples, replace=self.replacement, p=p)


# ---- window selection -------------------------------------------------------------------


def matches_tags(window: Window, tags: dict[str, Any] | None) -> bool:
    """rslearn tag semantics: each key must exist; truthy values must also be equal."""
    for key, value in (tags or {}).items():
        if key not in window.options:
            return False
        if value and window.options[key] != value:
            return False
    return True


def is_input_available(data_input: DataInput, completed: set[tuple[str, int]]) -> bool:
    """Availability rule of spec §7.2 step 3 (``load_all_item_groups`` checks group 0)."""
    flags = []
    for entry in data_input.layers:
        key = (entry, 0) if data_input.load_all_item_groups else parse_layer_dir_name(entry)
        flags.append(key in completed)
    return all(flags) if data_input.load_all_layers else any(flags)


def window_sort_key(window: Window) -> str:
    return hashlib.sha256(window.name.encode()).hexdigest()


def select_windows(dataset: Dataset, inputs: dict[str, DataInput], split: SplitConfig) -> list[Window]:
    """Windows of a split: groups/names, tags, availability, skip-if-output, SHA-256
    order, num_samples (spec §7.2)."""
    return select_windows_and_layers(dataset, inputs, split)[0]


def select_windows_and_layers(
    dataset: Dataset,
    inputs: dict[str, DataInput],
    split: SplitConfig,
    skip_bad: bool = False,
    bad: list[tuple[str, str]] | None = None,
    shard: Any = None,
    stats: dict[str, int] | None = None,
) -> tuple[list[Window], list[set[tuple[str, int]]]]:
    """:func:`select_windows` plus the completed item groups of every window; with
    ``skip_bad`` malformed windows are left out (and appended to ``bad``). ``shard`` (a
    ``rskeras.train.sharding.Shard``) keeps only its windows, after every other rule;
    ``stats`` receives the counts ``skipped_completed`` and ``other_shards``."""
    windows = [w for w in dataset.load_windows(split.groups, split.names, skip_bad=skip_bad, bad=bad) if matches_tags(w, split.tags)]
    skip_layer = split.get_output_layer_name_skip_inference_if_exists()
    out: list[tuple[Window, set[tuple[str, int]]]] = []
    missing: dict[str, int] = {}
    has_output = 0
    for window in windows:
        try:
            completed = set(window.completed_layers())
        except WindowError as e:
            if not skip_bad:
                raise
            logger.warning("skipping window %s: %s", window.label, e)
            if bad is not None:
                bad.append((window.label, str(e)))
            continue
        unavailable = [k for k, di in inputs.items() if di.required and not is_input_available(di, completed)]
        if unavailable:
            missing[unavailable[0]] = missing.get(unavailable[0], 0) + 1
            continue
        if skip_layer and (skip_layer, 0) in completed:
            has_output += 1
            continue
        out.append((window, completed))
    for key, count in sorted(missing.items()):
        logger.info("skipped %d windows due to missing input '%s'", count, key)
    if has_output:
        logger.info("skipped %d windows due to existing output layer %s", has_output, skip_layer)
    out.sort(key=lambda wc: window_sort_key(wc[0]))
    if split.num_samples:
        out = out[: split.num_samples]
    other_shards = 0
    if shard is not None:
        kept = [wc for wc in out if shard.contains(wc[0].group, wc[0].name)]
        other_shards = len(out) - len(kept)
        logger.info("shard %s: %d of %d windows", shard, len(kept), len(out))
        out = kept
    if stats is not None:
        stats.update(skipped_completed=has_output, other_shards=other_shards)
    return [w for w, _ in out], [c for _, c in out]


def crop_origins(start: int, end: int, size: int, overlap: int) -> list[int]:
    """Sliding-window crop origins along one axis (spec §7.5):
    ``[a] + range(a + s, b - k, s)`` plus ``b - k`` when ``b - k > a`` (s = k - o)."""
    step = size - overlap
    if step <= 0:
        raise ValueError(f"crop size {size} must exceed overlap {overlap}")
    origins = [start] + list(range(start + step, end - size, step))
    if end - size > start:
        origins.append(end - size)
    return origins


def all_crop_bounds(bounds: PixelBounds, crop_size: tuple[int, int], overlap: int) -> list[PixelBounds]:
    """All crops of a window, column-major (for each column origin, every row origin)."""
    xs = crop_origins(bounds[0], bounds[2], crop_size[0], overlap)
    ys = crop_origins(bounds[1], bounds[3], crop_size[1], overlap)
    return [(x, y, x + crop_size[0], y + crop_size[1]) for x in xs for y in ys]


def random_crop_bounds(bounds: PixelBounds, crop_size: tuple[int, int], rng: random.Random) -> PixelBounds:
    """Random crop (spec §7.4); crops larger than the window overhang it."""
    out = []
    for axis, k in ((0, crop_size[0]), (1, crop_size[1])):
        n = bounds[axis + 2] - bounds[axis]
        offset = rng.randint(0, n - k) if k <= n else rng.randint(n - k, 0)
        out.append(bounds[axis] + offset)
    return (out[0], out[1], out[0] + crop_size[0], out[1] + crop_size[1])


def random_crop_region(bounds: PixelBounds, crop_size: tuple[int, int] | None) -> PixelBounds:
    """Union of all random crops of a window: the window grown by the overhang of crops
    larger than it."""
    if crop_size is None:
        return bounds
    px = max(crop_size[0] - (bounds[2] - bounds[0]), 0)
    py = max(crop_size[1] - (bounds[3] - bounds[1]), 0)
    return (bounds[0] - px, bounds[1] - py, bounds[2] + px, bounds[3] + py)


def scale_bounds(rf: ResolutionFactor, bounds: PixelBounds, strict: bool = True) -> PixelBounds:
    """``bounds`` on the grid of the resolution factor (rslearn ``multiply_bounds``).

    With a denominator d, ``strict`` requires width/height divisible by d (rslearn's
    rule) and floor-divides every coordinate; otherwise the scaled bounds are grown to
    cover ``bounds`` (floor of the start, ceiling of the end).
    """
    if rf.denominator > 1:
        d = rf.denominator
        w, h = bounds[2] - bounds[0], bounds[3] - bounds[1]
        if strict:
            if w % d or h % d:
                raise ValueError(f"width {w} or height {h} is not a multiple of the resolution factor denominator {d}")
            return (bounds[0] // d, bounds[1] // d, bounds[2] // d, bounds[3] // d)
        return (bounds[0] // d, bounds[1] // d, -(-bounds[2] // d), -(-bounds[3] // d))
    n = rf.numerator
    return (bounds[0] * n, bounds[1] * n, bounds[2] * n, bounds[3] * n)


# ---- reading ----------------------------------------------------------------------------


def candidate_groups(window: Window, data_input: DataInput, completed: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """Candidate item groups of one input, in rslearn's order (spec §6.1 step 1)."""
    options: list[tuple[str, int]] = []
    if data_input.load_all_item_groups:
        for layer in data_input.layers:
            groups = sorted(idx for name, idx in completed if name == layer)
            if not groups:
                raise DataReadError(f"window {window.label}: layer {layer!r} has no completed item group (load_all_item_groups)")
            options.extend((layer, idx) for idx in groups)
    else:
        for entry in data_input.layers:
            key = parse_layer_dir_name(entry)
            if key in completed:
                options.append(key)
    return options


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_read_size(where: str, timesteps: int, height: int, width: int, bands: int, dtype: Any) -> None:
    """Refuses a read that cannot fit in this machine's memory (a whole 200000 x 200000
    window, a sparse GeoTIFF declaring a huge size) with an error instead of an attempt to
    allocate it."""
    need = timesteps * height * width * bands * np.dtype(dtype).itemsize
    memory = physical_memory()
    if memory is not None and need > memory:
        gib = 1 << 30
        raise DataReadError(
            f"{where}: reading {width}x{height} px x {bands} band(s)"
            + (f" x {timesteps} timesteps" if timesteps > 1 else "")
            + f" needs {need / gib:.1f} GiB, more than this machine's {memory / gib:.1f} GiB of memory; "
            "predict large windows in crops (predict_config: load_all_crops: true, crop_size: ...), which reads them crop by crop"
        )


def _to_posix(text: str) -> float:
    """ISO-8601 time (UTC when no offset is given) -> POSIX seconds."""
    return parse_time(text).timestamp()


def read_raster_group(
    dataset: Dataset,
    window: Window,
    key: str,
    layer: str,
    group_idx: int,
    bands: list[str],
    region: PixelBounds,
    data_input: DataInput,
    strict: bool = True,
    checks: ReadChecks | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One item group over ``region`` (window grid): (``[T, H, W, C]`` in the input's
    dtype at its resolution factor, timestamps float64 ``[T, 2]`` or None).

    ``strict``: the region must be divisible by the resolution factor's denominator.
    ``checks``: the value checks to apply (:class:`ReadChecks`; default: dtype only).
    """
    checks = checks or ReadChecks()
    where = f"window {window.label}, input {key}, layer {layer}" + (f".{group_idx}" if group_idx else "")
    layer_config: LayerConfig | None = dataset.layers.get(layer)
    if layer_config is None:
        raise DataReadError(f"{where}: layer {layer!r} is not in the dataset config")
    if layer_config.type != "raster":
        raise DataReadError(f"{where}: layer {layer!r} is a {layer_config.type} layer, not raster")
    rf = data_input.resolution_factor
    projection = rf.multiply_projection(window.projection)
    try:
        target = scale_bounds(rf, region, strict)
    except ValueError as e:
        raise DataReadError(f"{where}: {e}") from None
    height, width = target[3] - target[1], target[2] - target[0]
    out: np.ndarray | None = None
    timestamps = None
    remaining = {band: i for i, band in enumerate(bands)}
    dtype = data_input.numpy_dtype()
    for band_set in layer_config.band_sets:
        wanted = [(dst, band_set.bands.index(b)) for b, dst in list(remaining.items()) if b in band_set.bands]
        if not wanted:
            continue
        if band_set.format_name != "geotiff":
            raise DataReadError(f"{where}: raster format {band_set.format_name!r} is not supported (only GeoTIFF)")
        raster_dir = window.raster_dir(layer, band_set.bands, group_idx)
        try:
            sidecar = read_timestep_metadata(raster_dir)
        except RasterReadError as e:
            raise DataReadError(f"{where}: {e}") from None
        t = sidecar["num_timesteps"] if sidecar and sidecar.get("num_timesteps") else 1
        check_read_size(where, t, height, width, len(bands), dtype)
        # File band index c*T + t (channel-major), 1-based for rasterio.
        indexes = [src_c * t + ts + 1 for _, src_c in wanted for ts in range(t)]
        path = f"{raster_dir}/geotiff.tif"
        try:
            data, covered = read_geotiff_coverage(path, projection, target, indexes)
        except RasterReadError as e:
            raise DataReadError(f"{where}: {e}") from None
        checks.dtype(where, path, layer, data, band_set)
        if covered is not None and covered < 1.0:
            checks.coverage(where, window.label, path, covered, projection.crs, _file_crs(path))
        data = data.reshape(len(wanted), t, height, width)
        if out is None:
            out = np.zeros((t, height, width, len(bands)), dtype=dtype)
            stamps = sidecar.get("timestamps") if sidecar else None
            if stamps is not None:
                if len(stamps) != t:
                    raise DataReadError(f"{where}: sidecar lists {len(stamps)} timestamps for {t} timesteps")
                try:
                    timestamps = np.asarray([[_to_posix(a), _to_posix(b)] for a, b in stamps], np.float64)
                except (TypeError, ValueError) as e:
                    raise DataReadError(f"{where}: invalid sidecar timestamps: {e}") from None
            elif t > 1:
                raise DataReadError(f"{where}: multi-timestep raster (T={t}) has no timestamps in its metadata.json sidecar")
        elif out.shape[0] != t:
            raise DataReadError(f"{where}: band sets have different numbers of timesteps ({out.shape[0]} vs {t})")
        for j, (dst, _) in enumerate(wanted):
            out[..., dst] = data[j].astype(dtype)
        for band in [b for b in remaining if b in band_set.bands]:
            del remaining[band]
        if not remaining:
            break
    if remaining:
        raise DataReadError(
            f"{where}: band(s) {sorted(remaining)} of layer {layer!r} are in no band set "
            f"(band sets: {[bs.bands for bs in layer_config.band_sets]})"
        )
    assert out is not None
    return out, timestamps


def _file_crs(path: str) -> str:
    import rasterio

    try:
        with rasterio.open(path) as src:
            return str(src.crs)
    except Exception:  # noqa: BLE001 - only for a message
        return "unknown"


def read_vector_group(dataset: Dataset, window: Window, key: str, layer: str, group_idx: int) -> list[Feature]:
    """Features of one vector item group intersecting the window (window pixel coords)."""
    where = f"window {window.label}, input {key}, layer {layer}" + (f".{group_idx}" if group_idx else "")
    layer_config = dataset.layers.get(layer)
    if layer_config is None:
        raise DataReadError(f"{where}: layer {layer!r} is not in the dataset config")
    if layer_config.type != "vector":
        raise DataReadError(f"{where}: layer {layer!r} is a {layer_config.type} layer, not vector")
    try:
        geojson_coordinate_mode(layer_config.vector_format, f"layer {layer} vector_format")
        return read_features_for_window(window.vector_path(layer, group_idx), window.projection, window.bounds)
    except (VectorReadError, ValueError) as e:
        raise DataReadError(f"{where}: {e}") from None


class ModelDataset:
    """The examples of one split: selected windows (or crops) and their host-side reads.

    Args:
        dataset: the rslearn dataset.
        inputs: DataInputs by key.
        split: the merged SplitConfig of this stage.
        property_names: vector property columns to read (from the task).
        deterministic: seed each example's randomness with its index (val/test/predict;
            rslearn's ``fix_crop_pick``).
        dataset_source: data module ``name`` (SampleMetadata.dataset_source).
        skip_bad_windows: skip windows that cannot be read (malformed metadata.json,
            missing/corrupt files, ...) with a warning instead of raising.
        check_nan: treat non-finite pixels (NaN, +-Inf) in raster inputs as bad input
            (error, or skipped window with ``skip_bad_windows``).
        strict: a raster that does not cover its whole window is an error (default: a
            warning when it covers none of it); see :class:`ReadChecks`.
        map_all_crops: read each crop of ``load_all_crops`` from disk (rslearn's
            ``use_map_all_crops_dataset``) instead of slicing it from the whole window.
        shard: keep only the windows of this ``rskeras.train.sharding.Shard`` (sharded
            prediction).
    """

    def __init__(
        self,
        dataset: Dataset,
        inputs: dict[str, DataInput],
        split: SplitConfig,
        property_names: list[str],
        deterministic: bool,
        dataset_source: str | None = None,
        skip_bad_windows: bool = False,
        check_nan: bool = False,
        map_all_crops: bool = False,
        strict: bool = False,
        shard: Any = None,
    ):
        self.dataset = dataset
        self.split = split
        self.inputs = {k: v for k, v in inputs.items() if not (split.get_skip_targets() and v.is_target)}
        self.input_keys = list(self.inputs)
        self.property_names = list(property_names)
        self.deterministic = deterministic
        self.dataset_source = dataset_source
        self.skip_bad_windows = skip_bad_windows
        self.check_nan = check_nan
        self.checks = ReadChecks(check_nan=check_nan, strict=strict)
        self.bad_windows: list[tuple[str, str]] = []
        self.bands = {k: di.resolve_bands(dataset) for k, di in self.inputs.items() if di.data_type == "raster"}
        self.crop_size = split.get_crop_size()
        self.all_crops = split.get_load_all_crops()
        self.map_all_crops = map_all_crops and self.all_crops
        if self.crop_size is not None:
            for key, di in self.inputs.items():
                d = di.resolution_factor.denominator
                if di.data_type == "raster" and d > 1 and (self.crop_size[0] % d or self.crop_size[1] % d):
                    raise ValueError(f"input {key}: crop_size {list(self.crop_size)} is not a multiple of its resolution factor denominator {d}")
        self.shard = shard
        self.selection_stats: dict[str, int] = {}
        self.windows, self.completed = select_windows_and_layers(
            dataset, self.inputs, split, skip_bad_windows, self.bad_windows, shard, self.selection_stats
        )
        # Crops read one by one from disk, clipped to the window (the iterable all-crops
        # semantics without reading whole windows): see read_crops_separately.
        self.clip_crops = False
        if self.crop_size is None:
            # Whole windows are read at once: refuse up front those that cannot fit.
            for window in self.windows:
                for key, di in self.inputs.items():
                    if di.data_type == "raster":
                        b = scale_bounds(di.resolution_factor, window.bounds, strict=False)
                        where = f"window {window.label}, input {key}"
                        check_read_size(where, 1, b[3] - b[1], b[2] - b[0], len(self.bands[key]), di.numpy_dtype())
        # Examples: (window index, crop bounds or None, crop idx, num crops).
        self.examples: list[tuple[int, PixelBounds | None, int, int]] = []
        self.window_crops: list[list[PixelBounds]] = []
        for wi, window in enumerate(self.windows):
            if self.all_crops:
                crops = all_crop_bounds(window.bounds, self.crop_size, split.get_overlap_pixels())
                self.window_crops.append(crops)
                self.examples.extend((wi, c, ci, len(crops)) for ci, c in enumerate(crops))
            else:
                self.window_crops.append([])
                self.examples.append((wi, None, 0, 1))

    def __len__(self) -> int:
        return len(self.examples)

    def example_size(self) -> tuple[int, int] | None:
        """(width, height) in window pixels shared by every example of the split, or None
        when they differ: the crop size when there is one (random crops overhang small
        windows, all crops have it), else the windows' common size. The input pipeline
        gives the rasters this static shape, so that the traced steps see fixed sizes."""
        if self.crop_size is not None:
            return int(self.crop_size[0]), int(self.crop_size[1])
        if not hasattr(self, "_window_sizes"):  # once: the windows do not change
            self._window_sizes = {(w.bounds[2] - w.bounds[0], w.bounds[3] - w.bounds[1]) for w in self.windows}
        return next(iter(self._window_sizes)) if len(self._window_sizes) == 1 else None

    def read_crops_separately(self, crop_orders: dict[int, list[int]] | None = None) -> None:
        """Reads every example of this all-crops split from disk over its own crop (bounded
        memory for windows far larger than memory) with the semantics of reading the
        whole window: pixels outside the window are zeros, vector features are those
        intersecting the crop.

        ``crop_orders`` maps window indexes to the order in which that window's crops are
        produced (indexes into its crops, repeats allowed: a block-by-block writer's
        plan); their examples then carry ``crop_idx`` = position in that order and
        ``num_crops_in_window`` = its length.
        """
        if not self.all_crops:
            raise ValueError("read_crops_separately needs load_all_crops")
        self.clip_crops = True
        self.map_all_crops = False
        if not crop_orders:
            return
        examples: list[tuple[int, PixelBounds | None, int, int]] = []
        for wi, crops in enumerate(self.window_crops):
            order = crop_orders.get(wi)
            if order is None:
                examples.extend((wi, c, ci, len(crops)) for ci, c in enumerate(crops))
            else:
                examples.extend((wi, crops[k], i, len(order)) for i, k in enumerate(order))
        self.examples = examples

    def clipped_region(self, window_idx: int, crop: PixelBounds) -> PixelBounds:
        """The part of the window a crop covers, grown to the grid of every input's
        resolution-factor denominator (counted from the window origin), so that reading it
        gives the pixels the whole-window read would."""
        w = self.windows[window_idx].bounds
        d = max([di.resolution_factor.denominator for di in self.inputs.values() if di.data_type == "raster"] or [1])
        x0 = w[0] + (max(crop[0], w[0]) - w[0]) // d * d
        y0 = w[1] + (max(crop[1], w[1]) - w[1]) // d * d
        x1 = min(w[2], w[0] + -(-(min(crop[2], w[2]) - w[0]) // d) * d)
        y1 = min(w[3], w[1] + -(-(min(crop[3], w[3]) - w[1]) // d) * d)
        return (x0, y0, max(x1, x0), max(y1, y0))

    def host_clipped_crop_unit(self, index: int, seed: int | None) -> dict[str, Any]:
        """Example ``index`` of :meth:`read_crops_separately`: the item groups drawn with
        the window-seeded rng (as for the whole-window unit), read over the crop's part of
        the window."""
        window_idx, crop, _, _ = self.examples[index]
        assert crop is not None
        _, choices = self.draw(random.Random(seed), window_idx, crop=False)
        unit = self.read_unit(window_idx, self.clipped_region(window_idx, crop), choices, crop, strict=False, unit_crops=[crop])
        return unit

    # ---- random choices ---------------------------------------------------------------

    def num_candidates(self, window_idx: int) -> list[int]:
        """Candidate item-group count of every input for a window (0 = optional input
        not available)."""
        window, completed = self.windows[window_idx], self.completed[window_idx]
        out = []
        for di in self.inputs.values():
            if not di.required and not is_input_available(di, completed):
                out.append(0)
            else:
                try:
                    out.append(len(candidate_groups(window, di, completed)))
                except DataReadError:
                    out.append(0)
        return out

    def draw(self, rng: random.Random, window_idx: int, crop: bool) -> tuple[PixelBounds, list[int]]:
        """rslearn's random draws for one example, in its order: the random crop (x then
        y offset) and then, for every input read, the item group (an index into the
        candidates; -1 = all for load_all_layers)."""
        window = self.windows[window_idx]
        bounds = random_crop_bounds(window.bounds, self.crop_size, rng) if crop and self.crop_size else window.bounds
        choices = []
        for di, n in zip(self.inputs.values(), self.num_candidates(window_idx)):
            if n == 0:
                choices.append(0)
            elif di.load_all_layers:
                choices.append(-1)
            else:
                # random.choice draws even for a single candidate, as in rslearn.
                choices.append(rng.choice(range(n)))
        return bounds, choices

    def deterministic_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(crop bounds int64 [n, 4], group choices int32 [n, num_inputs]) of every example
        drawn as rslearn draws them with ``random.Random(seed)`` (seed = example index, or
        window index for all-crops)."""
        bounds = np.zeros((len(self.examples), 4), np.int64)
        choices = np.zeros((len(self.examples), max(len(self.inputs), 1)), np.int32)
        for i, (wi, crop, _, _) in enumerate(self.examples):
            seed = wi if self.all_crops else i
            b, c = self.draw(random.Random(seed), wi, crop=not self.all_crops)
            bounds[i] = crop if crop is not None else b
            if c:
                choices[i, : len(c)] = c
        return bounds, choices

    # ---- reading ------------------------------------------------------------------------

    def region_for(self, window_idx: int, crop: PixelBounds | None) -> PixelBounds:
        """Pixel region a unit covers: the crop, the union of crops (map-style all
        crops), the window (iterable all crops: crops overhanging it are zero-padded),
        or the window grown by the overhang of random crops (cache)."""
        window = self.windows[window_idx]
        if crop is not None:
            return crop
        if self.all_crops:
            if self.map_all_crops:
                crops = self.window_crops[window_idx]
                return (min(c[0] for c in crops), min(c[1] for c in crops), max(c[2] for c in crops), max(c[3] for c in crops))
            return window.bounds
        return random_crop_region(window.bounds, self.crop_size)

    def read_unit(
        self,
        window_idx: int,
        region: PixelBounds,
        choices: list[int] | None,
        crop_bounds: PixelBounds | None = None,
        strict: bool = True,
        unit_crops: list[PixelBounds] | None = None,
    ) -> dict[str, Any]:
        """Reads one window unit (see the module docstring).

        Args:
            window_idx: index into ``self.windows``.
            region: pixel bounds to read (window grid).
            choices: per input, the candidate index to read (-1: all); None reads every
                candidate (input cache).
            crop_bounds: the crop this unit is for (defaults to ``region``).
            strict: the region's size must be divisible by resolution-factor
                denominators (rslearn's rule for the bounds it reads).
            unit_crops: the crops of the unit (vector crop masks; default: the window's
                crops for iterable all crops).
        """
        window, completed = self.windows[window_idx], self.completed[window_idx]
        crops = self.window_crops[window_idx] if unit_crops is None else unit_crops
        inputs: dict[str, Any] = {}
        for i, (key, di) in enumerate(self.inputs.items()):
            where = f"window {window.label}, input {key}"
            if not di.required and not is_input_available(di, completed):
                groups: list[tuple[str, int]] = []
            else:
                options = candidate_groups(window, di, completed)
                if not options:
                    raise DataReadError(f"{where}: no completed layers found for data input with layers={di.layers}")
                if choices is None or choices[i] == -1:
                    groups = options
                elif choices[i] < len(options):
                    groups = [options[choices[i]]]
                else:
                    raise DataReadError(f"{where}: item group choice {choices[i]} out of range for {options}")
            if di.data_type == "raster":
                inputs[key] = self._read_raster_unit(window, key, di, groups, region, strict)
            else:
                masked = unit_crops is not None or (self.all_crops and not self.map_all_crops)
                inputs[key] = self._read_vector_unit(window, key, groups, crops if masked else [])
        return {
            "ok": np.bool_(True),
            "window_index": np.int64(window_idx),
            "region": np.asarray(region, np.int64),
            "crop_bounds": np.asarray(crop_bounds if crop_bounds is not None else region, np.int64),
            # The groups kept for a host-chosen unit: index 0, or all (-1).
            "choice": np.asarray([-1 if di.load_all_layers else 0 for di in self.inputs.values()] or [0], np.int32),
            "crops": np.asarray(crops, np.int64).reshape(-1, 4),
            "inputs": inputs,
        }

    def _read_raster_unit(
        self, window: Window, key: str, di: DataInput, groups: list[tuple[str, int]], region: PixelBounds, strict: bool
    ) -> dict[str, Any]:
        parts, stamps, group_t = [], [], [0]
        for layer, idx in groups:
            image, ts = read_raster_group(self.dataset, window, key, layer, idx, self.bands[key], region, di, strict, self.checks)
            where = f"window {window.label}, input {key}, layer {layer}{'.' + str(idx) if idx else ''}"
            self.checks.non_finite_values(where, window.label, image)
            parts.append(image)
            stamps.append(ts if ts is not None else np.full((image.shape[0], 2), np.nan))
            group_t.append(group_t[-1] + image.shape[0])
        if parts:
            shapes = {p.shape[1:] for p in parts}
            if len(shapes) > 1:
                raise DataReadError(f"window {window.label}, input {key}: item groups have different H/W/C {sorted(shapes)}")
            image = np.concatenate(parts, axis=0)
            timestamps = np.concatenate(stamps, axis=0)
        else:
            b = scale_bounds(di.resolution_factor, region, strict=False)
            image = np.zeros((0, b[3] - b[1], b[2] - b[0], len(self.bands[key])), di.numpy_dtype())
            timestamps = np.zeros((0, 2), np.float64)
        return {"image": image, "group_t": np.asarray(group_t, np.int32), "timestamps": timestamps}

    def _read_vector_unit(self, window: Window, key: str, groups: list[tuple[str, int]], crops: list[PixelBounds]) -> dict[str, Any]:
        features: list[Feature] = []
        group_of: list[int] = []
        for g, (layer, idx) in enumerate(groups):
            feats = read_vector_group(self.dataset, window, key, layer, idx)
            features.extend(feats)
            group_of.extend([g] * len(feats))
        out = features_to_tensors(features, self.property_names)
        out["group"] = np.asarray(group_of, np.int32)
        out["num_groups"] = np.int32(len(groups))
        mask = np.zeros((len(crops), len(features)), bool)
        for k, crop in enumerate(crops):
            box = shapely.box(*crop)
            for j, f in enumerate(features):
                mask[k, j] = f.geometry.intersects(box)
        out["crop_mask"] = mask
        return out

    def host_unit(self, index: int, seed: int | None) -> dict[str, Any]:
        """The unit of the no-cache path for example ``index`` (random crop) or window
        ``index`` (all crops): rslearn's random draws, then only the chosen item groups
        over the crop (or the window) are read."""
        if self.all_crops:
            window_idx = index
            if self.map_all_crops:
                raise AssertionError("map-style all crops use host_crop_unit")
            rng = random.Random(seed)
            _, choices = self.draw(rng, window_idx, crop=False)
            return self.read_unit(window_idx, self.region_for(window_idx, None), choices, self.windows[window_idx].bounds)
        window_idx = self.examples[index][0]
        rng = random.Random(seed)
        bounds, choices = self.draw(rng, window_idx, crop=True)
        return self.read_unit(window_idx, bounds, choices, bounds)

    def host_crop_unit(self, index: int, seed: int | None) -> dict[str, Any]:
        """Map-style all crops: example ``index`` read from disk over its crop bounds
        (the item group drawn with the window-seeded rng, as rslearn's map dataset)."""
        window_idx, crop, _, _ = self.examples[index]
        _, choices = self.draw(random.Random(seed), window_idx, crop=False)
        return self.read_unit(window_idx, crop, choices, crop)

    def read_example(self, index: int, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(raw inputs, metadata) of example ``index`` as numpy values, read on the host
        (what the tf.data pipeline feeds to ``task.process_inputs``; all-crops examples are
        read from disk over their crop, as rslearn's map-style dataset).

        ``seed`` defaults to the example index for deterministic splits (val/test/predict)
        and to fresh randomness for train.
        """
        window_idx, crop, crop_idx, num_crops = self.examples[index]
        if seed is None and self.deterministic:
            seed = window_idx if self.all_crops else index
        unit = self.host_crop_unit(index, seed) if self.all_crops else self.host_unit(index, seed)
        raw: dict[str, Any] = {}
        for key, di in self.inputs.items():
            u = unit["inputs"][key]
            if di.data_type == "raster":
                raw[key] = u["image"]
                if di.load_timestamps:
                    raw[key + TIMESTAMPS_SUFFIX] = u["timestamps"]
            else:
                raw[key] = {k: v for k, v in u.items() if k not in ("group", "num_groups", "crop_mask")}
        window = self.windows[window_idx]
        bounds = tuple(int(b) for b in unit["crop_bounds"])
        metadata = SampleMetadata(
            window_group=window.group,
            window_name=window.name,
            window_bounds=window.bounds,
            crop_bounds=bounds,
            crop_idx=crop_idx,
            num_crops_in_window=num_crops,
            dataset_source=self.dataset_source,
            window_index=window_idx,
        ).to_tensors()
        return raw, metadata

    def cache_unit(self, window_idx: int) -> dict[str, Any]:
        """The unit stored by the input cache: every candidate item group over the
        window's full region."""
        strict = self.crop_size is None or (self.all_crops and not self.map_all_crops)
        return self.read_unit(window_idx, self.region_for(window_idx, None), None, self.windows[window_idx].bounds, strict)

    def bad_unit(self, window_idx: int) -> dict[str, Any]:
        """A placeholder unit (``ok`` False) for a skipped window."""
        inputs: dict[str, Any] = {}
        for key, di in self.inputs.items():
            if di.data_type == "raster":
                inputs[key] = {
                    "image": np.zeros((0, 0, 0, len(self.bands[key])), di.numpy_dtype()),
                    "group_t": np.zeros((1,), np.int32),
                    "timestamps": np.zeros((0, 2), np.float64),
                }
            else:
                out = features_to_tensors([], self.property_names)
                out["group"] = np.zeros((0,), np.int32)
                out["num_groups"] = np.int32(0)
                out["crop_mask"] = np.zeros((0, 0), bool)
                inputs[key] = out
        return {
            "ok": np.bool_(False),
            "window_index": np.int64(window_idx),
            "region": np.zeros((4,), np.int64),
            "crop_bounds": np.zeros((4,), np.int64),
            "choice": np.zeros((max(len(self.inputs), 1),), np.int32),
            "crops": np.zeros((0, 4), np.int64),
            "inputs": inputs,
        }

    def guarded(self, window_idx: int, read) -> dict[str, Any]:
        """Runs ``read()``; with ``skip_bad_windows`` a failure gives a bad unit and a
        warning (with the running count) instead of an exception."""
        try:
            return read()
        except (DataReadError, WindowError, OSError, ValueError) as e:
            window = self.windows[window_idx]
            message = str(e) if window.label in str(e) else f"window {window.label}: {e}"
            if not self.skip_bad_windows:
                if isinstance(e, DataReadError):
                    raise
                raise DataReadError(message) from e
            self.bad_windows.append((window.label, message))
            logger.warning("skipping bad window (%d skipped so far): %s", len(self.bad_windows), message)
            return self.bad_unit(window_idx)

    # ---- signatures & metadata -------------------------------------------------------

    def unit_signature(self) -> dict[str, Any]:
        import tensorflow as tf

        from rskeras.utils.feature import vector_tensor_signature

        inputs: dict[str, Any] = {}
        for key, di in self.inputs.items():
            if di.data_type == "raster":
                inputs[key] = {
                    "image": tf.TensorSpec([None, None, None, len(self.bands[key])], tf.as_dtype(di.numpy_dtype())),
                    "group_t": tf.TensorSpec([None], tf.int32),
                    "timestamps": tf.TensorSpec([None, 2], tf.float64),
                }
            else:
                sig = vector_tensor_signature(self.property_names)
                sig["group"] = tf.TensorSpec([None], tf.int32)
                sig["num_groups"] = tf.TensorSpec([], tf.int32)
                sig["crop_mask"] = tf.TensorSpec([None, None], tf.bool)
                inputs[key] = sig
        return {
            "ok": tf.TensorSpec([], tf.bool),
            "window_index": tf.TensorSpec([], tf.int64),
            "region": tf.TensorSpec([4], tf.int64),
            "crop_bounds": tf.TensorSpec([4], tf.int64),
            "choice": tf.TensorSpec([max(len(self.inputs), 1)], tf.int32),
            "crops": tf.TensorSpec([None, 4], tf.int64),
            "inputs": inputs,
        }

    def window_table(self) -> dict[str, np.ndarray]:
        """Per-window metadata columns (indexed by window index in the graph)."""
        n = len(self.windows)
        return {
            "group": utf8_array([w.group for w in self.windows] or [""]),
            "name": utf8_array([w.name for w in self.windows] or [""]),
            "bounds": np.asarray([w.bounds for w in self.windows] or [(0, 0, 0, 0)], np.int64).reshape(max(n, 1), 4),
        }

    def window_file_fingerprint(self, window_idx: int) -> str:
        """A fingerprint of a window's metadata and the files of the layers its inputs
        read (paths, sizes, mtimes), for cache invalidation."""

        window = self.windows[window_idx]
        layer_names = {parse_layer_dir_name(e)[0] for di in self.inputs.values() for e in di.layers}
        h = hashlib.sha256()
        for path in [os.path.join(window.path, "metadata.json")]:
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        layers_dir = os.path.join(window.path, "layers")
        try:
            entries = sorted(os.listdir(layers_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.startswith(".") or entry.split(".")[0] not in layer_names:
                continue
            for root, dirs, files in os.walk(os.path.join(layers_dir, entry)):
                dirs.sort()
                for f in sorted(files):
                    p = os.path.join(root, f)
                    st = os.stat(p)
                    h.update(f"{os.path.relpath(p, window.path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


__all__ = [
    "DataInput",
    "DataReadError",
    "ModelDataset",
    "ReadChecks",
    "RandomSamplerFactory",
    "SplitConfig",
    "WeightedRandomSamplerFactory",
    "all_crop_bounds",
    "crop_origins",
    "is_input_available",
    "matches_tags",
    "random_crop_bounds",
    "select_windows",
    "select_windows_and_layers",
    "window_sort_key",
]
