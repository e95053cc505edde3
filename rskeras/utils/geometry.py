"""Projections and pixel bounds (rslearn's ``Projection`` / ``PixelBounds``)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import affine
import rasterio.crs

PixelBounds = tuple[int, int, int, int]  # (x_min, y_min, x_max, y_max), end-exclusive


@functools.lru_cache(maxsize=256)
def parse_crs(text: str) -> rasterio.crs.CRS:
    """Parses a CRS string (EPSG code, WKT, PROJ) once."""
    return rasterio.crs.CRS.from_string(text)


@dataclasses.dataclass(frozen=True)
class Projection:
    """A CRS plus per-axis resolution (projection units per pixel).

    Pixel coordinate = CRS coordinate / resolution, per axis; ``y_resolution`` is normally
    negative so that rows grow southward.
    """

    crs: str
    x_resolution: float
    y_resolution: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Projection":
        return cls(str(d["crs"]), float(d["x_resolution"]), float(d["y_resolution"]))

    def to_json(self) -> dict[str, Any]:
        return {"crs": self.crs, "x_resolution": self.x_resolution, "y_resolution": self.y_resolution}

    @property
    def rasterio_crs(self) -> rasterio.crs.CRS:
        return parse_crs(self.crs)

    def same_crs(self, other: "Projection") -> bool:
        return self.crs == other.crs or self.rasterio_crs == other.rasterio_crs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return (
            self.same_crs(other)
            and math.isclose(self.x_resolution, other.x_resolution, rel_tol=1e-6)
            and math.isclose(self.y_resolution, other.y_resolution, rel_tol=1e-6)
        )

    def __hash__(self) -> int:
        return hash((self.crs, round(self.x_resolution, 6), round(self.y_resolution, 6)))

    def transform_for(self, bounds: PixelBounds) -> affine.Affine:
        """GeoTIFF geotransform of a raster covering ``bounds`` in this projection."""
        return affine.Affine(self.x_resolution, 0, bounds[0] * self.x_resolution, 0, self.y_resolution, bounds[1] * self.y_resolution)

    def scaled(self, factor_x: float, factor_y: float | None = None) -> "Projection":
        """Projection whose pixels are ``factor`` times smaller (finer) per axis."""
        factor_y = factor_x if factor_y is None else factor_y
        return Projection(self.crs, self.x_resolution / factor_x, self.y_resolution / factor_y)


WGS84_PROJECTION = Projection("EPSG:4326", 1.0, 1.0)


def intersects(a: PixelBounds, b: PixelBounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class ResolutionFactor:
    """Multiplier of a projection's resolution: an integer ``numerator`` (finer) or
    ``1/denominator`` (coarser)."""

    def __init__(self, numerator: int = 1, denominator: int = 1):
        if numerator != 1 and denominator != 1:
            raise ValueError(f"ResolutionFactor: one of numerator ({numerator}) or denominator ({denominator}) must be 1")
        if not isinstance(numerator, int) or not isinstance(denominator, int) or numerator < 1 or denominator < 1:
            raise ValueError(f"ResolutionFactor: numerator and denominator must be integers >= 1, got {numerator}, {denominator}")
        self.numerator = numerator
        self.denominator = denominator

    def __repr__(self) -> str:
        return f"ResolutionFactor(numerator={self.numerator}, denominator={self.denominator})"

    @property
    def value(self) -> float:
        return self.numerator / self.denominator

    def multiply_projection(self, projection: Projection) -> Projection:
        if self.denominator > 1:
            return Projection(projection.crs, projection.x_resolution * self.denominator, projection.y_resolution * self.denominator)
        return Projection(projection.crs, projection.x_resolution / self.numerator, projection.y_resolution / self.numerator)

    def multiply_bounds(self, bounds: PixelBounds) -> PixelBounds:
        if self.denominator > 1:
            width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
            if width % self.denominator or height % self.denominator:
                raise ValueError(
                    f"width {width} or height {height} is not a multiple of the resolution factor {self.denominator}"
                )
            return tuple(b // self.denominator for b in bounds)  # type: ignore[return-value]
        return tuple(b * self.numerator for b in bounds)  # type: ignore[return-value]
