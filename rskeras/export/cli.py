"""The ``tools/export.py`` command line: export a trained model for serving or the edge.

Usage::

    python tools/export.py --config cfg.yaml --checkpoint CKPT --format saved_model|tflite
        [--quantize none|float16|dynamic|int8] [--output PATH] [--input-size H W]
        [--check N] [--check-split val] [--name NAME] [--a.b.c VALUE ...]

The model is built from the config exactly as ``train.py`` builds it
(``rskeras.run.build_run``; configs and overrides in command-line order), the checkpoint (``.weights.h5``) is loaded, and the predict split's deterministic transforms
are compiled into the exported graph (see ``rskeras.export.preprocessing``). With
``--check N`` the Keras model, the SavedModel and every TFLite variant run on N examples
and a parity table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

from rskeras.config.command_line import split_command_line
from rskeras.config.loader import Override
from rskeras.export.errors import ExportError

if TYPE_CHECKING:
    from rskeras.export.inference import Exportable
    from rskeras.run import Run
    from rskeras.train.data_module import RslearnDataModule

logger = logging.getLogger("rskeras.export")

FORMATS = ("saved_model", "tflite")
SPLITS = ("predict", "val", "test", "train")


def build_parser(prog: str = "export.py") -> argparse.ArgumentParser:
    from rskeras.export.description import QUANTIZATIONS

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained rskeras model to a SavedModel (TF Serving) or a TFLite model (LiteRT), with the "
        "pre-processing inside, and optionally check that the export computes what the Keras model computes.",
        epilog="Any other --a.b.c VALUE overrides that config key (as in train.py), e.g. --data.init_args.path /data/x. "
        "Inputs of the exported model are the raw bands of each passthrough raster DataInput (float32 raw values, "
        "channels in the DataInput's bands order, NHWC). See docs/deployment.md.",
    )
    parser.add_argument("--config", "-c", action="append", required=True, help="YAML config file (repeatable)")
    parser.add_argument("--checkpoint", required=True, help="trained weights (.weights.h5, or a checkpoint train.py can load)")
    parser.add_argument("--format", choices=FORMATS, default="saved_model", help="saved_model (default) or tflite")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none", help="TFLite quantization (default none = float32; int8-mixed: calibrated int8 with normalisation, softmax and attention in float32, the fastest on CPU for transformer encoders)")
    parser.add_argument(
        "--output",
        default=None,
        help="output path (default: <root>/export/saved_model/<name>/1 or <root>/export/<name>[_<quantize>].tflite, "
        "root = trainer.default_root_dir)",
    )
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None, help="fixed input height and width "
                        "(TFLite: default the predict crop size or the first predict example's size; SavedModel: default dynamic)")
    parser.add_argument("--name", default=None, help="model name (default: the last config file's stem)")
    splits = sorted(SPLITS)
    parser.add_argument("--split", default="predict", choices=splits, help="split whose transforms and inputs define the export (default predict)")
    parser.add_argument(
        "--check", type=int, default=0, metavar="N", help="run N examples through Keras, SavedModel and TFLite variants and print a parity table"
    )
    parser.add_argument("--check-split", nargs="+", default=["val"], choices=splits, help="split(s) of the --check examples, in order (default val)")
    parser.add_argument(
        "--check-variants", nargs="+", choices=QUANTIZATIONS, default=list(QUANTIZATIONS), help="TFLite variants in the --check report (default all)"
    )
    parser.add_argument("--calibration-examples", type=int, default=100, help="train examples for int8 / int8-mixed calibration (default 100)")
    parser.add_argument("--report-json", default=None, help="also write the --check results as JSON here")
    parser.add_argument(
        "--allow-class-prefix",
        dest="allow_class_prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="let the config build classes whose path starts with PREFIX (repeatable; see train.py --help)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    return parser


def parse_args(argv: list[str], prog: str = "export.py") -> tuple[argparse.Namespace, list[Override]]:
    rest, overrides = split_command_line(argv, prog=prog)
    return build_parser(prog).parse_args(rest), overrides


def check_arguments(args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot check (ExportError naming the flag)."""
    if args.format != "tflite" and args.quantize != "none":
        raise ExportError(
            f"--quantize {args.quantize}: quantization applies to --format tflite only (a SavedModel is float32); "
            "drop --quantize or export with --format tflite"
        )
    if args.input_size is not None and any(v <= 0 for v in args.input_size):
        raise ExportError(f"--input-size {args.input_size[0]} {args.input_size[1]}: height and width must be positive")
    if args.check < 0:
        raise ExportError(f"--check {args.check}: the number of examples must be >= 0")
    if args.calibration_examples <= 0:
        raise ExportError(f"--calibration-examples {args.calibration_examples}: must be positive")


def load_run(config_paths: list[str], overrides: list[Override | tuple[str, str]], checkpoint: str, split: str = "predict") -> Run:
    """Builds the model and data module from the config and loads ``checkpoint``."""
    from rskeras.config.loader import load_config
    from rskeras.run import build_run, default_root_dir

    if not os.path.exists(checkpoint):
        raise ExportError(f"--checkpoint {checkpoint}: no such file")
    config = load_config(config_paths, overrides)
    run = build_run(config, split, default_root_dir(config_paths))
    run.load_checkpoint(checkpoint)  # weights only, as train.py test/predict
    return run


