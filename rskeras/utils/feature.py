"""Vector features as tasks produce them and writers store them."""

from __future__ import annotations

import dataclasses
from typing import Any

import shapely


@dataclasses.dataclass
class Feature:
    """A geometry in absolute window pixel coordinates plus a properties dict.

    rslearn's ``Feature`` carries an ``STGeometry`` (projection + shapely geometry); in
    rskeras the projection is the window's, supplied by whoever writes the feature.
    """

    geometry: shapely.Geometry
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_geojson(self) -> dict:
        """GeoJSON Feature dict (coordinates as stored, i.e. pixel coordinates)."""
        return {
            "type": "Feature",
            "properties": dict(self.properties),
            "geometry": shapely.geometry.mapping(self.geometry),
        }


def property_text(value: Any) -> str:
    """Renders a property value as the text stored in vector tensors.

    Floats use ``repr`` (round-trips exactly through float parsing), bools become
    "True"/"False" like Python's ``str``; everything else uses ``str``.
    """
    if isinstance(value, float):
        return repr(value)
    return str(value)


def utf8_array(texts: list[str]):
    """A 1-D array of the UTF-8 encodings of ``texts`` (what ``tf.string`` holds). Unlike
    numpy's ``astype(bytes)``, any Unicode text works (window names, class names)."""
    import numpy as np

    out = np.empty((len(texts),), dtype=object)
    for i, text in enumerate(texts):
        out[i] = text.encode("utf-8")
    return out if len(texts) else np.zeros((0,), dtype=bytes)


def features_to_tensors(features: list[Feature], property_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Converts features to the raw vector-input form (numpy arrays, see docs/design.md).

    Returns a dict with ``bounds`` float64 [N, 4], ``centroid`` float64 [N, 2],
    ``geometry_type`` bytes [N] and nested dicts ``properties`` / ``has_property`` with
    one [N] column per name in ``property_names``.
    """
    import numpy as np

    n = len(features)
    bounds = np.zeros((n, 4), np.float64)
    centroid = np.zeros((n, 2), np.float64)
    gtypes = []
    for i, f in enumerate(features):
        bounds[i] = f.geometry.bounds if not f.geometry.is_empty else (np.nan,) * 4
        c = f.geometry.centroid
        centroid[i] = (c.x, c.y) if not c.is_empty else (np.nan, np.nan)
        gtypes.append(f.geometry.geom_type)
    props, has = {}, {}
    for name in property_names:
        has[name] = np.array([name in f.properties for f in features], dtype=bool)
        props[name] = utf8_array([property_text(f.properties[name]) if name in f.properties else "" for f in features])
    return {
        "bounds": bounds,
        "centroid": centroid,
        "geometry_type": np.array(gtypes, dtype=bytes) if n else np.zeros((0,), dtype=bytes),
        "properties": props,
        "has_property": has,
    }


def vector_tensor_signature(property_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """tf.TensorSpec structure of :func:`features_to_tensors` output."""
    import tensorflow as tf

    return {
        "bounds": tf.TensorSpec([None, 4], tf.float64),
        "centroid": tf.TensorSpec([None, 2], tf.float64),
        "geometry_type": tf.TensorSpec([None], tf.string),
        "properties": {name: tf.TensorSpec([None], tf.string) for name in property_names},
        "has_property": {name: tf.TensorSpec([None], tf.bool) for name in property_names},
    }
