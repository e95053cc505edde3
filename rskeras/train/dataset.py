"""What the trainer reads per window: DataInput, SplitConfig, window selection and reading.

This module is the host-side (numpy) half of the input pipeline; ``data_module`` wraps it
in ``tf.data``. Semantics follow rslearn's ``rslearn.train.dataset`` (spec
dataset_format.md §6-7).
"""

from __future__ import annotations

import hashlib
import logging
import random
import warnings
from typing import Any

import numpy as np

from rskeras.config.dataset import DType, LayerConfig
from rskeras.dataset.dataset import Dataset
from rskeras.dataset.window import Window, WindowError, parse_layer_dir_name
from rskeras.train.model_context import SampleMetadata
from rskeras.utils.feature import Feature, features_to_tensors
from rskeras.utils.geometry import PixelBounds, ResolutionFactor
from rskeras.utils.raster_format import RasterReadError, read_geotiff, read_timestep_metadata
from rskeras.utils.vector_format import VectorReadError, read_features_for_window

logger = logging.getLogger(__name__)


class DataReadError(ValueError):
    """Reading one input of one window failed; the message names window, input and layer."""


class DataInput:
    """One piece of data read from every window (rslearn ``DataInput``).

    Args:
        data_type: "raster" or "vector".
        layers: item-group specifiers ("s2", "s2.1"), or layer names with
            ``load_all_item_groups``.
        bands: raster bands to read, in output channel order.
        use_all_bands_in_order_of_band_set_idx: alternative to ``bands``: all bands of that
            band set of the (first) layer, in config order.
        required: drop windows lacking this input (default true).
        passthrough: copy the raw value into the model input dict.
        is_target: this input is a label (dropped when the split has ``skip_targets``).
        dtype: FLOAT32 (default) or INT32 (other types are rejected when reading).
        load_all_layers: read every available entry (stacked along time) instead of one
            random entry.
        load_all_item_groups: expand each layer name into all its completed item groups.
        resolution_factor: read at window resolution × this factor.
        resampling: accepted for compatibility; reads always use nearest neighbour (as in
            rslearn, where the option is stored but unused).
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
        resampling: str | None = None,
    ):
        if data_type not in ("raster", "vector"):
            raise ValueError(f"data_type must be 'raster' or 'vector', got {data_type!r}")
        if not layers:
            raise ValueError("layers must list at least one layer")
        if bands is not None and use_all_bands_in_order_of_band_set_idx is not None:
            raise ValueError("only one of bands and use_all_bands_in_order_of_band_set_idx should be set")
        if data_type == "raster" and bands is None and use_all_bands_in_order_of_band_set_idx is None:
            raise ValueError("for raster DataInputs, one of bands and use_all_bands_in_order_of_band_set_idx must be set")
        if isinstance(dtype, str):
            dtype = DType[dtype] if dtype in DType.__members__ else DType(dtype)
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
                f"DataInput: use_all_bands_in_order_of_band_set_idx={idx} is out of range for layer {layer_name!r} "
                f"with {len(layer.band_sets)} band sets"
            )
        return list(layer.band_sets[idx].bands)

    def numpy_dtype(self):
        if self.dtype not in (DType.FLOAT32, DType.INT32):
            raise ValueError(f"DataInput dtype must be FLOAT32 or INT32, got {self.dtype.name}")
        return self.dtype.numpy_dtype


class SplitConfig:
    """Per-split window selection and iteration options (rslearn ``SplitConfig``).

    Args:
        groups: only windows in these groups.
        names: only windows with these names.
        tags: window ``options`` must contain each key; a truthy value must also match
            (falsy values mean "key exists", as in rslearn).
        num_samples: keep the first N windows after ordering by SHA-256 of the name.
        transforms: transforms applied per example (replace, never extend, the default).
        sampler: a sampler factory (RandomSamplerFactory / WeightedRandomSamplerFactory).
        crop_size: int or [width, height]: read crops instead of whole windows.
        overlap_pixels: sliding-window overlap (requires load_all_crops when > 0).
        load_all_crops: iterate over all crops of every window.
        skip_targets: drop ``is_target`` inputs; tasks produce empty targets.
        output_layer_name_skip_inference_if_exists: drop windows whose group 0 of this
            layer is completed.
        patch_size, overlap_ratio, load_all_patches, num_patches: deprecated spellings.
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
        groups/names/tags/num_samples/transforms/sampler, non-null for the rest)."""
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

    def validate(self) -> "SplitConfig":
        """Checks deprecated/new spellings and option combinations (after merging)."""
        for new, old in (("crop_size", "patch_size"), ("overlap_pixels", "overlap_ratio"), ("load_all_crops", "load_all_patches")):
            if getattr(self, "_" + new) is not None and getattr(self, "_" + old) is not None:
                raise ValueError(f"SplitConfig: specify only one of {new} and the deprecated {old}")
            if getattr(self, "_" + old) is not None:
                warnings.warn(f"SplitConfig.{old} is deprecated, use {new}", FutureWarning, stacklevel=2)
        overlap = self.get_overlap_pixels()
        if overlap < 0:
            raise ValueError(f"SplitConfig: overlap_pixels must be >= 0, got {overlap}")
        if overlap > 0 and not self.get_load_all_crops():
            raise ValueError("SplitConfig: overlap_pixels > 0 requires load_all_crops")
        if self.get_load_all_crops() and self.get_crop_size() is None:
            raise ValueError("SplitConfig: load_all_crops requires crop_size")
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
            return round(size[0] * self._overlap_ratio) if size else 0
        return 0

    def get_load_all_crops(self) -> bool:
        value = self._load_all_crops if self._load_all_crops is not None else self._load_all_patches
        return bool(value)

    def get_skip_targets(self) -> bool:
        return bool(self.skip_targets)


class RandomSamplerFactory:
    """Random order of examples (rslearn ``RandomSamplerFactory``).

    Args:
        replacement: sample with replacement.
        num_samples: examples per epoch (default: the dataset size).
    """

    def __init__(self, replacement: bool = False, num_samples: int | None = None):
        self.replacement = replacement
        self.num_samples = num_samples

    def weights(self, windows: list[Window]) -> np.ndarray | None:
        return None


class WeightedRandomSamplerFactory:
    """Samples windows with probability proportional to ``window.options[option_key]``.

    Args:
        option_key: window option holding the weight.
        num_samples: examples per epoch.
        replacement: sample with replacement (default true).
    """

    def __init__(self, option_key: str, num_samples: int, replacement: bool = True):
        self.option_key = option_key
        self.num_samples = num_samples
        self.replacement = replacement

    def weights(self, windows: list[Window]) -> np.ndarray:
        out = []
        for w in windows:
            if self.option_key not in w.options:
                raise ValueError(f"WeightedRandomSamplerFactory: window {w.label} has no option {self.option_key!r}")
            out.append(float(w.options[self.option_key]))
        return np.asarray(out, np.float64)


# ---- window selection -------------------------------------------------------------------


def matches_tags(window: Window, tags: dict[str, Any] | None) -> bool:
    """rslearn tag semantics: each key must exist; truthy values must also be equal."""
    for key, value in (tags or {}).items():
        if key not in window.options:
            return False
        if value and window.options[key] != value:
            return False
    return True


def is_input_available(window: Window, data_input: DataInput, completed: set[tuple[str, int]]) -> bool:
    """Availability rule of spec §7.2 step 3."""
    entries = []
    for entry in data_input.layers:
        if data_input.load_all_item_groups:
            entries.append((entry, 0))
        else:
            entries.append(parse_layer_dir_name(entry))
    flags = [e in completed for e in entries]
    return all(flags) if data_input.load_all_layers else any(flags)


def window_sort_key(window: Window) -> str:
    return hashlib.sha256(window.name.encode()).hexdigest()


def select_windows(dataset: Dataset, inputs: dict[str, DataInput], split: SplitConfig) -> list[Window]:
    """Windows of a split: groups/names, tags, availability, skip-if-output, SHA-256 order,
    num_samples (spec §7.2)."""
    windows = [w for w in dataset.load_windows(split.groups, split.names) if matches_tags(w, split.tags)]
    out = []
    for window in windows:
        completed = set(window.completed_layers())
        ok = all(is_input_available(window, di, completed) for di in inputs.values() if di.required)
        skip_layer = split.output_layer_name_skip_inference_if_exists
        if ok and skip_layer and (skip_layer, 0) in completed:
            ok = False
        if ok:
            out.append(window)
    out.sort(key=window_sort_key)
    if split.num_samples:
        out = out[: split.num_samples]
    return out


def crop_origins(start: int, end: int, size: int, overlap: int) -> list[int]:
    """Sliding-window crop origins along one axis (spec §7.5)."""
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


# ---- reading ----------------------------------------------------------------------------


def choose_item_groups(window: Window, data_input: DataInput, rng: random.Random) -> list[tuple[str, int]]:
    """Item groups to read for one input (spec §6.1)."""
    options: list[tuple[str, int]] = []
    if data_input.load_all_item_groups:
        completed = window.completed_layers()
        for layer in data_input.layers:
            groups = sorted(idx for name, idx in completed if name == layer)
            if not groups:
                raise DataReadError(f"window {window.label}: layer {layer!r} has no completed item group")
            options.extend((layer, idx) for idx in groups)
    else:
        for entry in data_input.layers:
            layer, idx = parse_layer_dir_name(entry)
            if window.is_layer_completed(layer, idx):
                options.append((layer, idx))
    if not options:
        raise DataReadError(
            f"window {window.label}: no completed layers found for data input with layers={data_input.layers}"
        )
    return options if data_input.load_all_layers else [rng.choice(options)]


def read_raster_group(
    dataset: Dataset, window: Window, layer: str, group_idx: int, bands: list[str], bounds: PixelBounds, data_input: DataInput
) -> np.ndarray:
    """One item group as ``[C, T, H, W]`` (float/int per DataInput.dtype)."""
    layer_config: LayerConfig | None = dataset.layers.get(layer)
    if layer_config is None:
        raise DataReadError(f"window {window.label}: layer {layer!r} is not in the dataset config")
    if layer_config.type != "raster":
        raise DataReadError(f"window {window.label}: layer {layer!r} is a {layer_config.type} layer, not raster")
    projection = data_input.resolution_factor.multiply_projection(window.projection)
    try:
        target_bounds = data_input.resolution_factor.multiply_bounds(bounds)
    except ValueError as e:
        raise DataReadError(f"window {window.label}: {e}") from None
    height, width = target_bounds[3] - target_bounds[1], target_bounds[2] - target_bounds[0]
    out: np.ndarray | None = None
    num_timesteps = None
    remaining = {band: i for i, band in enumerate(bands)}
    for band_set in layer_config.band_sets:
        wanted = [(i, band_set.bands.index(b)) for b, i in list(remaining.items()) if b in band_set.bands]
        if not wanted:
            continue
        raster_dir = window.raster_dir(layer, band_set.bands, group_idx)
        path = f"{raster_dir}/geotiff.tif"
        sidecar = read_timestep_metadata(raster_dir)
        t = int(sidecar["num_timesteps"]) if sidecar else 1
        c = len(band_set.bands)
        # file band index c*T + t (channel-major), 1-based for rasterio
        indexes = [src_c * t + ts + 1 for _, src_c in wanted for ts in range(t)]
        try:
            data = read_geotiff(path, projection, target_bounds, indexes)
        except RasterReadError as e:
            raise DataReadError(f"window {window.label}, layer {layer}: {e}") from None
        if sidecar and int(sidecar.get("num_channels", c)) != c:
            raise DataReadError(f"window {window.label}, layer {layer}: sidecar num_channels does not match band set {band_set.bands}")
        data = data.reshape(len(wanted), t, height, width)
        if out is None:
            num_timesteps = t
            out = np.zeros((len(bands), t, height, width), dtype=data_input.numpy_dtype())
        elif t != num_timesteps:
            raise DataReadError(f"window {window.label}, layer {layer}: band sets have different numbers of timesteps")
        for j, (dst, _) in enumerate(wanted):
            out[dst] = data[j].astype(out.dtype)
        for band in [b for b in remaining if b in band_set.bands]:
            del remaining[band]
        if not remaining:
            break
    if remaining:
        raise DataReadError(
            f"window {window.label}: band(s) {sorted(remaining)} of layer {layer!r} are in no band set "
            f"(band sets: {[bs.bands for bs in layer_config.band_sets]})"
        )
    assert out is not None
    return out


class ModelDataset:
    """The examples of one split: selected windows (or crops) read as numpy raw inputs.

    Args:
        dataset: the rslearn dataset.
        inputs: DataInputs by key.
        split: the merged SplitConfig of this stage.
        property_names: vector property columns to read (from the task).
        deterministic: seed each example's randomness with its index (val/test/predict).
        dataset_source: data module ``name`` (SampleMetadata.dataset_source).
    """

    def __init__(
        self,
        dataset: Dataset,
        inputs: dict[str, DataInput],
        split: SplitConfig,
        property_names: list[str],
        deterministic: bool,
        dataset_source: str | None = None,
    ):
        self.dataset = dataset
        self.split = split.validate()
        self.inputs = {k: v for k, v in inputs.items() if not (split.get_skip_targets() and v.is_target)}
        self.property_names = list(property_names)
        self.deterministic = deterministic
        self.dataset_source = dataset_source
        self.bands = {k: di.resolve_bands(dataset) for k, di in self.inputs.items() if di.data_type == "raster"}
        self.windows = select_windows(dataset, self.inputs, self.split)
        crop_size = self.split.get_crop_size()
        # examples: (window index, crop bounds or None, crop idx, num crops)
        self.examples: list[tuple[int, PixelBounds | None, int, int]] = []
        for wi, window in enumerate(self.windows):
            if self.split.get_load_all_crops():
                crops = all_crop_bounds(window.bounds, crop_size, self.split.get_overlap_pixels())
                self.examples.extend((wi, c, ci, len(crops)) for ci, c in enumerate(crops))
            else:
                self.examples.append((wi, None, 0, 1))

    def __len__(self) -> int:
        return len(self.examples)

    def read_input(self, window: Window, key: str, data_input: DataInput, bounds: PixelBounds, rng: random.Random) -> Any:
        if data_input.data_type == "raster":
            parts = [
                read_raster_group(self.dataset, window, layer, idx, self.bands[key], bounds, data_input)
                for layer, idx in choose_item_groups(window, data_input, rng)
            ]
            shapes = {p.shape[:1] + p.shape[2:] for p in parts}
            if len(shapes) > 1:
                raise DataReadError(f"window {window.label}, input {key}: item groups have different C/H/W {sorted(shapes)}")
            image = np.concatenate(parts, axis=1)  # C, T, H, W
            return np.ascontiguousarray(image.transpose(1, 2, 3, 0))  # T, H, W, C
        features: list[Feature] = []
        for layer, idx in choose_item_groups(window, data_input, rng):
            layer_config = self.dataset.layers.get(layer)
            if layer_config is None or layer_config.type != "vector":
                raise DataReadError(f"window {window.label}, input {key}: layer {layer!r} is not a vector layer of the dataset")
            try:
                features.extend(read_features_for_window(window.vector_path(layer, idx), window.projection, window.bounds))
            except VectorReadError as e:
                raise DataReadError(f"window {window.label}, input {key}, layer {layer}: {e}") from None
        return features_to_tensors(features, self.property_names)

    def empty_input(self, key: str, data_input: DataInput, bounds: PixelBounds) -> Any:
        """Value of an optional input that a window lacks: T=0 raster / no features."""
        if data_input.data_type == "vector":
            return features_to_tensors([], self.property_names)
        b = data_input.resolution_factor.multiply_bounds(bounds)
        return np.zeros((0, b[3] - b[1], b[2] - b[0], len(self.bands[key])), data_input.numpy_dtype())

    def read_example(self, index: int, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(raw inputs, metadata) of example ``index`` as numpy values."""
        window_idx, crop, crop_idx, num_crops = self.examples[index]
        window = self.windows[window_idx]
        if seed is None:
            seed = index if self.deterministic else None
        rng = random.Random(seed)
        crop_size = self.split.get_crop_size()
        if crop is not None:
            bounds = crop
        elif crop_size is not None:
            bounds = random_crop_bounds(window.bounds, crop_size, rng)
        else:
            bounds = window.bounds
        completed = set(window.completed_layers())
        raw = {}
        for key, data_input in self.inputs.items():
            if not data_input.required and not is_input_available(window, data_input, completed):
                raw[key] = self.empty_input(key, data_input, bounds)
                continue
            try:
                raw[key] = self.read_input(window, key, data_input, bounds, rng)
            except (DataReadError, WindowError):
                raise
            except (OSError, ValueError) as e:
                raise DataReadError(f"window {window.label}, input {key}: {e}") from e
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
