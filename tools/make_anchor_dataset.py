#!/usr/bin/env python
"""Writes the synthetic "anchor" dataset of the rslearn side-by-side benchmark.

The same dataset feeds the six rslearn configs in ``benchmarks/rslearn/`` (one per task
kind) in both rslearn and rskeras, so both systems train on identical windows. It has the
data semantics of the rslearn anchor kit's generator (the same windows, pixels and labels
for a given seed): 256 train + 64 val windows of 64x64 pixels by default, groups
``train`` / ``val``, each window also tagged ``options.split``.

Layers (rslearn on-disk format, pixel-coordinate GeoJSON, LZW GeoTIFFs):

* ``sentinel2`` (raster, uint16, 12 bands B01..B12 with B8A, no B10; a timestamp sidecar);
* ``label`` (vector): one window polygon ``{"category": water|vegetation|bare_soil,
  "length": 10..100}`` plus 0-4 points ``{"category": ship|platform}``;
* ``segment_label`` (raster, uint8 band ``label``, classes 0-2, nodata 255);
* ``regress_label`` (raster, float32 band ``label``, 0-100);
* ``output_*`` layers declared for prediction.

What a model can learn, per window (``f``, ``g``, ``h`` are random):

* scene class: the band of the class (B02 water, B08 vegetation, B11 bare soil) gets a
  window-wide offset of 1000-1600, the other two 0-400;
* ``length`` = 10 + 90 f, and B05 gets 3000 f;
* segmentation: a smooth field g in [0, 1] is added to B04 (x3000); the class is 0 below
  0.35, 1 below 0.65, else 2; half of the windows have a nodata rectangle in the label;
* per-pixel regression: a smooth field h is added to B06 (x3000), the label is 100 h;
* objects: Gaussian blobs (sigma 1.5 px, +3500) in B03 (ship) or B12 (platform), the
  point at the blob's pixel centre, at least 12 px apart.

Every band also carries a smooth "terrain" field (0-400) and Gaussian noise (sigma 60).

Example: python tools/make_anchor_dataset.py data/anchor
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.config.dataset import band_set_dir_name  # noqa: E402
from rskeras.utils.geometry import Projection  # noqa: E402
from rskeras.utils.raster_format import write_geotiff  # noqa: E402

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
# Reflectance of every band before the signals are added.
BASE_REFLECTANCE = dict(zip(BANDS, [1200, 1000, 900, 300, 400, 300, 1500, 1000, 1700, 1600, 1000, 800]))
SCENE_BANDS = {"water": "B02", "vegetation": "B08", "bare_soil": "B11"}  # classification
OBJECT_BANDS = {"ship": "B03", "platform": "B12"}  # detection
SCENE_CLASSES = list(SCENE_BANDS)
OBJECT_CLASSES = list(OBJECT_BANDS)
SEGMENT_EDGES = (0.35, 0.65)
NODATA = 255
PROJECTION = Projection("EPSG:32610", 10, -10)
GRID_COLUMNS = 32  # windows per row of the placement grid
MAX_OBJECTS = 4
MIN_OBJECT_DISTANCE = 12
BLOB_SIGMA = 1.5
BLOB_AMPLITUDE = 3500.0


def dataset_config() -> dict:
    """``config.json``: the four data layers and the prediction output layers."""
    return {
        "layers": {
            "sentinel2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": BANDS}]},
            "label": {"type": "vector", "class_property_name": "category", "class_names": SCENE_CLASSES + OBJECT_CLASSES},
            "segment_label": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["label"], "nodata_value": NODATA}]},
            "regress_label": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["label"]}]},
            "output_classification": {"type": "vector"},
            "output_regression": {"type": "vector"},
            "output_detection": {"type": "vector"},
            "output_segmentation": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["output"]}]},
            "output_per_pixel_regression": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["output"]}]},
        }
    }


def bilinear_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``[size, size]`` field in [0, 1]: U(0, 1) values on a ``(cells + 1)^2`` lattice,
    interpolated bilinearly at the pixel centres."""
    lattice = rng.uniform(0.0, 1.0, size=(cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) / size * cells
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 1)
    frac = pos - lo
    along_rows = lattice[lo, :] * (1 - frac)[:, None] + lattice[lo + 1, :] * frac[:, None]
    return along_rows[:, lo] * (1 - frac)[None, :] + along_rows[:, lo + 1] * frac[None, :]


