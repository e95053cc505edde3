"""GeoTIFF reading onto a window grid and writing (rslearn ``GeotiffRasterFormat``)."""

from __future__ import annotations

import errno
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


class RasterWriteError(OSError):
    """A GeoTIFF could not be written completely (the message names the file)."""


def _write_failure(path: str, error: BaseException | str) -> RasterWriteError:
    """A RasterWriteError for ``path``, saying when its file system is full."""
    detail = str(error)
    cause = getattr(error, "__cause__", None) or getattr(error, "__context__", None)
    if cause is not None and str(cause) and str(cause) not in detail:
        detail += f" ({cause})"
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        full = st.f_bavail == 0 or st.f_favail == 0
    except OSError:
        full = False
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        full = True
    if full and "No space left" not in detail:
        detail += " (No space left on device)"
    err = RasterWriteError(f"cannot write GeoTIFF {path}: {detail}")
    if full:
        err.errno = errno.ENOSPC
    return err


def verify_geotiff(path: str, count: int, height: int, width: int) -> None:
    """Reads back every block of a just-written GeoTIFF: GDAL reports some write failures
    (e.g. a full disk while flushing a small file at close) only by leaving a truncated
    or empty file."""
    try:
        with rasterio.open(path) as src:
            if (src.count, src.height, src.width) != (count, height, width):
                raise RasterWriteError(f"{src.count}x{src.height}x{src.width} instead of {count}x{height}x{width}")
            for _, window in src.block_windows(1):
                src.read(window=window)
    except RASTER_ERRORS + (RasterWriteError,) as e:
        raise _write_failure(path, f"the written file is incomplete: {e}") from None


def geotiff_profile(
    count: int,
    height: int,
    width: int,
    dtype: Any,
    crs: Any,
    transform: Any,
    nodata: float | None = None,
    block_size: int = 512,
    tiled: bool | None = None,
    compress: str = "lzw",
    geotiff_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The GTiff creation profile: ``compress`` (LZW as rslearn), BigTIFF when needed,
    ``block_size`` tiles when the raster is larger than a block or ``tiled``, nodata tag
    only when given, ``geotiff_options`` last."""
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": np.dtype(dtype).name,
        "crs": crs,
        "transform": transform,
        "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled or (tiled is None and (width > block_size or height > block_size)):
        profile.update(tiled=True, blockxsize=block_size, blockysize=block_size)
    profile.update(geotiff_options or {})
    return profile


def write_geotiff(
    path: str,
    array: np.ndarray,
    projection: Projection,
    bounds: PixelBounds,
    nodata: float | None = None,
    block_size: int = 512,
    always_enable_tiling: bool = False,
    geotiff_options: dict[str, Any] | None = None,
    root: str | None = None,
) -> None:
    """Writes ``array`` ``[bands, H, W]`` as an LZW GeoTIFF covering ``bounds``, atomically
    and durably (temporary file read back, flushed to disk, then renamed).

    As rslearn's ``GeotiffRasterFormat``: tiled with ``block_size`` blocks only when the
    raster is larger than a block (or ``always_enable_tiling``), nodata tag only when
    given, ``geotiff_options`` passed to rasterio last. With ``root`` the file's directory
    must resolve inside ``root`` (``rskeras.utils.fileio.atomic_path``). Failures (a full
    disk included) raise :class:`RasterWriteError` naming ``path``.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_geotiff: array must be [bands, H, W], got shape {array.shape}")
    bands, height, width = array.shape
    if (width, height) != (bounds[2] - bounds[0], bounds[3] - bounds[1]):
        raise ValueError(f"write_geotiff: array size {width}x{height} does not match bounds {bounds}")
    profile = geotiff_profile(
        bands,
        height,
        width,
        array.dtype,
        projection.rasterio_crs,
        projection.transform_for(bounds),
        nodata,
        block_size,
        True if always_enable_tiling else None,
        geotiff_options=geotiff_options,
    )
    with GeoTIFFWriter(path, profile, root) as dst:
        dst.write(array, 0, 0)


class GeoTIFFWriter:
    """Writes a GeoTIFF block by block (``write(array, col, row)``) into a temporary file
    beside ``path``; on a clean exit the file is read back (:func:`verify_geotiff`),
    optionally converted to a Cloud Optimized GeoTIFF, flushed and renamed onto ``path``.
    On any error the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the target file.
        profile: the GTiff creation profile (:func:`geotiff_profile`).
        root: directories must resolve inside it (see ``atomic_path``).
        cog: rewrite the finished file with GDAL's COG driver (overviews, tiles in
            COG order; streams block by block).
    """

    def __init__(self, path: str, profile: dict[str, Any], root: str | None = None, cog: bool = False):
        self.path = path
        self.profile = dict(profile)
        self.root = root
        self.cog = cog
        self._atomic: Any = None
        self._dst: Any = None

    def __enter__(self) -> "GeoTIFFWriter":
        self._atomic = atomic_path(self.path, self.root)
        self.tmp = self._atomic.__enter__()
        try:
            self._dst = rasterio.open(self.tmp, "w", **self.profile)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, RASTER_ERRORS + (OSError,)):
                raise _write_failure(self.path, e) from None
            raise
        return self

    def write(self, array: np.ndarray, col: int, row: int) -> None:
        """Writes ``array`` ``[bands, h, w]`` with its top-left pixel at (col, row)."""
        array = np.asarray(array)
        window = rasterio.windows.Window(col, row, array.shape[2], array.shape[1])
        try:
            self._dst.write(array, window=window)
        except RASTER_ERRORS + (OSError,) as e:
            raise _write_failure(self.path, e) from None

    def _finish(self) -> None:
        try:
            self._dst.close()
        except RASTER_ERRORS + (OSError,) as e:
            raise _write_failure(self.path, e) from None
        verify_geotiff(self.tmp, self.profile["count"], self.profile["height"], self.profile["width"])
        if self.cog:
            import rasterio.shutil

            cog_tmp = self.tmp + ".cog.tif"
            options = {"compress": self.profile.get("compress", "lzw"), "BLOCKSIZE": self.profile.get("blockxsize", 512), "BIGTIFF": "IF_SAFER"}
            try:
                rasterio.shutil.copy(self.tmp, cog_tmp, driver="COG", **options)
                verify_geotiff(cog_tmp, self.profile["count"], self.profile["height"], self.profile["width"])
                os.replace(cog_tmp, self.tmp)
            except RASTER_ERRORS + (OSError,) as e:
                raise _write_failure(self.path, e) from None
            finally:
                if os.path.exists(cog_tmp):
                    os.remove(cog_tmp)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._atomic.__exit__(type(e), e, e.__traceback__)
                raise
        else:
            try:
                self._dst.close()
            except Exception:
                pass
        try:
            return bool(self._atomic.__exit__(exc_type, exc, tb))
        except OSError as e:
            raise _write_failure(self.path, e) from None

