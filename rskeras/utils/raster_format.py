"""GeoTIFF reading onto a window grid and writing (rslearn ``GeotiffRasterFormat``)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import rasterio
import rasterio._err
import rasterio.enums
import rasterio.errors
import rasterio.vrt
import rasterio.windows

from rskeras.utils.fileio import atomic_path
from rskeras.utils.geometry import PixelBounds, Projection

NEAREST = rasterio.enums.Resampling.nearest


class RasterReadError(ValueError):
    """A raster file could not be read (message names the file)."""


def _aligned_offset(src, projection: Projection, bounds: PixelBounds) -> tuple[int, int] | None:
    """(col, row) of ``bounds``' origin in the file when its grid equals the target grid."""
    t = src.transform
    if t.b != 0 or t.d != 0:
        return None
    if not (math.isclose(t.a, projection.x_resolution, rel_tol=1e-9) and math.isclose(t.e, projection.y_resolution, rel_tol=1e-9)):
        return None
    if src.crs is None or not (str(src.crs) == projection.crs or src.crs == projection.rasterio_crs):
        return None
    col = bounds[0] - t.c / t.a
    row = bounds[1] - t.f / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(col)), int(round(row))


# rasterio raises RasterioError subclasses for most failures, but GDAL errors met while
# decoding blocks (truncated or corrupt files) surface as CPLE_* exceptions.
RASTER_ERRORS: tuple[type[BaseException], ...] = (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError)


def read_geotiff(path: str, projection: Projection, bounds: PixelBounds, band_indexes: list[int] | None = None) -> np.ndarray:
    """Reads ``path`` onto the grid (projection, bounds) with nearest resampling.

    Pixels outside the stored raster get the file's nodata value (0 if it has none).
    Returns ``[bands, H, W]`` in the file's dtype. ``band_indexes`` are 1-based.
    When the file's grid equals the target grid (same CRS and resolution, integer
    offset) the pixels are copied with a windowed read; otherwise the file is warped
    through a ``WarpedVRT`` (its own georeference, e.g. a band set stored at another
    zoom offset, decides where each pixel lands).
    """
    return read_geotiff_coverage(path, projection, bounds, band_indexes)[0]


def read_geotiff_coverage(
    path: str, projection: Projection, bounds: PixelBounds, band_indexes: list[int] | None = None
) -> tuple[np.ndarray, float | None]:
    """:func:`read_geotiff`, and the fraction of ``bounds`` that the file covers (0: the
    whole result is fill, e.g. a file in another CRS or with a transform elsewhere; None
    when it cannot be computed)."""
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    try:
        with rasterio.open(path) as src:
            indexes = band_indexes or list(range(1, src.count + 1))
            if max(indexes) > src.count:
                raise RasterReadError(f"raster {path} has {src.count} bands, band index {max(indexes)} was requested")
            fill = src.nodata if src.nodata is not None else 0
            dtype = src.dtypes[0]
            offset = _aligned_offset(src, projection, bounds)
            if offset is not None:
                col, row = offset
                out = np.full((len(indexes), height, width), fill, dtype=dtype)
                c0, r0 = max(col, 0), max(row, 0)
                c1, r1 = min(col + width, src.width), min(row + height, src.height)
                covered = 0.0
                if c1 > c0 and r1 > r0:
                    window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
                    out[:, r0 - row : r1 - row, c0 - col : c1 - col] = src.read(indexes, window=window)
                    covered = (c1 - c0) * (r1 - r0) / max(width * height, 1)
                return out, covered
            if src.crs is None:
                raise RasterReadError(f"raster {path} has no CRS and is not on the window grid")
            covered = _warped_coverage(src, projection, bounds)
            with rasterio.vrt.WarpedVRT(
                src,
                crs=projection.rasterio_crs,
                transform=projection.transform_for(bounds),
                width=width,
                height=height,
                resampling=NEAREST,
                nodata=fill,
            ) as vrt:
                return vrt.read(indexes), covered
    except RASTER_ERRORS as e:
        detail = str(e)
        cause = e.__cause__ or e.__context__
        if cause is not None and str(cause) and str(cause) not in detail:
            detail += f" ({cause})"
        raise RasterReadError(f"cannot read raster {path}: {detail}") from None


def _warped_coverage(src, projection: Projection, bounds: PixelBounds) -> float | None:
    """The fraction of ``bounds`` inside the bounding box of the file's footprint in the
    target CRS (an upper bound of what the warp fills; None if it cannot be computed)."""
    import rasterio.warp

    try:
        left, bottom, right, top = rasterio.warp.transform_bounds(src.crs, projection.rasterio_crs, *src.bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - the file's extent has no place in the target CRS
        return 0.0
    xs = sorted((left / projection.x_resolution, right / projection.x_resolution))
    ys = sorted((bottom / projection.y_resolution, top / projection.y_resolution))
    if not all(math.isfinite(v) for v in xs + ys):
        return 0.0
    w = max(0.0, min(xs[1], bounds[2]) - max(xs[0], bounds[0]))
    h = max(0.0, min(ys[1], bounds[3]) - max(ys[0], bounds[1]))
    return min(1.0, w * h / max((bounds[2] - bounds[0]) * (bounds[3] - bounds[1]), 1))


def read_timestep_metadata(raster_dir: str) -> dict[str, Any] | None:
    """The optional multi-timestep sidecar ``metadata.json`` next to a GeoTIFF.

    Returns ``{"num_channels", "num_timesteps", "timestamps"}`` (timestamps as a list of
    ``[start_iso, end_iso]`` or None), or None without a sidecar.
    """
    path = os.path.join(raster_dir, "metadata.json")
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise RasterReadError(f"malformed raster sidecar {path}: {e}") from None
    if not isinstance(d, dict):
        raise RasterReadError(f"malformed raster sidecar {path}: expected an object")
    try:
        t = d.get("num_timesteps")
        c = d.get("num_channels")
        d["num_timesteps"] = int(t) if t is not None else None
        d["num_channels"] = int(c) if c is not None else None
        ts = d.get("timestamps")
        if ts is not None:
            ts = [[str(a), str(b)] for a, b in ts]
        d["timestamps"] = ts
    except (TypeError, ValueError) as e:
        raise RasterReadError(f"malformed raster sidecar {path}: {e}") from None
    return d


def write_geotiff(
    path: str,
    array: np.ndarray,
    projection: Projection,
    bounds: PixelBounds,
    nodata: float | None = None,
    block_size: int = 512,
    always_enable_tiling: bool = False,
    geotiff_options: dict[str, Any] | None = None,
) -> None:
    """Writes ``array`` ``[bands, H, W]`` as an LZW GeoTIFF covering ``bounds``, atomically.

    As rslearn's ``GeotiffRasterFormat``: tiled with ``block_size`` blocks only when the
    raster is larger than a block (or ``always_enable_tiling``), nodata tag only when
    given, ``geotiff_options`` passed to rasterio last.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_geotiff: array must be [bands, H, W], got shape {array.shape}")
    bands, height, width = array.shape
    if (width, height) != (bounds[2] - bounds[0], bounds[3] - bounds[1]):
        raise ValueError(f"write_geotiff: array size {width}x{height} does not match bounds {bounds}")
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": array.dtype.name,
        "crs": projection.rasterio_crs,
        "transform": projection.transform_for(bounds),
        "compress": "lzw",
        "BIGTIFF": "IF_SAFER",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if always_enable_tiling or width > block_size or height > block_size:
        profile.update(tiled=True, blockxsize=block_size, blockysize=block_size)
    profile.update(geotiff_options or {})
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
