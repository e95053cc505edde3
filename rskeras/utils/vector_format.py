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


def parse_geometry(d: Any, where: str) -> shapely.Geometry:
    """A shapely geometry from a GeoJSON geometry dict.

    Malformed geometries (unknown type, too few coordinates, missing coordinates) raise
    VectorReadError naming ``where``; well-formed but topologically invalid ones (e.g. a
    self-intersecting ring) are repaired with ``make_valid``, as rslearn repairs
    geometries after re-projection.
    """
    if not isinstance(d, dict):
        raise VectorReadError(f"{where}: missing or non-object geometry ({d!r:.80})")
    try:
        geom = shapely.geometry.shape(d)
    except Exception as e:  # shapely raises ValueError/TypeError/GEOSException/KeyError...
        raise VectorReadError(f"{where}: invalid geometry {type(e).__name__}: {e}") from None
    check_coordinates(geom, where)
    try:
        if not geom.is_valid:
            geom = shapely.validation.make_valid(geom)
    except Exception as e:  # GEOS failures on degenerate geometries
        raise VectorReadError(f"{where}: invalid geometry {type(e).__name__}: {e}") from None
    return geom


# Coordinates beyond this magnitude (in any unit: pixels, metres, degrees) are no place
# on Earth; they overflow once converted to pixels or to float32/int64.
MAX_COORDINATE = 1e12


def check_coordinates(geom: shapely.Geometry, where: str) -> None:
    """Raises VectorReadError naming ``where`` for non-finite (NaN, Infinity) or absurdly
    large (beyond :data:`MAX_COORDINATE`) coordinates."""
    coords = shapely.get_coordinates(geom)
    if coords.size == 0:
        return
    if not np.isfinite(coords).all():
        raise VectorReadError(f"{where}: non-finite coordinate {coords[~np.isfinite(coords).all(axis=1)][0].tolist()}")
    largest = float(np.abs(coords).max())
    if largest > MAX_COORDINATE:
        raise VectorReadError(f"{where}: coordinate {largest:g} is out of range (|coordinate| > {MAX_COORDINATE:g})")


def read_geojson(path: str) -> tuple[Projection, list[Feature]]:
    """Reads a FeatureCollection: (its projection, features in that projection)."""
    try:
        with open(path) as f:
            fc = json.load(f)
    except FileNotFoundError:
        raise VectorReadError(f"missing GeoJSON file {path}") from None
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
        if not isinstance(fd, dict):
            raise VectorReadError(f"{path}: feature {i} is not an object")
        geom = parse_geometry(fd.get("geometry"), f"{path}: feature {i}")
        features.append(Feature(geom, dict(fd.get("properties") or {})))
    return projection, features


def read_features_for_window(path: str, projection: Projection, bounds: PixelBounds) -> list[Feature]:
    """Features of ``path`` intersecting ``bounds``, in absolute pixel coordinates of
    ``projection`` (unclipped), in stored order."""
    src_projection, features = read_geojson(path)
    box = shapely.box(*bounds)
    out = []
    for i, feature in enumerate(features):
        try:
            geom = reproject_geometry(feature.geometry, src_projection, projection)
            hit = geom.intersects(box)
        except Exception as e:  # pyproj / GEOS failures on odd geometries
            raise VectorReadError(f"{path}: feature {i}: cannot project/intersect geometry: {e}") from None
        check_coordinates(geom, f"{path}: feature {i} (in window pixel coordinates)")
        if hit:
            out.append(Feature(geom, feature.properties))
    return out


COORDINATE_MODES = ("pixel", "crs", "wgs84")


def geojson_coordinate_mode(vector_format: dict[str, Any] | None, where: str = "vector_format") -> str:
    """The ``coordinate_mode`` of a layer's ``vector_format`` config (default "pixel").

    Accepts ``{"class_path": "...GeojsonVectorFormat", "init_args": {...}}`` and the legacy
    ``{"name": "geojson", ...}`` form; other vector formats are rejected.
    """
    vf = vector_format or {}
    if "class_path" in vf:
        name = str(vf["class_path"]).rsplit(".", 1)[-1]
        args = vf.get("init_args") or {}
        if name != "GeojsonVectorFormat":
            raise ValueError(f"{where}: only GeojsonVectorFormat is supported, got {vf['class_path']}")
    else:
        name = vf.get("name", "geojson")
        args = vf
        if name != "geojson":
            raise ValueError(f"{where}: only the geojson vector format is supported, got {name!r}")
    mode = str(args.get("coordinate_mode", "pixel")).lower()
    if mode not in COORDINATE_MODES:
        raise ValueError(f"{where}: coordinate_mode must be one of {COORDINATE_MODES}, got {mode!r}")
    return mode


def features_to_geojson(features: list[Feature], projection: Projection, coordinate_mode: str = "pixel") -> dict[str, Any]:
    """FeatureCollection of features given in pixel coordinates of ``projection``.

    ``pixel`` (rslearn's default) keeps the pixel coordinates and stores the projection
    in the collection's ``properties``; ``crs`` writes CRS units with a standard ``crs``
    member (WKT); ``wgs84`` writes lon/lat. An empty list is written as a WGS84
    collection with a ``crs`` member, as rslearn does.
    """
    if coordinate_mode not in COORDINATE_MODES:
        raise ValueError(f"coordinate_mode must be one of {COORDINATE_MODES}, got {coordinate_mode!r}")
    if not features or coordinate_mode == "wgs84":
        out_projection = WGS84_PROJECTION
        header: dict[str, Any] = {"crs": {"type": "name", "properties": {"name": WGS84_PROJECTION.rasterio_crs.to_wkt()}}}
    elif coordinate_mode == "pixel":
        out_projection = projection
        header = {"properties": projection.to_json()}
    else:
        out_projection = Projection(projection.crs, 1.0, 1.0)
        header = {"crs": {"type": "name", "properties": {"name": projection.rasterio_crs.to_wkt()}}}
    out_features = []
    for f in features:
        geom = f.geometry if out_projection is projection else reproject_geometry(f.geometry, projection, out_projection)
        out_features.append(Feature(geom, f.properties).to_geojson())
    return {"type": "FeatureCollection", **header, "features": out_features}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_geojson(path: str, features: list[Feature], projection: Projection, coordinate_mode: str = "pixel", root: str | None = None) -> None:
    """Writes features (pixel coordinates of ``projection``) atomically and durably (with
    ``root``: only inside it, see ``rskeras.utils.fileio.atomic_path``)."""
    atomic_write_text(path, json.dumps(features_to_geojson(features, projection, coordinate_mode), default=_json_default), root)