def transforms_where(config: dict[str, Any], split: str) -> str:
    """The config key the split's transforms come from."""
    data_args = (config.get("data") or {}).get("init_args") or {}
    if ((data_args.get(f"{split}_config") or {}).get("transforms")):
        return f"data.init_args.{split}_config.transforms"
    return "data.init_args.default_config.transforms"


def representative_dataset(data: RslearnDataModule, exportable: Exportable, size: tuple[int, int], num_examples: int, max_tiles: int = 300):
    """A generator factory of calibration inputs: raw train examples cut into tiles of the
    TFLite input size (raw bands: the pre-processing is inside the model)."""
    from rskeras.export.examples import raw_examples, signature_batch, tiles

    def gen() -> Iterator[dict[str, Any]]:
        count = 0
        for example in raw_examples(data, "train", exportable.raw_inputs, limit=num_examples):
            for tile in tiles(example, *size):
                yield signature_batch(tile, exportable.raw_inputs)
                count += 1
                if count >= max_tiles:
                    return

    return gen


def default_output(run: Run, name: str, fmt: str, quantize: str) -> str:
    root = os.path.join(run.root, "export")
    if fmt == "saved_model":
        return os.path.join(root, "saved_model", name, "1")
    return os.path.join(root, f"{name}.tflite" if quantize == "none" else f"{name}_{quantize}.tflite")


def describe_signature(exportable: Exportable, size: tuple[int, int] | None, batch: str) -> str:
    lines = ["inputs:"]
    for r in exportable.raw_inputs:
        shape = [batch] + (["T=%d" % r.num_timesteps] if r.num_timesteps > 1 else []) + [
            str(size[0]) if size else "H",
            str(size[1]) if size else "W",
            str(r.num_channels),
        ]
        lines.append(f"  {r.name}: {r.dtype} [{', '.join(shape)}] bands {', '.join(r.bands)}")
    lines.append("pre-processing:")
    for p in exportable.planned or []:
        lines.append(f"  {p.describe()}")
    if not exportable.planned:
        lines.append("  (none)")
    return "\n".join(lines)


def run(argv: list[str] | None = None, prog: str = "export.py") -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # "Assets written to ..." per temporary SavedModel
    check_arguments(args)
    from rskeras.config.class_paths import set_allowed_prefixes
    from rskeras.utils.tf_import import import_tensorflow

    set_allowed_prefixes(args.allow_class_prefix)
    import_tensorflow()
    from rskeras.export.inference import exportable_from_run
    from rskeras.export.saved_model import export_for_serving
    from rskeras.export.tflite import convert_tflite, write_tflite
    name = args.name or os.path.splitext(os.path.basename(args.config[-1]))[0]
    r = load_run(args.config, overrides, args.checkpoint, args.split)
    exportable = exportable_from_run(r, args.split, name=name, where=transforms_where(r.config, args.split))
    fixed = tuple(args.input_size) if args.input_size else None
    tflite_size = fixed or exportable.default_size
    output = args.output or default_output(r, name, args.format, args.quantize)
    calibration = representative_dataset(r.data, exportable, tflite_size, args.calibration_examples)
    saved_model_path = None
    tflite_models: dict[str, bytes] = {}
    if args.format == "saved_model":
        saved_model_path = export_for_serving(exportable, output, fixed)
        print(f"SavedModel written to {saved_model_path} (signatures: serving_default, raw_outputs)")
        print(describe_signature(exportable, fixed, "B"))
    else:
        content = convert_tflite(exportable, tflite_size, args.quantize, calibration, isolate=True)
        write_tflite(exportable, content, output, tflite_size, args.quantize)
        tflite_models[args.quantize] = content
        print(f"TFLite model written to {output} ({len(content) / 1024:.0f} KiB, {args.quantize}, builtin ops only)")
        print(describe_signature(exportable, tflite_size, "1"))
    if args.check <= 0:
        return 0
    from rskeras.export.examples import fit_example, raw_examples
    from rskeras.export.report import format_table, parity_report

    examples = []
    for split in args.check_split:
        if len(examples) < args.check:
            examples += [fit_example(e, *tflite_size) for e in raw_examples(r.data, split, exportable.raw_inputs, limit=args.check - len(examples))]
    with tempfile.TemporaryDirectory(prefix="rskeras-check-") as tmp:
        if saved_model_path is None:
            saved_model_path = export_for_serving(exportable, os.path.join(tmp, "saved_model"), None, raw_outputs=False)
        for quantize in args.check_variants:
            if quantize not in tflite_models:
                tflite_models[quantize] = convert_tflite(exportable, tflite_size, quantize, calibration, isolate=True)
        ordered = {q: tflite_models[q] for q in args.check_variants}
        results = parity_report(exportable, examples, saved_model_path, ordered)
    title = f"{name}: {' + '.join(args.check_split)} split, input size {tflite_size[0]}x{tflite_size[1]}"
    print()
    print(format_table(results, len(examples), title))
    if args.report_json:
        from dataclasses import asdict

        from rskeras.utils.fileio import atomic_write_text

        content = {"title": title, "num_examples": len(examples), "results": [asdict(x) for x in results]}
        atomic_write_text(args.report_json, json.dumps(content, indent=2))
    return 0


def main(argv: list[str] | None = None, prog: str = "export.py") -> int:
    """The command: a user error is one line on stderr and exit code 2."""
    from rskeras.errors import report_user_errors

    return report_user_errors(lambda args: run(args, prog), argv, prog)
