"""Run an exported TFLite model over a GeoTIFF scene with sliding windows (no TensorFlow).

    rskeras predict-tflite --model model.tflite --input scene.tif --output out.tif --overlap 16
    rskeras predict-tflite --model det.tflite --input scene.tif --output vessels.geojson
    rskeras predict-tflite --model multi.tflite --input image=s2.tif --output out_dir/

The GeoTIFF holds the model's raw input bands in the model's band order (listed in the
``<model>.tflite.json`` description written by tools/export.py; pick and reorder file bands
with --band-indexes). Raster tasks (segmentation, per-pixel regression, embeddings) write a
GeoTIFF with the input's CRS and transform; classification, regression and detection write
GeoJSON in rslearn's pixel-coordinate format. A multi-task model writes one file per task
into the --output directory (<task>.tif / <task>.geojson). Imports numpy, rasterio, shapely
and ai_edge_litert only. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from rskeras.export.litert import LiteRTModel
from rskeras.export.sliding_window import predict_scene, read_scene, write_prediction

RASTER_EXT = (".tif", ".tiff")


def parse_inputs(values: list[str], names: list[str]) -> dict[str, str]:
    """``path`` (single-input models) or ``name=path`` items -> {name: path}."""
    paths = {}
    for value in values:
        if "=" in value and value.split("=", 1)[0] in names:
            name, path = value.split("=", 1)
        elif len(names) == 1 and not paths:
            name, path = names[0], value
        else:
            raise SystemExit(f"predict_tflite.py: error: give --input NAME=PATH for each of the model inputs {names}")
        paths[name] = path
    if sorted(paths) != sorted(names):
        raise SystemExit(f"predict_tflite.py: error: the model takes inputs {names}, got {sorted(paths)}")
    return paths


def parse_band_indexes(values: list[str] | None, names: list[str]) -> dict[str, list[int]]:
    """``1,2,3`` (single input) or ``name=1,2,3`` -> {name: [1, 2, 3]} (1-based)."""
    out = {}
    for value in values or []:
        name, _, rest = value.rpartition("=")
        name = name or (names[0] if len(names) == 1 else "")
        if name not in names:
            raise SystemExit(f"predict_tflite.py: error: --band-indexes {value}: give NAME=i,j,... for one of {names}")
        out[name] = [int(i) for i in rest.split(",") if i]
    return out


def main(argv: list[str] | None = None, prog: str = "rskeras predict-tflite") -> int:
    from rskeras.errors import pop_verbose

    argv, _ = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="the .tflite file (its .tflite.json description must be beside it)")
    parser.add_argument("--input", action="append", required=True, help="GeoTIFF of the raw input bands (NAME=PATH for multi-input models)")
    parser.add_argument("--output", required=True, help="output .tif (raster tasks) / .geojson (vector tasks), or a directory (multi-task)")
    parser.add_argument(
        "--overlap",
        type=int,
        default=0,
        help="overlap in pixels between neighbouring windows; half of it is trimmed from the left/top of interior windows (default 0)",
    )
    parser.add_argument("--band-indexes", action="append", default=None, help="1-based file bands to read, in model band order: 1,2,3 or NAME=1,2,3")
    parser.add_argument("--probabilities", action="store_true", help="segmentation: write per-class probabilities (float32) instead of class ids")
    parser.add_argument("--score-threshold", type=float, default=None, help="detection: keep scores above this (default: the task's score_threshold)")
    parser.add_argument(
        "--vector-merge",
        choices=("owned", "all"),
        default="owned",
        help="detections in overlaps: keep those whose centre the window owns (default) or all (rslearn)",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="LiteRT interpreter threads")
    args = parser.parse_args(argv)

    try:
        return run(parser, args)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def check_model_path(path: str) -> None:
    """A clear error for a path that is not a .tflite file (a SavedModel directory, a
    missing file) before LiteRT tries to map it."""
    if os.path.isdir(path):
        what = "a SavedModel directory" if os.path.exists(os.path.join(path, "saved_model.pb")) else "a directory"
        raise ValueError(
            f"--model {path} is {what}, not a .tflite file: export one with `rskeras export --format tflite` "
            "(SavedModels are served by TF Serving, see docs/deployment.md)"
        )
    if not os.path.exists(path):
        raise ValueError(f"--model {path}: no such file")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    check_model_path(args.model)
    model = LiteRTModel(args.model, num_threads=args.num_threads)
    if model.description is None:
        parser.error(f"{args.model}.json not found: export the model with tools/export.py --format tflite")
    names = [spec["name"] for spec in model.description["inputs"]]
    scene = read_scene(parse_inputs(args.input, names), parse_band_indexes(args.band_indexes, names))
    results = predict_scene(model, scene, args.overlap, args.probabilities, args.score_threshold, args.vector_merge)
    multi = len(results) > 1 or next(iter(results)) != ""
    for task, prediction in results.items():
        ext = ".tif" if prediction.raster is not None else ".geojson"
        if multi:
            path = os.path.join(args.output, f"{task}{ext}")
        else:
            path = args.output
            if (ext == ".tif") != path.lower().endswith(RASTER_EXT):
                parser.error(f"--output {path}: this model writes a {'GeoTIFF (.tif)' if ext == '.tif' else 'GeoJSON (.geojson)'}")
        write_prediction(prediction, path, scene.crs)
        what = f"{prediction.raster.shape[0]}-band raster" if prediction.raster is not None else f"{len(prediction.features or [])} features"
        print(f"wrote {path} ({what})")
    return 0

