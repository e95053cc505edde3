#!/usr/bin/env python
"""Measures detection training throughput and inference latency.

* training: examples/s of ``fit`` steps (after a warm-up that traces the step), both
  through the real tf.data pipeline of the train split and on one cached batch (model
  compute alone);
* inference: latency per image (batch 1) at each ``--sizes`` (a real 64x64 validation
  image tiled to the size) of the Keras inference model (``tf.function``), the exported
  SavedModel (``serving_default``) and the TFLite model (builtin ops, LiteRT).

Run as a section of tools/benchmark.py or alone::

    python tools/benchmark.py detection --sample data/sample \\
        --ckpt_path runs/detection/checkpoints/best.weights.h5
    python tools/benchmark_detection.py --sample data/sample --json bench.json

Without ``--sample`` a 64x64 sample dataset (300 windows) is written to a temporary
directory; without ``--ckpt_path`` the weights are freshly initialised (the number of
detections, and with it the NMS cost, then differs from a trained model's).

Nothing here asserts a time; figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Median / p90 / mean milliseconds of ``fn()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(np.mean(times))}


def build_run(config_paths: list[str], overrides: list[tuple[str, str]], subcommand: str = "fit"):
    """The CLI's Run for the config (trainer callbacks dropped, no logger)."""
    from rskeras import lightning_cli

    root = tempfile.mkdtemp(prefix="rskeras-bench-")
    base = [("trainer.callbacks", "[]"), ("trainer.logger", "false"), ("trainer.default_root_dir", root)]
    config = lightning_cli.load_config(config_paths, base + overrides)
    return lightning_cli.Run(config, config_paths, subcommand)


def benchmark_training(run, steps: int, warmup_steps: int) -> dict[str, Any]:
    """examples/s of train steps: through the tf.data pipeline and on a cached batch."""
    lm, data = run.lm, run.data
    batch_size = data.batch_size
    results: dict[str, Any] = {"batch_size": batch_size, "steps": steps}
    pipeline = data.tf_dataset("train").repeat()
    cached = data.tf_dataset("train").take(1).cache().repeat()
    for name, ds in (("pipeline", pipeline), ("cached_batch", cached)):
        lm.fit(ds, epochs=1, steps_per_epoch=warmup_steps, verbose=0)
        start = time.perf_counter()
        lm.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        elapsed = time.perf_counter() - start
        results[f"{name}_examples_per_s"] = steps * batch_size / elapsed
        results[f"{name}_ms_per_step"] = 1000 * elapsed / steps
    return results


