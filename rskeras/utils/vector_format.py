"""GeoJSON vector layers (rslearn ``GeojsonVectorFormat``).

rslearn's default ``coordinate_mode`` is ``pixel``: coordinates are pixel coordinates of a
projection stored in the collection's top-level ``properties``. Decoding rule: collection
``properties.crs`` -> that pixel projection; else a ``crs`` member -> that CRS with
resolution (1, 1); else WGS84 lon/lat.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import rasterio.warp
import shapely
import shapely.affinity
import shapely.geometry
import shapely.validation

from rskeras.utils.feature import Feature
from rskeras.utils.fileio import atomic_write_text
from rskeras.utils.geometry import WGS84_PROJECTION, PixelBounds, Projection


class VectorReadError(ValueError):
    """A GeoJSON file could not be decoded (message names the file)."""


def collection_projection(fc: dict[str, Any]) -> Projection:
    """The projection a FeatureCollection's coordinates are expressed in."""
    props = fc.get("properties")
    if isinstance(props, dict) and "crs" in props:
        return Projection.from_json(props)
    crs = fc.get("crs")
    if isinstance(crs, dict):
        name = (crs.get("properties") or {}).get("name")
        if name:
            return Projection(str(name), 1.0, 1.0)
    return WGS84_PROJECTION


def reproject_geometry(geom: shapely.Geometry, src: Projection, dst: Projection) -> shapely.Geometry:
    """Converts a geometry between projections (pixel coordinates of each)."""
    if src.same_crs(dst):
        if src.x_resolution == dst.x_resolution and src.y_resolution == dst.y_resolution:
            return geom
        return shapely.affinity.scale(
            geom, xfact=src.x_resolution / dst.x_resolution, yfact=src.y_resolution / dst.y_resolution, origin=(0, 0)
        )
    crs_geom = shapely.affinity.scale(geom, xfact=src.x_resolution, yfact=src.y_resolution, origin=(0, 0))
    mapped = rasterio.warp.transform_geom(src.rasterio_crs, dst.rasterio_crs, shapely.geometry.mapping(crs_geom))
    out = shapely.geometry.shape(mapped)
    out = shapely.affinity.scale(out, xfact=1 / dst.x_resolution, yfact=1 / dst.y_resolution, origin=(0, 0))
    if not out.is_valid:
        out = shapely.validation.make_valid(out)
    return out


def read_geojson(path: str) -> tuple[Projection, list[Feature]]:
    """Reads a FeatureCollection: (its projection, features in that projection)."""
    try:
        with open(path) as f:
            fc = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VectorReadError(f"cannot read GeoJSON {path}: {e}") from None
    if not isinstance(fc, dict) or fc.get("type") != "FeatureCollection":
        raise VectorReadError(f"{path}: not a GeoJSON FeatureCollection")
    try:
        projection = collection_projection(fc)
    except (KeyError, TypeError, ValueError) as e:
        raise VectorReadError(f"{path}: invalid collection projection ({e!r})") from None
    features = []
    for i, fd in enumerate(fc.get("features") or []):
        try:
            geom = shapely.geometry.shape(fd["geometry"])
        except Exception as e:  # shapely raises several types for bad geometry
            raise VectorReadError(f"{path}: feature {i} has an invalid geometry: {e}") from None
        features.append(Feature(geom, dict(fd.get("properties") or {})))
    return projection, features


def read_features_for_window(path: str, projection: Projection, bounds: PixelBounds) -> list[Feature]:
    """Features of ``path`` intersecting ``bounds``, in absolute pixel coordinates of
    ``projection`` (unclipped), in stored order."""
    src_projection, features = read_geojson(path)
    box = shapely.box(*bounds)
    out = []
    for feature in features:
        geom = reproject_geometry(feature.geometry, src_projection, projection)
        if geom.intersects(box):
            out.append(Feature(geom, feature.properties))
    return out


def _round_coords(geom: shapely.Geometry) -> dict[str, Any]:
    return shapely.geometry.mapping(geom)


def features_to_geojson(features: list[Feature], projection: Projection) -> dict[str, Any]:
    """FeatureCollection in pixel coordinate mode (projection in collection properties).

    An empty list is written as a WGS84 collection with a ``crs`` member, as rslearn does.
    """
    if not features:
        return {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": "EPSG:4326"}},
            "features": [],
        }
    return {
        "type": "FeatureCollection",
        "properties": projection.to_json(),
        "features": [f.to_geojson() for f in features],
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_geojson(path: str, features: list[Feature], projection: Projection) -> None:
    """Writes features (pixel coordinates of ``projection``) atomically."""
    atomic_write_text(path, json.dumps(features_to_geojson(features, projection), default=_json_default))