@dataclasses.dataclass
class Window:
    """Everything drawn for one window (arrays are ``[H, W]``)."""

    scene_class: str
    length: float
    image: np.ndarray  # uint16 [12, H, W]
    segment: np.ndarray  # uint8
    regress: np.ndarray  # float32
    objects: list[tuple[int, int, str]]  # (column, row, class)
    acquired: datetime
    month_start: datetime
    month_end: datetime


def draw_window(seed: int, index: int, size: int) -> Window:
    """The content of window ``index``: a deterministic function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    month = int(rng.integers(4, 10))
    month_start = datetime(2024, month, 1, tzinfo=timezone.utc)
    month_end = datetime(2024, month + 1, 1, tzinfo=timezone.utc)
    acquired = month_start + timedelta(days=int(rng.integers(0, 28)), hours=18, minutes=50)

    terrain = bilinear_field(rng, size, 4)
    bands = {b: float(BASE_REFLECTANCE[b]) + 400.0 * terrain for b in BANDS}

    scene_class = SCENE_CLASSES[int(rng.integers(0, len(SCENE_CLASSES)))]
    for name, band in SCENE_BANDS.items():
        bands[band] = bands[band] + (rng.uniform(1000, 1600) if name == scene_class else rng.uniform(0, 400))

    f = float(rng.uniform(0, 1))
    bands["B05"] = bands["B05"] + 3000.0 * f

    g = bilinear_field(rng, size, 4)
    bands["B04"] = bands["B04"] + 3000.0 * g
    segment = np.digitize(g, SEGMENT_EDGES).astype(np.uint8)  # 0, 1, 2 with edges inclusive above
    if rng.uniform() < 0.5:
        height = int(rng.integers(size // 8, size // 3))
        width = int(rng.integers(size // 8, size // 3))
        top = int(rng.integers(0, size - height))
        left = int(rng.integers(0, size - width))
        segment[top : top + height, left : left + width] = NODATA

    h = bilinear_field(rng, size, 4)
    bands["B06"] = bands["B06"] + 3000.0 * h
    regress = (100.0 * h).astype(np.float32)

    objects: list[tuple[int, int, str]] = []
    wanted = int(rng.integers(0, MAX_OBJECTS + 1))
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(200):
        if len(objects) >= wanted:
            break
        col, row = int(rng.integers(5, size - 5)), int(rng.integers(5, size - 5))
        if any((col - c) ** 2 + (row - r) ** 2 < MIN_OBJECT_DISTANCE**2 for c, r, _ in objects):
            continue
        name = OBJECT_CLASSES[int(rng.integers(0, len(OBJECT_CLASSES)))]
        blob = np.exp(-((cols - col) ** 2 + (rows - row) ** 2) / (2 * BLOB_SIGMA**2))
        bands[OBJECT_BANDS[name]] = bands[OBJECT_BANDS[name]] + BLOB_AMPLITUDE * blob
        objects.append((col, row, name))

    noisy = [bands[b] + rng.normal(0, 60, size=(size, size)) for b in BANDS]
    image = np.clip(np.round(np.stack(noisy)), 1, 65535).astype(np.uint16)
    return Window(scene_class, round(10.0 + 90.0 * f, 3), image, segment, regress, objects, acquired, month_start, month_end)


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def write_window(root: str, group: str, name: str, index: int, window: Window, size: int) -> dict:
    """Writes one window directory; returns its summary row."""
    # Windows sit on a grid with 32 px gaps (pixel units = metres / 10).
    col0 = 50_000 + (index % GRID_COLUMNS) * (size + 32)
    row0 = -420_000 + (index // GRID_COLUMNS) * (size + 32)
    bounds = (col0, row0, col0 + size, row0 + size)
    wdir = os.path.join(root, "windows", group, name)
    metadata = {
        "projection": PROJECTION.to_json(),
        "bounds": list(bounds),
        "time_range": [window.month_start.isoformat(), window.month_end.isoformat()],
        "options": {"split": group},
    }
    _write_json(os.path.join(wdir, "metadata.json"), metadata)
    layers = os.path.join(wdir, "layers")
    s2_dir = os.path.join(layers, "sentinel2", band_set_dir_name(BANDS))
    write_geotiff(os.path.join(s2_dir, "geotiff.tif"), window.image, PROJECTION, bounds)
    stamp = window.acquired.isoformat()
    _write_json(os.path.join(s2_dir, "metadata.json"), {"num_channels": len(BANDS), "num_timesteps": 1, "timestamps": [[stamp, stamp]]})
    write_geotiff(os.path.join(layers, "segment_label", "label", "geotiff.tif"), window.segment[None], PROJECTION, bounds, nodata=NODATA)
    write_geotiff(os.path.join(layers, "regress_label", "label", "geotiff.tif"), window.regress[None], PROJECTION, bounds)
    x0, y0, x1, y1 = bounds
    features = [
        {
            "type": "Feature",
            "properties": {"category": window.scene_class, "length": window.length},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        }
    ]
    features += [
        {"type": "Feature", "properties": {"category": cls}, "geometry": {"type": "Point", "coordinates": [x0 + c + 0.5, y0 + r + 0.5]}}
        for c, r, cls in window.objects
    ]
    _write_json(os.path.join(layers, "label", "data.geojson"), {"type": "FeatureCollection", "properties": PROJECTION.to_json(), "features": features})
    for layer in ("sentinel2", "label", "segment_label", "regress_label"):  # markers last
        open(os.path.join(layers, layer, "completed"), "w").close()
    return {
        "name": name,
        "group": group,
        "scene_class": window.scene_class,
        "length": window.length,
        "n_objects": len(window.objects),
        "seg_class_frac": [float((window.segment == k).mean()) for k in range(3)],
        "seg_nodata_frac": float((window.segment == NODATA).mean()),
    }


def summarize(rows: list[dict]) -> dict:
    """Per-group label statistics (written to ``synthetic_summary.json``)."""
    stats = {}
    for group in ("train", "val"):
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            continue
        stats[group] = {
            "windows": len(sel),
            "scene_class_counts": {c: sum(r["scene_class"] == c for r in sel) for c in SCENE_CLASSES},
            "length_mean": float(np.mean([r["length"] for r in sel])),
            "length_std": float(np.std([r["length"] for r in sel])),
            "objects_total": int(sum(r["n_objects"] for r in sel)),
            "windows_without_objects": int(sum(r["n_objects"] == 0 for r in sel)),
            "seg_class_frac": [float(np.mean([r["seg_class_frac"][k] for r in sel])) for k in range(3)],
            "seg_nodata_frac": float(np.mean([r["seg_nodata_frac"] for r in sel])),
        }
    return stats


def make_anchor_dataset(out: str, size: int = 64, n_train: int = 256, n_val: int = 64, seed: int = 0) -> dict:
    """Writes the dataset to ``out`` (which must not exist), atomically; returns the stats.

    Window ``w<i>`` (i counted over train then val) depends only on (seed, i, size).
    """
    if size < 32:
        raise ValueError(f"make_anchor_dataset: size must be >= 32, got {size}")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".anchor-", dir=parent)
    try:
        _write_json(os.path.join(tmp, "config.json"), dataset_config())
        rows = []
        groups = ["train"] * n_train + ["val"] * n_val
        for index, group in enumerate(groups):
            rows.append(write_window(tmp, group, f"w{index:05d}", index, draw_window(seed, index, size), size))
        stats = summarize(rows)
        args = {"out": out, "size": size, "n_train": n_train, "n_val": n_val, "seed": seed}
        with open(os.path.join(tmp, "synthetic_summary.json"), "w") as f:
            json.dump({"args": args, "stats": stats, "windows": rows}, f, indent=1)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="dataset directory to create (must not exist unless --overwrite)")
    parser.add_argument("--size", type=int, default=64, help="window height and width in pixels (default 64, at least 32)")
    parser.add_argument("--n-train", type=int, default=256, help="train windows (default 256)")
    parser.add_argument("--n-val", type=int, default=64, help="val windows (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    if os.path.exists(args.out):
        if not args.overwrite:
            parser.error(f"{args.out} exists (use --overwrite to replace it)")
        shutil.rmtree(args.out)
    stats = make_anchor_dataset(args.out, args.size, args.n_train, args.n_val, args.seed)
    print(json.dumps({"out": args.out, "stats": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
