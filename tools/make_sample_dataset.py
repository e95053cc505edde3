#!/usr/bin/env python
"""Writes a small rslearn-format dataset that looks like Sentinel-2 imagery with labels.

Every window is a 10 m UTM tile with 12 Sentinel-2 L2A bands (B01..B12 with B8A) whose
surface reflectance follows the spectra of four land-cover types (water, vegetation, bare
soil, built-up), and label layers for every task kind:

* ``label`` (vector): one polygon per window with ``category`` (dominant land cover) and
  ``vegetation_fraction`` (a real value) — classification and regression;
* ``objects`` (vector): point features ``category: vessel`` on water — detection;
* ``landcover`` (raster, uint8, nodata 255): per-pixel class — segmentation;
* ``ndvi`` (raster, float32): per-pixel vegetation index — per-pixel regression.

Windows carry ``split`` (train/val/test) in their options; a ``predict`` group holds a few
larger windows with imagery only, for sliding-window prediction. Output layers for each
task are declared in config.json. Deterministic for a given --seed.

Example: python tools/make_sample_dataset.py data/sample
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.config.dataset import band_set_dir_name  # noqa: E402
from rskeras.utils.geometry import Projection  # noqa: E402
from rskeras.utils.raster_format import write_geotiff  # noqa: E402

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
CLASSES = ["water", "vegetation", "bare", "urban"]
# Typical L2A surface reflectance (x10000) per band for each class.
SPECTRA = np.array(
    [
        [900, 800, 700, 450, 350, 300, 280, 250, 230, 150, 80, 50],  # water
        [400, 450, 800, 500, 1300, 2800, 3300, 3500, 3600, 3000, 2000, 1000],  # vegetation
        [1200, 1400, 1800, 2200, 2400, 2600, 2700, 2800, 2900, 2800, 3400, 3000],  # bare soil
        [1500, 1600, 1700, 1800, 1900, 2000, 2100, 2200, 2200, 2000, 2500, 2300],  # built-up
    ],
    dtype=np.float64,
)
VESSEL_SPECTRUM = np.full(12, 2600.0)
PROJECTION = Projection("EPSG:32610", 10.0, -10.0)
TIME_RANGE = ["2023-06-01T00:00:00+00:00", "2023-07-01T00:00:00+00:00"]
B04, B08 = BANDS.index("B04"), BANDS.index("B08")


def dataset_config() -> dict:
    s2 = {"dtype": "uint16", "bands": BANDS, "nodata_value": 0}
    vec = {"type": "vector"}
    return {
        "layers": {
            "sentinel2": {"type": "raster", "band_sets": [s2]},
            "label": {**vec, "class_property_name": "category", "class_names": CLASSES},
            "objects": {**vec, "class_property_name": "category", "class_names": ["vessel"]},
            "landcover": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["class"], "nodata_value": 255}]},
            "ndvi": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["ndvi"]}]},
            "output_classification": vec,
            "output_regression": vec,
            "output_detection": vec,
            "output_segmentation": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["class"]}]},
            "output_per_pixel": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["ndvi"]}]},
            "output_embedding": {"type": "raster", "band_sets": [{"dtype": "float32", "num_bands": 8}]},
        }
    }


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field: coarse noise upsampled bilinearly."""
    coarse = rng.normal(size=(cells + 1, cells + 1))
    pos = np.linspace(0, cells, size, endpoint=False) + 0.5 * cells / size
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 1)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def land_cover(rng: np.random.Generator, size: int, dominant: int) -> np.ndarray:
    """Class map in which ``dominant`` covers most of the window."""
    fields = np.stack([smooth_field(rng, size, 4) for _ in CLASSES])
    fields[dominant] += 1.2
    return np.argmax(fields, axis=0).astype(np.uint8)


