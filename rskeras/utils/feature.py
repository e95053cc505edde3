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
