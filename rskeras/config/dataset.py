"""The dataset ``config.json``: layers and band sets (rslearn ``rslearn.config.dataset``).

Only what training and prediction need is interpreted (layer types, band sets, vector
format, nodata); ingestion options (data sources, compositing, ...) are accepted and kept
as raw dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from rskeras.config.loader import substitute_env

NUMPY_DTYPES = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float32": np.float32,
}

DATASET_KEYS = {"layers", "tile_store", "storage", "window_data_storage"}
LAYER_KEYS = {
    "type",
    "band_sets",
    "vector_format",
    "data_source",
    "alias",
    "resampling_method",
    "compositing_method",
    "class_property_name",
    "class_names",
}
BAND_SET_KEYS = {
    "dtype",
    "bands",
    "num_bands",
    "format",
    "zoom_offset",
    "spatial_size",
    "nodata_value",
    "nodata_vals",
    "remap",
    "class_names",
}


class DatasetConfigError(ValueError):
    """config.json does not describe a valid rslearn dataset (message names file and key)."""


def band_set_dir_name(bands: list[str]) -> str:
    """Directory name of a band set (spec dataset_format.md §3.3).

    With an underscore in any band name: SHA-256 of the Python-style JSON list text;
    otherwise the bands joined with ``_``, or the SHA-256 of that string when it is longer
    than 64 characters.
    """
    if any("_" in band for band in bands):
        text = json.dumps(bands)  # '["a", "b"]': ", " separator, ASCII escaping, like Python
        return hashlib.sha256(text.encode()).hexdigest()
    joined = "_".join(bands)
    if len(joined) > 64:
        return hashlib.sha256(joined.encode()).hexdigest()
    return joined


@dataclasses.dataclass
class BandSetConfig:
    dtype: str
    bands: list[str]
    format: dict[str, Any]
    zoom_offset: int = 0
    spatial_size: tuple[int, int] | None = None
    nodata_value: float | None = None

    @property
    def numpy_dtype(self):
        return NUMPY_DTYPES[self.dtype]

    @property
    def dir_name(self) -> str:
        return band_set_dir_name(self.bands)

    @property
    def format_name(self) -> str:
        """'geotiff', 'single_image', 'image_tile' or 'numpy'."""
        if "class_path" in self.format:
            name = self.format["class_path"].rsplit(".", 1)[-1]
            return {
                "GeotiffRasterFormat": "geotiff",
                "SingleImageRasterFormat": "single_image",
                "ImageTileRasterFormat": "image_tile",
                "NumpyRasterFormat": "numpy",
            }.get(name, name)
        return self.format.get("name", "geotiff")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "bands": list(self.bands)}
        if self.zoom_offset:
            out["zoom_offset"] = self.zoom_offset
        if self.nodata_value is not None:
            out["nodata_value"] = self.nodata_value
        return out


@dataclasses.dataclass
class LayerConfig:
    type: str  # "raster" | "vector"
    band_sets: list[BandSetConfig]
    vector_format: dict[str, Any]
    raw: dict[str, Any]

    @property
    def class_property_name(self) -> str | None:
        return self.raw.get("class_property_name")

    def band_set_for(self, band: str) -> BandSetConfig | None:
        for band_set in self.band_sets:
            if band in band_set.bands:
                return band_set
        return None


def _parse_band_set(d: Any, where: str) -> BandSetConfig:
    if not isinstance(d, dict):
        raise DatasetConfigError(f"{where}: a band set must be an object")
    unknown = set(d) - BAND_SET_KEYS
    if unknown:
        raise DatasetConfigError(f"{where}: unknown band set keys {sorted(unknown)}")
    dtype = d.get("dtype")
    if dtype not in NUMPY_DTYPES:
        raise DatasetConfigError(f"{where}.dtype: expected one of {sorted(NUMPY_DTYPES)}, got {dtype!r}")
    if ("bands" in d) == ("num_bands" in d):
        raise DatasetConfigError(f"{where}: exactly one of 'bands' and 'num_bands' must be given")
    bands = list(d["bands"]) if "bands" in d else [f"B{i}" for i in range(int(d["num_bands"]))]
    zoom = int(d.get("zoom_offset", 0))
    spatial = d.get("spatial_size")
    if spatial is not None:
        spatial = tuple(int(v) for v in spatial)
        if zoom != 0:
            raise DatasetConfigError(f"{where}: spatial_size and non-zero zoom_offset are mutually exclusive")
        if len(spatial) != 2 or any(v <= 0 for v in spatial):
            raise DatasetConfigError(f"{where}.spatial_size: values must be 2 positive integers, got {list(spatial)}")
    nodata = d.get("nodata_value")
    if nodata is None and d.get("nodata_vals"):
        values = set(d["nodata_vals"])
        if len(values) != 1:
            raise DatasetConfigError(f"{where}.nodata_vals: expected a single unique value, got {sorted(values)}")
        nodata = values.pop()
    fmt = d.get("format") or {"class_path": "rslearn.utils.raster_format.GeotiffRasterFormat"}
    return BandSetConfig(dtype=dtype, bands=bands, format=fmt, zoom_offset=zoom, spatial_size=spatial, nodata_value=nodata)


def _parse_layer(name: str, d: Any, where: str) -> LayerConfig:
    if "." in name:
        raise DatasetConfigError(f"{where}: layer names must not contain '.', got {name!r}")
    if not isinstance(d, dict):
        raise DatasetConfigError(f"{where}: a layer config must be an object")
    unknown = set(d) - LAYER_KEYS
    if unknown:
        raise DatasetConfigError(f"{where}: unknown layer keys {sorted(unknown)}")
    layer_type = d.get("type")
    if layer_type not in ("raster", "vector"):
        raise DatasetConfigError(f"{where}.type: expected 'raster' or 'vector', got {layer_type!r}")
    band_sets = [_parse_band_set(b, f"{where}.band_sets.{i}") for i, b in enumerate(d.get("band_sets") or [])]
    if layer_type == "raster" and not band_sets:
        raise DatasetConfigError(f"{where}.band_sets: raster layers need at least one band set")
    vector_format = d.get("vector_format") or {"class_path": "rslearn.utils.vector_format.GeojsonVectorFormat"}
    return LayerConfig(type=layer_type, band_sets=band_sets, vector_format=vector_format, raw=d)


@dataclasses.dataclass
class DatasetConfig:
    layers: dict[str, LayerConfig]
    raw: dict[str, Any]

    @classmethod
    def from_text(cls, text: str, source: str = "config.json") -> "DatasetConfig":
        try:
            d = json.loads(substitute_env(text))
        except json.JSONDecodeError as e:
            raise DatasetConfigError(f"{source}: invalid JSON: {e}") from None
        if not isinstance(d, dict):
            raise DatasetConfigError(f"{source}: the top level must be an object")
        unknown = set(d) - DATASET_KEYS
        if unknown:
            raise DatasetConfigError(f"{source}: unknown keys {sorted(unknown)}")
        if "layers" not in d or not isinstance(d["layers"], dict):
            raise DatasetConfigError(f"{source}: 'layers' (an object) is required")
        layers = {name: _parse_layer(name, ld, f"{source}: layers.{name}") for name, ld in d["layers"].items()}
        return cls(layers=layers, raw=d)

    @classmethod
    def load(cls, dataset_path: str) -> "DatasetConfig":
        path = os.path.join(dataset_path, "config.json")
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise DatasetConfigError(f"cannot read dataset config {path}: {e.strerror}") from None
        return cls.from_text(text, source=path)


class DType(str, __import__("enum").Enum):
    """Raster data types (rslearn ``DType``); configs use the member names (``FLOAT32``)."""

    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"

    @property
    def numpy_dtype(self):
        return NUMPY_DTYPES[self.value]