def render(rng: np.random.Generator, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 reflectance [12, H, W], float32 NDVI [H, W]) for a class map."""
    h, w = classes.shape
    signal = SPECTRA[classes].transpose(2, 0, 1).copy()  # [12, H, W]
    # Vegetation vigour varies smoothly: scales the red-edge/NIR plateau.
    vigour = 0.75 + 0.25 * np.tanh(smooth_field(rng, h, 3))
    veg = classes == 1
    signal[4:10, veg] *= vigour[veg]
    signal[3, veg] *= 2 - vigour[veg]
    brightness = 1 + 0.08 * smooth_field(rng, h, 6)
    signal *= brightness[None]
    ndvi = ((signal[B08] - signal[B04]) / (signal[B08] + signal[B04])).astype(np.float32)
    noisy = signal * (1 + 0.03 * rng.normal(size=signal.shape)) + rng.normal(0, 40, size=signal.shape)
    return np.clip(noisy, 1, 10000).astype(np.uint16), ndvi


def place_vessels(rng: np.random.Generator, classes: np.ndarray, image: np.ndarray, max_vessels: int = 3) -> list[tuple[int, int]]:
    """Paints up to ``max_vessels`` bright 3x3 vessels on open water; returns (col, row)."""
    h, w = classes.shape
    water = classes == 0
    spots = []
    for _ in range(int(rng.integers(0, max_vessels + 1)) if water.mean() > 0.2 else 0):
        for _attempt in range(20):
            r, c = int(rng.integers(3, h - 3)), int(rng.integers(3, w - 3))
            if water[r - 3 : r + 4, c - 3 : c + 4].all() and all(abs(r - r2) > 6 or abs(c - c2) > 6 for c2, r2 in spots):
                image[:, r - 1 : r + 2, c - 1 : c + 2] = (VESSEL_SPECTRUM * (1 + 0.05 * rng.normal()))[:, None, None].astype(np.uint16)
                spots.append((c, r))
                break
    return spots


def geojson(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "properties": PROJECTION.to_json(), "features": features}


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def mark_completed(window_dir: str, layer: str) -> None:
    os.makedirs(os.path.join(window_dir, "layers", layer), exist_ok=True)
    open(os.path.join(window_dir, "layers", layer, "completed"), "w").close()


def write_window(root: str, group: str, name: str, bounds: list[int], options: dict, rng: np.random.Generator, dominant: int, labels: bool) -> None:
    size = bounds[2] - bounds[0]
    wdir = os.path.join(root, "windows", group, name)
    write_json(
        os.path.join(wdir, "metadata.json"),
        {"projection": PROJECTION.to_json(), "bounds": bounds, "time_range": TIME_RANGE, "options": options},
    )
    classes = land_cover(rng, size, dominant)
    image, ndvi = render(rng, classes)
    vessels = place_vessels(rng, classes, image)
    layer_dir = os.path.join(wdir, "layers")
    write_geotiff(os.path.join(layer_dir, "sentinel2", band_set_dir_name(BANDS), "geotiff.tif"), image, PROJECTION, tuple(bounds), nodata=0)
    mark_completed(wdir, "sentinel2")
    if not labels:
        return
    landcover = classes.copy()
    if rng.random() < 0.2:  # some windows have an unlabelled (nodata) strip
        k = int(rng.integers(4, size // 4))
        landcover[:, :k] = 255
    write_geotiff(os.path.join(layer_dir, "landcover", "class", "geotiff.tif"), landcover[None], PROJECTION, tuple(bounds), nodata=255)
    mark_completed(wdir, "landcover")
    write_geotiff(os.path.join(layer_dir, "ndvi", "ndvi", "geotiff.tif"), ndvi[None], PROJECTION, tuple(bounds))
    mark_completed(wdir, "ndvi")
    x0, y0, x1, y1 = bounds
    polygon = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    label_props = {"category": CLASSES[int(np.bincount(classes.ravel(), minlength=4).argmax())], "vegetation_fraction": round(float((classes == 1).mean()), 4)}
    write_json(os.path.join(layer_dir, "label", "data.geojson"), geojson([{"type": "Feature", "properties": label_props, "geometry": polygon}]))
    mark_completed(wdir, "label")
    objects = [
        {"type": "Feature", "properties": {"category": "vessel"}, "geometry": {"type": "Point", "coordinates": [x0 + c + 0.5, y0 + r + 0.5]}}
        for c, r in vessels
    ]
    write_json(os.path.join(layer_dir, "objects", "data.geojson"), geojson(objects))
    mark_completed(wdir, "objects")


def make_dataset(out: str, num_windows: int = 300, size: int = 64, seed: int = 0, num_predict: int = 3, predict_size: int = 128, progress: bool = True) -> str:
    """Writes the dataset into ``out`` (which must not exist); returns ``out``."""
    rng = np.random.default_rng(seed)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sample-", dir=parent)
    try:
        write_json(os.path.join(tmp, "config.json"), dataset_config())
        dominants = rng.permutation(np.arange(num_windows) % len(CLASSES))
        splits = rng.choice(["train", "val", "test"], size=num_windows, p=[0.7, 0.15, 0.15])
        iterator = range(num_windows)
        if progress:
            try:
                from tqdm import tqdm

                iterator = tqdm(iterator, desc="windows", unit="win")
            except ImportError:
                pass
        per_row = 20
        for i in iterator:
            col, row = i % per_row, i // per_row
            x0, y0 = 54000 + col * (size + 16), -520000 + row * (size + 16)
            write_window(tmp, "default", f"win_{i:04d}", [x0, y0, x0 + size, y0 + size], {"split": str(splits[i])}, rng, int(dominants[i]), True)
        for j in range(num_predict):
            x0, y0 = 60000 + j * (predict_size + 16), -530000
            write_window(tmp, "predict", f"scene_{j:02d}", [x0, y0, x0 + predict_size, y0 + predict_size], {"split": "predict"}, rng, j % len(CLASSES), False)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output dataset directory (must not exist unless --overwrite)")
    parser.add_argument("--num-windows", type=int, default=300, help="labelled windows (default 300)")
    parser.add_argument("--size", type=int, default=64, help="window size in pixels (default 64)")
    parser.add_argument("--num-predict", type=int, default=3, help="unlabelled windows in the 'predict' group (default 3)")
    parser.add_argument("--predict-size", type=int, default=128, help="size of the predict windows (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.size < 16:
        parser.error("--size must be at least 16")
    if os.path.exists(args.out):
        if not args.overwrite:
            if os.path.exists(os.path.join(args.out, "config.json")):
                print(f"{args.out} already exists; keeping it (use --overwrite to regenerate)")
                return 0
            parser.error(f"{args.out} exists and is not a dataset; remove it or pass --overwrite")
        shutil.rmtree(args.out)
    make_dataset(args.out, args.num_windows, args.size, args.seed, args.num_predict, args.predict_size, progress=not args.quiet)
    print(f"wrote {args.num_windows} + {args.num_predict} windows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
