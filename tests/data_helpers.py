"""Builders of tiny rslearn datasets for the data-pipeline tests (GeoTIFFs via rasterio)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from rskeras.config.dataset import band_set_dir_name

CRS = "EPSG:32610"
PROJ = {"crs": CRS, "x_resolution": 10.0, "y_resolution": -10.0}


def write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def make_config(root: str, layers: dict[str, Any]) -> None:
    write_json(os.path.join(root, "config.json"), {"layers": layers})


def window_dir(root: str, name: str, group: str = "default") -> str:
    return os.path.join(root, "windows", group, name)


def add_window(root: str, name: str, bounds, group: str = "default", options: dict | None = None, projection: dict | None = None) -> str:
    wdir = window_dir(root, name, group)
    write_json(
        os.path.join(wdir, "metadata.json"),
        {"projection": projection or PROJ, "bounds": list(bounds), "time_range": None, "options": options or {}},
    )
    return wdir


def layer_dirname(layer: str, group_idx: int = 0) -> str:
    return layer if group_idx == 0 else f"{layer}.{group_idx}"


def mark_completed(wdir: str, layer: str, group_idx: int = 0) -> None:
    d = os.path.join(wdir, "layers", layer_dirname(layer, group_idx))
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "completed"), "w").close()


def write_tif(path: str, array: np.ndarray, bounds, x_res: float = 10.0, y_res: float = -10.0, nodata=None, crs: str = CRS) -> None:
    """Writes ``array`` [bands, H, W] covering pixel ``bounds`` of a (crs, x_res, y_res) grid."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bands, h, w = array.shape
    transform = Affine(x_res, 0, bounds[0] * x_res, 0, y_res, bounds[1] * y_res)
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=array.dtype.name, crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def add_raster(
    wdir: str,
    layer: str,
    bands: list[str],
    array: np.ndarray,
    bounds,
    group_idx: int = 0,
    completed: bool = True,
    sidecar: dict | None = None,
    **kwargs,
) -> str:
    """Writes ``layers/<layer>[.<g>]/<bandset dir>/geotiff.tif`` (+ optional sidecar)."""
    d = os.path.join(wdir, "layers", layer_dirname(layer, group_idx), band_set_dir_name(bands))
    path = os.path.join(d, "geotiff.tif")
    write_tif(path, array, bounds, **kwargs)
    if sidecar is not None:
        write_json(os.path.join(d, "metadata.json"), sidecar)
    if completed:
        mark_completed(wdir, layer, group_idx)
    return path


def add_vector(wdir: str, layer: str, features: list[dict], group_idx: int = 0, projection: dict | None = None, collection: dict | None = None) -> str:
    """Writes ``data.geojson`` in pixel mode (projection in the collection properties)
    unless ``collection`` gives the whole FeatureCollection."""
    fc = collection or {"type": "FeatureCollection", "properties": projection or PROJ, "features": features}
    path = os.path.join(wdir, "layers", layer_dirname(layer, group_idx), "data.geojson")
    write_json(path, fc)
    mark_completed(wdir, layer, group_idx)
    return path


def point(x: float, y: float, **props) -> dict:
    return {"type": "Feature", "properties": props, "geometry": {"type": "Point", "coordinates": [x, y]}}


def box(x0: float, y0: float, x1: float, y1: float, **props) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}}


class RawTask:
    """A task whose inputs are the raw inputs (rasters as-is, vectors' bounds) and
    targets empty: lets tests look at exactly what the reader produced."""

    def __init__(self, property_names: list[str] | None = None):
        self.property_names = list(property_names or [])

    def vector_property_names(self):
        return self.property_names

    def target_padding_values(self):
        return {}

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        out = {}
        for key, value in raw_inputs.items():
            if isinstance(value, dict):
                out[key + "_bounds"] = value["bounds"]
                for name, col in value["properties"].items():
                    out[f"{key}_{name}"] = col
            else:
                out[key] = value
        return out, {}


def collect(dm, stage: str, shuffle: bool | None = None, epochs: int = 1) -> list[tuple[dict, dict]]:
    """(inputs, metadata) numpy dicts of every example of ``stage`` (unbatched), for
    ``epochs`` passes over one pipeline."""
    out = []
    ds = dm.tf_dataset(stage, batch=False, with_metadata=True, shuffle=shuffle)
    for _ in range(epochs):
        for inputs, _targets, metadata in ds:
            out.append(({k: v.numpy() for k, v in inputs.items()}, {k: v.numpy() for k, v in metadata.items()}))
    return out


def by_window(examples: list[tuple[dict, dict]], name: str) -> list[tuple[dict, dict]]:
    return [e for e in examples if e[1]["window_name"] == name.encode()]
