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

Scenes of any size run in bounded memory: crops are read one by one from the input files
and raster outputs are merged and written block by block into a tiled, compressed GeoTIFF
(--cog: a Cloud Optimized GeoTIFF with overviews); GDAL's block cache is limited to
GDAL_CACHEMAX (default here 256 MB). See docs/scale.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from rskeras.export.litert import LiteRTModel
from rskeras.export.sliding_window import open_scene, output_paths, predict_scene_to_files


def parse_inputs(values: list[str], names: list[str]) -> dict[str, str]:
    """``path`` (single-input models) or ``name=path`` items -> {name: path}."""
    paths = {}
    for value in values:
        if "=" in value and value.split("=", 1)[0] in names:
            name, path = value.split("=", 1)
        elif len(names) == 1 and not paths:
            name, path = names[0], value
        else:
            raise ValueError(f"give --input NAME=PATH for each of the model inputs {names}")
        paths[name] = path
    if sorted(paths) != sorted(names):
        raise ValueError(f"the model takes inputs {names}, got {sorted(paths)}")
    return paths


def parse_band_indexes(values: list[str] | None, names: list[str]) -> dict[str, list[int]]:
    """``1,2,3`` (single input) or ``name=1,2,3`` -> {name: [1, 2, 3]} (1-based)."""
    out = {}
    for value in values or []:
        name, _, rest = value.rpartition("=")
        name = name or (names[0] if len(names) == 1 else "")
        if name not in names:
            raise ValueError(f"--band-indexes {value}: give NAME=i,j,... for one of {names}")
        try:
            out[name] = [int(i) for i in rest.split(",") if i]
        except ValueError:
            raise ValueError(f"--band-indexes {value}: expected 1-based band numbers like 1,2,3") from None
        if any(i < 1 for i in out[name]):
            raise ValueError(f"--band-indexes {value}: band numbers start at 1")
    return out


def main(argv: list[str] | None = None, prog: str = "rskeras predict-tflite") -> int:
    """The command: a bad argument, input file or model is one line on stderr with exit code
    2 (``--verbose``: the traceback too; rskeras.errors)."""
    from rskeras.errors import report_user_errors

    return report_user_errors(lambda args: _main(args, prog), argv, prog)


def _main(argv: list[str], prog: str) -> int:
    from rskeras.errors import UserError, user_error_types

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
    parser.add_argument("--cog", action="store_true", help="write raster outputs as Cloud Optimized GeoTIFFs (with overviews)")
    parser.add_argument(
        "--stripe-width",
        type=int,
        default=4096,
        help="output columns merged at a time (memory ~ 512 x this x bands; default 4096)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.stripe_width < 1:
        parser.error(f"--stripe-width {args.stripe_width}: expected a positive number of columns")
    if args.overlap < 0:
        parser.error(f"--overlap {args.overlap}: expected >= 0")
    # SIGTERM (a batch scheduler's kill) unwinds like Ctrl-C: temporary files are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        return run(parser, args)
    except (ValueError, OSError) as e:
        if isinstance(e, user_error_types()):
            raise
        # Here a ValueError / OSError is about the user's files or arguments.
        raise UserError(str(e)) from e


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


class Progress:
    """Progress lines on stderr, at most every 10 s."""

    def __init__(self, quiet: bool, prog: str):
        self.quiet = quiet
        self.prog = prog
        self.last = 0.0
        self.start = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if self.quiet or (now - self.last < 10 and done != total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        print(f"{self.prog}: {done}/{total} crops ({rate:.1f} crops/s)", file=sys.stderr, flush=True)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import rasterio

    check_model_path(args.model)
    model = LiteRTModel(args.model, num_threads=args.num_threads)
    if model.description is None:
        parser.error(f"{args.model}.json not found: export the model with tools/export.py --format tflite")
    names = [spec["name"] for spec in model.description["inputs"]]
    inputs = parse_inputs(args.input, names)
    band_indexes = parse_band_indexes(args.band_indexes, names)
    try:
        paths = output_paths(model.description, args.output)
    except ValueError as e:
        parser.error(str(e))
    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": 256}  # MB of decoded blocks
    with rasterio.Env(**cache), open_scene(inputs, band_indexes) as source:
        results = predict_scene_to_files(
            model,
            source,
            paths,
            args.overlap,
            args.probabilities,
            args.score_threshold,
            args.vector_merge,
            stripe_width=args.stripe_width,
            cog=args.cog,
            progress=Progress(args.quiet, parser.prog),
        )
    for task, what in results.items():
        print(f"wrote {paths[task]} ({what})")
    return 0