def sample_image(run, size: int) -> np.ndarray:
    """``[1, 1, size, size, C]``: the first validation image tiled (and cut) to ``size``."""
    inputs, _ = next(iter(run.data.tf_dataset("val")))
    image = inputs["image"].numpy()[:1]
    h, w = image.shape[2:4]
    reps = (1, 1, -(-size // h), -(-size // w), 1)
    return np.tile(image, reps)[:, :, :size, :size, :].astype(np.float32)


def static_inference_model(lm, shape: tuple[int, ...]):
    """Like ``lm.inference_model`` but with a fully static ``image`` input of ``shape``
    (batch included): FasterRCNN then unrolls its per-image loops."""
    import keras

    inputs = {"image": keras.Input(shape=tuple(shape[1:]), batch_size=shape[0], name="image")}
    outputs = lm.task.output_layer()(lm.model(inputs, training=False)["outputs"])
    return keras.Model(inputs, outputs, name="rskeras_inference_static")


def benchmark_inference(run, sizes: list[int], repeats: int, warmup: int, tflite: bool = True) -> dict[str, Any]:
    """Per-image latency (batch 1) of Keras, SavedModel and TFLite at each size."""
    import tensorflow as tf

    from rskeras.export.saved_model import export_saved_model

    specs = {k: tf.TensorSpec([None, None, None, None] + list(s.shape[4:]), s.dtype) for k, s in run.input_specs.items()}
    if set(specs) != {"image"}:
        raise ValueError(f"benchmark_detection: expected a single 'image' input, got {sorted(specs)}")
    model = run.lm.inference_model(specs)
    keras_fn = tf.function(lambda x: model({"image": x}, training=False), reduce_retracing=True)
    path = export_saved_model(model, specs, os.path.join(tempfile.mkdtemp(prefix="rskeras-bench-sm-"), "saved_model"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    runner = None
    if tflite:
        from ai_edge_litert.interpreter import Interpreter

        converter = tf.lite.TFLiteConverter.from_saved_model(path)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        start = time.perf_counter()
        content = converter.convert()
        convert_s = time.perf_counter() - start
        interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
        runner = interpreter.get_signature_runner("serving_default")
    results: dict[str, Any] = {}
    if tflite:
        results["tflite_convert_s"] = convert_s
        results["tflite_bytes"] = len(content)
    for size in sizes:
        image = sample_image(run, size)
        tensor = tf.constant(image)
        entry: dict[str, Any] = {}
        entry["keras"] = timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), keras_fn(tensor)), repeats, warmup)
        entry["saved_model"] = timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), served(image=tensor)), repeats, warmup)
        reference = keras_fn(tensor)
        entry["num_detections"] = int(reference["num_detections"][0])
        if runner is not None:
            n = entry["num_detections"]
            entry["tflite"] = timed(lambda: runner(image=image), repeats, warmup)
            lite = runner(image=image)
            entry["tflite_max_abs_diff_scores"] = float(np.abs(lite["scores"][0, :n] - reference["scores"].numpy()[0, :n]).max(initial=0))
            # The same model converted with a static [1, 1, size, size, C] input: no
            # dynamic tensors, so LiteRT can plan memory and delegate to XNNPACK.
            static_model = static_inference_model(run.lm, image.shape)
            converter = tf.lite.TFLiteConverter.from_keras_model(static_model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the traced signature
                static_content = converter.convert()
            static_runner = Interpreter(model_content=static_content, num_threads=os.cpu_count()).get_signature_runner()
            entry["tflite_static"] = timed(lambda: static_runner(image=image), repeats, warmup)
            lite = static_runner(image=image)
            entry["tflite_static_max_abs_diff_scores"] = float(np.abs(lite["scores"][0, :n] - reference["scores"].numpy()[0, :n]).max(initial=0))
        results[f"{size}x{size}"] = entry
    return results


def run_detection_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by parsed ``args`` (see :func:`add_arguments`)."""
    import tensorflow as tf

    from make_sample_dataset import make_dataset

    overrides = [tuple(o.split("=", 1)) for o in args.override]
    sample = args.sample or os.path.join(tempfile.mkdtemp(prefix="rskeras-bench-"), "sample_64")
    if not os.path.exists(os.path.join(sample, "config.json")):
        print(f"  writing 300 windows of 64x64x12 to {sample} ...", flush=True)
        make_dataset(sample, num_windows=300, size=64, progress=False)
    overrides.append(("data.init_args.path", sample))
    run = build_run(args.config, overrides)
    if args.ckpt_path:
        run.load_checkpoint(args.ckpt_path)
    report: dict[str, Any] = {
        "config": args.config,
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "parameters": int(sum(int(np.prod(v.shape)) for v in run.lm.model.trainable_weights)),
    }
    if not args.skip_inference:
        report["inference"] = benchmark_inference(run, args.sizes, args.repeats, args.warmup, tflite=not args.skip_tflite)
    if not args.skip_training:
        report["training"] = benchmark_training(run, args.train_steps, args.warmup_steps)
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"\ndetection benchmark: {report['config']} ({report['parameters']:,} parameters, {report['cpu_count']} CPUs, {report['gpus']} GPUs)")
    training = report.get("training")
    if training:
        print(f"training (batch {training['batch_size']}, {training['steps']} steps):")
        for name in ("pipeline", "cached_batch"):
            print(f"  {name:13s} {training[f'{name}_examples_per_s']:8.1f} examples/s  {training[f'{name}_ms_per_step']:8.1f} ms/step")
    inference = report.get("inference")
    if inference:
        print("inference latency per image (batch 1), median / p90 ms:")
        for key, entry in inference.items():
            if not isinstance(entry, dict):
                continue
            parts = [f"{b} {entry[b]['median_ms']:.1f} / {entry[b]['p90_ms']:.1f}" for b in ("keras", "saved_model", "tflite", "tflite_static") if b in entry]
            print(f"  {key:8s} " + "   ".join(parts) + f"   ({entry['num_detections']} detections)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the detection benchmark (also tools/benchmark.py's ``detection``)."""
    parser.add_argument("--config", action="append", default=None, help="config file(s) (default configs/detection.yaml)")
    parser.add_argument("--sample", default=None, help="64x64 sample dataset to use/create (default: a temp dir)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.init_args.batch_size=16")
    parser.add_argument("--ckpt_path", default=None, help="weights to load (.weights.h5); default: fresh initialisation")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="inference image sizes (default 64 256)")
    parser.add_argument("--repeats", type=int, default=30, help="timed inference calls per size and backend (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inference calls first (default 3)")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed training steps first (default 3)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-tflite", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """tools/benchmark.py section entry: measures, prints, returns the figures."""
    args.config = args.config or [os.path.join(ROOT, "configs", "detection.yaml")]
    report = run_detection_benchmark(args)
    print_report(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
