#!/usr/bin/env python
"""Throughput measurements of rskeras: figures and ratios, no pass/fail.

Sections (run one, or ``all``)::

    python tools/benchmark.py input        # input pipeline alone, examples/s
    python tools/benchmark.py train-step   # the model's train step alone, examples/s
    python tools/benchmark.py detection    # detection training rate and inference latency
    python tools/benchmark.py encoders     # foundation-model configs: ms per train step, 64x64
    python tools/benchmark.py olmoearth    # OlmoEarth nano/tiny train step on 64x64x12
    python tools/benchmark.py predict-shards   # predict windows/s with 1 and 2 worker processes
    python tools/benchmark.py predict-memory   # peak RSS predicting 8192^2 and 16384^2 x 12 scenes
    python tools/benchmark.py data-service     # input examples/s with and without a tf.data service
    python tools/benchmark.py vs-rslearn   # rslearn and rskeras side by side (needs --rslearn-python)
    python tools/benchmark.py step         # the train step of both systems on one cached batch
    python tools/benchmark.py inference    # per-tile latency: rslearn eager vs Keras/SavedModel/TFLite
    python tools/benchmark.py all          # every section but the three that need rslearn

``input`` builds (or reuses, with --sample / --large) two sample datasets
(tools/make_sample_dataset.py): 64x64 and 256x256 windows with 12 bands, and iterates
the train split of configs/classification.yaml (whole windows, Normalize, batch 16) with
no cache, with the on-disk input cache (``cache_dir``: first epoch decodes and writes,
later epochs read the cache) and with the in-memory cache. ``train-step`` times
``train_step`` of configs/classification.yaml on one batch held in memory, i.e. the rate
at which the model consumes examples; the input section prints the ratio of pipeline rate
to that demand (>1: the model sets the training speed).

``detection`` (configs/detection.yaml, or ``--config``) times ``fit`` steps after a
warm-up that traces the step, through the tf.data pipeline of the train split and on one
cached batch (model compute alone), and the latency per image (batch 1) at each
``--sizes`` (a real 64x64 validation image tiled to the size) of the Keras inference
model (``tf.function``), the exported SavedModel (``serving_default``) and the TFLite
model (builtin ops, LiteRT; dynamic shapes, and converted for the static input size).
Without ``--ckpt_path`` the weights are freshly initialised (the number of detections,
and with it the NMS cost, then differs from a trained model's)::

    python tools/benchmark.py detection --sample data/sample \\
        --ckpt_path runs/detection/checkpoints/best.weights.h5

Side by side with rslearn (PyTorch), on the six configs of ``benchmarks/rslearn/`` and the
anchor dataset (``tools/make_anchor_dataset.py``, built on first use); rslearn runs in its
own venv (``--rslearn-python``, see benchmarks/rslearn/README.md)::

    python tools/benchmark.py vs-rslearn --rslearn-python ~/rsenv/bin/python [--configs classification] \
        [--epochs 2] [--seeds 0 1 2] [--rskeras-override trainer.precision=bf16-mixed --tag bf16]
    python tools/benchmark.py step --rslearn-python ~/rsenv/bin/python        # ms/step, same cached batch
    python tools/benchmark.py inference --rslearn-python ~/rsenv/bin/python   # per-tile latency

``vs-rslearn`` runs ``fit`` of each config with rslearn and rskeras alternately and prints per
config: train CPU-s per epoch of the process tree (epochs after the first), samples/s,
first-epoch CPU relative to a steady epoch, peak RSS of the process tree, val metrics and
the rskeras/rslearn ratios; the last line names the worst CPU-s and RSS ratios. Each run's
figures are stored under ``--work`` and reused (``--rerun`` repeats), so configs can be run
one at a time. Runs whose load (1-minute load average before the run, or the CPU other
processes used during it) exceeded ``--max-load`` are flagged. With several seeds or more
than 2 epochs it adds a learning-curve table (val metrics after epoch 2 and the last).
``step`` times the train step of both systems on the first val batch held in memory
(segmentation config; rskeras fp32, bf16-mixed and jit_compile). ``inference`` times one
tile (batch 1) at 64x64 and 256x256: rslearn eager torch against rskeras Keras, SavedModel,
TFLite fp32 and int8. ``all`` runs the rskeras-only sections.

Nothing here asserts a time; figures depend on the machine and its load.

Adding a section: write ``def run_<name>(args) -> dict`` plus an ``add_<name>_arguments``
and register both in SECTIONS.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = os.path.join(ROOT, "configs", "classification.yaml")
RESULTS: dict[str, Any] = {}


def make_or_reuse(path: str | None, size: int, num_windows: int, workdir: str) -> str:
    """A sample dataset: ``path`` if given (created there if missing), else a temp one."""
    from make_sample_dataset import make_dataset

    target = path or os.path.join(workdir, f"sample_{size}")
    if not os.path.exists(os.path.join(target, "config.json")):
        print(f"  writing {num_windows} windows of {size}x{size}x12 to {target} ...", flush=True)
        make_dataset(target, num_windows=num_windows, size=size, num_predict=1, progress=False)
    return target


def data_module(dataset: str, batch_size: int, num_workers: int, **kwargs):
    from rskeras.config.instantiate import instantiate
    from rskeras.config.loader import load_config

    os.environ["DATASET_PATH"] = dataset
    cfg = load_config([CONFIG], [])
    init = cfg["data"]["init_args"]
    init["batch_size"] = batch_size
    init["num_workers"] = num_workers
    init.update(kwargs)
    return instantiate(cfg["data"], "data")


def time_epochs(dm, min_later_examples: int, max_epochs: int = 50) -> tuple[tuple[int, float], tuple[int, float]]:
    """((examples, seconds) of epoch 1, (examples, seconds) of the later epochs) over one
    train pipeline. Epoch 1 includes building the pipeline (and filling a cache); later
    epochs run until ``min_later_examples`` examples were seen (at least one epoch)."""

    def one_epoch(ds) -> int:
        n = 0
        for inputs, _ in ds:
            n += int(inputs["image"].shape[0])
        return n

    start = time.perf_counter()
    ds = dm.tf_dataset("train")
    first = (one_epoch(ds), time.perf_counter() - start)
    n, t0, epochs = 0, time.perf_counter(), 0
    while (n < min_later_examples or epochs == 0) and epochs < max_epochs:
        n += one_epoch(ds)
        epochs += 1
    return first, (n, time.perf_counter() - t0)


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--large", help="256x256 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--num-windows-large", type=int, default=60, help="windows of the 256x256 dataset (default 60)")
    p.add_argument("--min-examples", type=int, default=600, help="examples timed after the first epoch (default 600)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0, help="parallel reads (0 = autotune)")


def run_input(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    results: dict[str, Any] = {}
    try:
        datasets = {
            "64x64x12": make_or_reuse(args.sample, 64, 300, workdir),
            "256x256x12": make_or_reuse(args.large, 256, args.num_windows_large, workdir),
        }
        for label, path in datasets.items():
            for mode in ("no cache", "disk cache", "memory cache"):
                cache = os.path.join(workdir, f"cache-{label}")
                shutil.rmtree(cache, ignore_errors=True)
                kwargs = {"cache_dir": cache} if mode == "disk cache" else {"use_in_memory_dataset": True} if mode == "memory cache" else {}
                dm = data_module(path, args.batch_size, args.num_workers, **kwargs)
                (n1, t1), (n2, t2) = time_epochs(dm, args.min_examples)
                first, later = n1 / t1, n2 / max(t2, 1e-9)
                results[f"{label} {mode}"] = {"epoch1_examples_per_s": round(first, 1), "later_examples_per_s": round(later, 1), "examples_per_epoch": n1}
                print(f"  input {label:>10} {mode:<12}: epoch 1 {first:8.1f} ex/s, epochs 2+ {later:8.1f} ex/s ({n1} examples/epoch)", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def add_train_step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--steps", type=int, default=40, help="timed train steps (default 40)")
    p.add_argument("--batch-size", type=int, default=16)


def run_train_step(args: argparse.Namespace) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from rskeras.config.loader import load_config
    from rskeras.run import build_run as build_config_run

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    try:
        dataset = make_or_reuse(args.sample, 64, 300, workdir)
        os.environ["DATASET_PATH"] = dataset
        cfg = load_config([CONFIG], [("data.init_args.batch_size", str(args.batch_size)), ("trainer.default_root_dir", os.path.join(workdir, "run"))])
        run = build_config_run(cfg, "train")
        batch = next(iter(run.data.tf_dataset("train")))
        ds = tf.data.Dataset.from_tensors(batch).repeat()

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.last = time.perf_counter() - self.start

        timer = Timer()
        run.lm.fit(ds, epochs=2, steps_per_epoch=args.steps, callbacks=[timer], verbose=0)  # epoch 1 compiles
        rate = args.steps * args.batch_size / timer.last
        print(f"  train-step classification.yaml (batch {args.batch_size}, {tf.config.list_physical_devices('GPU') and 'GPU' or 'CPU'}): {rate:8.1f} ex/s", flush=True)
        return {"classification_examples_per_s": round(rate, 1)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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


def build_run(config_paths: list[str], overrides: list[tuple[str, str]], root: str, subcommand: str = "fit"):
    """The CLI's Run for the config (trainer callbacks dropped, no logger, run files in ``root``)."""
    from rskeras import lightning_cli
    from rskeras.config.loader import load_config
    from rskeras.run import build_run as build_config_run

    base = [("trainer.callbacks", "[]"), ("trainer.logger", "false"), ("trainer.default_root_dir", root)]
    config = load_config(config_paths, base + overrides)
    return build_config_run(config, lightning_cli.SUBCOMMAND_STAGES[subcommand])


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


def benchmark_inference(run, sizes: list[int], repeats: int, warmup: int, workdir: str, tflite: bool = True) -> dict[str, Any]:
    """Per-image latency (batch 1) of Keras, SavedModel (written to ``workdir``) and TFLite at each size."""
    import tensorflow as tf

    from rskeras.export.saved_model import export_saved_model

    specs = {k: tf.TensorSpec([None, None, None, None] + list(s.shape[4:]), s.dtype) for k, s in run.input_specs.items()}
    if set(specs) != {"image"}:
        raise ValueError(f"benchmark.py detection: expected a single 'image' input, got {sorted(specs)}")
    model = run.lm.inference_model(specs)
    keras_fn = tf.function(lambda x: model({"image": x}, training=False), reduce_retracing=True)
    path = export_saved_model(model, specs, os.path.join(workdir, "saved_model"))
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
    """Runs the benchmark described by parsed ``args`` (see :func:`add_detection_arguments`)."""
    import tensorflow as tf

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    try:
        sample = make_or_reuse(args.sample, 64, 300, workdir)
        overrides = [tuple(o.split("=", 1)) for o in args.override] + [("data.init_args.path", sample)]
        run = build_run(args.config, overrides, os.path.join(workdir, "run"))
        if args.ckpt_path:
            run.load_checkpoint(args.ckpt_path)
        report: dict[str, Any] = {
            "config": args.config,
            "cpu_count": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "parameters": int(sum(int(np.prod(v.shape)) for v in run.lm.model.trainable_weights)),
        }
        if not args.skip_inference:
            report["inference"] = benchmark_inference(
                run, args.sizes, args.repeats, args.warmup, workdir, tflite=not args.skip_tflite
            )
        if not args.skip_training:
            report["training"] = benchmark_training(run, args.train_steps, args.warmup_steps)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_detection_report(report: dict[str, Any]) -> None:
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


def add_detection_arguments(parser: argparse.ArgumentParser) -> None:
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


def run_detection(args: argparse.Namespace) -> dict[str, Any]:
    args.config = args.config or [os.path.join(ROOT, "configs", "detection.yaml")]
    report = run_detection_benchmark(args)
    print_detection_report(report)
    return report


ENCODER_CONFIGS = ["galileo_segmentation.yaml", "presto_segmentation.yaml", "ssl4eo_s12_classification.yaml"]


def add_encoders_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--configs", nargs="+", default=ENCODER_CONFIGS, help="configs/ files (default: the three foundation-model configs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed train steps (default 5)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first, the first traces the step (default 2)")


def run_encoders(args: argparse.Namespace) -> dict[str, Any]:
    """ms per train step of each foundation-model config on one cached batch of whole 64x64
    windows of the sample dataset (12 bands; Galileo/Presto read 10 of them, SSL4EO-S12 13
    via its config's Concatenate)."""
    import tensorflow as tf

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    results: dict[str, Any] = {"load_average_1min": os.getloadavg()[0]}
    try:
        os.environ["DATASET_PATH"] = make_or_reuse(args.sample, 64, 300, workdir)
        for name in args.configs:
            overrides = [("data.init_args.batch_size", str(args.batch_size)), ("data.init_args.train_config.crop_size", "null")]
            run = build_run([os.path.join(ROOT, "configs", name)], overrides, os.path.join(workdir, name))
            cached = run.data.tf_dataset("train").take(1).cache().repeat()
            run.lm.fit(cached, epochs=1, steps_per_epoch=args.warmup_steps, verbose=0)
            start = time.perf_counter()
            run.lm.fit(cached, epochs=1, steps_per_epoch=args.steps, verbose=0)
            ms = 1000 * (time.perf_counter() - start) / args.steps
            results[name] = {"batch_size": args.batch_size, "ms_per_step": round(ms, 1)}
            device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
            print(f"  {name:<34} batch {args.batch_size}, 64x64, {device}: {ms:9.1f} ms/step", flush=True)
            del run
        print(f"  (1-min load average at the start: {results['load_average_1min']:.2f})")
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def add_olmoearth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--model-ids", nargs="+", default=["OLMOEARTH_V1_2_NANO", "OLMOEARTH_V1_2_TINY"], help="ModelIDs to time (random init)")
    p.add_argument("--steps", type=int, default=10, help="timed train steps (default 10)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed train steps first (default 2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--autocast", default="null", help="OlmoEarth autocast_dtype (default null = float32; bfloat16 for mixed precision)")


def run_olmoearth(args: argparse.Namespace) -> dict[str, Any]:
    """Train steps of configs/olmoearth_segmentation.yaml on one cached 64x64x12 batch."""
    from rskeras.models.olmoearth_pretrain.config import model_id_config

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    out: dict[str, Any] = {}
    try:
        dataset = make_or_reuse(args.sample, 64, 300, workdir)
        config = os.path.join(ROOT, "configs", "olmoearth_segmentation.yaml")
        for model_id in args.model_ids:
            arch = model_id_config(model_id)
            enc = "model.init_args.model.init_args.encoder.0.init_args."
            overrides = [
                ("data.init_args.path", dataset),
                ("data.init_args.batch_size", str(args.batch_size)),
                (enc + "model_id", model_id),
                (enc + "patch_size", str(args.patch_size)),
                (enc + "autocast_dtype", args.autocast),
                ("model.init_args.model.init_args.decoder.0.init_args.in_channels", f"[[{args.patch_size}, {arch.embedding_size}]]"),
                ("model.init_args.optimizer.init_args.num_layers", str(arch.depth)),
            ]
            run = build_run([config], overrides, os.path.join(workdir, model_id))
            lm, data = run.lm, run.data
            cached = data.tf_dataset("train").take(1).cache().repeat()
            lm.fit(cached, epochs=1, steps_per_epoch=args.warmup_steps, verbose=0)
            start = time.perf_counter()
            lm.fit(cached, epochs=1, steps_per_epoch=args.steps, verbose=0)
            ms = 1000 * (time.perf_counter() - start) / args.steps
            out[model_id] = {"ms_per_step": round(ms, 1), "batch_size": args.batch_size, "patch_size": args.patch_size}
            print(f"  {model_id:<22} 64x64x12 batch {args.batch_size}, patch {args.patch_size}: {ms:8.1f} ms/train step", flush=True)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        if load:
            print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

import vs_rslearn  # noqa: E402  (tools/ is on sys.path)
# ---- scale: sharded predict, bounded-memory scenes, tf.data service ------------------------

from tiny_models import TINY_SEGMENTATION_MODEL  # noqa: E402  (tools/ is on sys.path)

SCALE_CONFIG = "\nseed_everything: 0\n" + TINY_SEGMENTATION_MODEL + """\
data:
  class_path: rslearn.train.data_module.RslearnDataModule
  init_args:
    path: ${DATASET_PATH}
    batch_size: 16
    num_workers: 2
    inputs:
      image:
        data_type: raster
        layers: [sentinel2]
        bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12]
        dtype: FLOAT32
        passthrough: true
    task: {class_path: rslearn.train.tasks.segmentation.SegmentationTask, init_args: {num_classes: 4}}
    default_config:
      transforms:
        - {class_path: rslearn.train.transforms.normalize.Normalize, init_args: {mean: 1500, std: 1000}}
    predict_config: {groups: [GROUP], skip_targets: true, load_all_crops: true, crop_size: CROP, overlap_pixels: 16}
trainer:
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: rslearn.train.prediction_writer.RslearnWriter
      init_args:
        output_layer: output_segmentation
        merger: {class_path: rslearn.train.prediction_writer.RasterMerger, init_args: {overlap_pixels: 16}}
"""


def run_measured(command: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Runs a command; returns its exit code, wall seconds, peak RSS (MiB, from wait4) and output."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    return {"rc": process.returncode, "seconds": seconds, "max_rss_mib": usage.ru_maxrss / 1024, "output": text}


def scale_env(dataset: str) -> dict[str, str]:
    env = dict(os.environ, DATASET_PATH=dataset, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return env


def predict_loop_seconds(output: str) -> float:
    line = [x for x in output.splitlines() if x.startswith("predicted ")][-1]
    return float(line.split(" in ", 1)[1].split("s", 1)[0])


def add_predict_shards_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker process counts to time (default 1 2)")


def run_predict_shards(args: argparse.Namespace) -> dict[str, Any]:
    """Windows/s of ``train.py predict`` over the 300 windows of the sample dataset with 1
    and 2 worker processes (``--shard i/N``) on this machine."""
    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    results: dict[str, Any] = {}
    try:
        sample = make_or_reuse(args.sample, 64, 300, workdir)
        config = os.path.join(workdir, "predict.yaml")
        with open(config, "w") as f:
            f.write(SCALE_CONFIG.replace("GROUP", "default").replace("CROP", "64"))
        for n in args.workers:
            dataset = os.path.join(workdir, f"ds-{n}")
            shutil.rmtree(dataset, ignore_errors=True)
            shutil.copytree(sample, dataset)
            command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "predict", "--config", config]
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                runs = list(pool.map(lambda i: run_measured(command + ([] if n == 1 else ["--shard", f"{i}/{n}"]), scale_env(dataset), workdir), range(n)))
            wall = time.perf_counter() - start
            for r in runs:
                if r["rc"] != 0:
                    raise RuntimeError(r["output"][-3000:])
            windows = sum(int(r["output"].rsplit(" for ", 1)[1].split()[0]) for r in runs)
            loop = max(predict_loop_seconds(r["output"]) for r in runs)
            results[f"{n} worker(s)"] = {"windows": windows, "wall_s": round(wall, 1), "windows_per_s": round(windows / wall, 2), "predict_loop_windows_per_s": round(windows / loop, 1)}
            print(f"  predict {n} worker(s): {windows} windows in {wall:.1f}s = {windows / wall:.2f} windows/s end to end, {windows / loop:.1f} windows/s in the predict loop", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def write_scene_geotiff(path: str, size: int, bands: int = 12) -> None:
    """A compressed size x size x bands uint16 GeoTIFF (low-entropy pixels), block by block."""
    import rasterio
    from affine import Affine

    yy, xx = np.mgrid[0:512, 0:512]
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint16", crs="EPSG:32610", transform=Affine(10, 0, 10000, 0, -10, 20000))
    profile.update(tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="YES")
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 512):
            for x in range(0, size, 512):
                a = (1000 + ((xx + x) // 37 % 5) * 300 + ((yy + y) // 53 % 3) * 200).astype(np.uint16)
                dst.write(np.stack([a + 10 * i for i in range(bands)]), window=rasterio.windows.Window(x, y, 512, 512))


def scene_dataset(root: str, size: int) -> str:
    """An rslearn dataset with one size x size window of 12 Sentinel-2-like bands."""
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    window = os.path.join(root, "windows", "scene", "big")
    raster_dir = os.path.join(window, "layers", "sentinel2", "_".join(bands))
    os.makedirs(raster_dir)
    layers = {"sentinel2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": bands}]}, "output_segmentation": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["class"]}]}}
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"layers": layers}, f)
    with open(os.path.join(window, "metadata.json"), "w") as f:
        json.dump({"projection": {"crs": "EPSG:32610", "x_resolution": 10.0, "y_resolution": -10.0}, "bounds": [1000, -2000, 1000 + size, -2000 + size], "time_range": None, "options": {}}, f)
    write_scene_geotiff(os.path.join(raster_dir, "geotiff.tif"), size)
    open(os.path.join(window, "layers", "sentinel2", "completed"), "w").close()
    return os.path.join(raster_dir, "geotiff.tif")


def add_predict_memory_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="unused (accepted by 'all')")
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="scene sizes in pixels (default 8192 16384)")
    p.add_argument("--tools", nargs="+", choices=("train", "tflite"), default=["train", "tflite"], help="what to measure (default both)")


def run_predict_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of ``train.py predict`` and ``tools/predict_tflite.py`` over one synthetic
    12-band scene per size (crops of 256, overlap 16; the model of SCALE_CONFIG)."""
    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    results: dict[str, Any] = {}
    try:
        config = os.path.join(workdir, "predict.yaml")
        with open(config, "w") as f:
            f.write(SCALE_CONFIG.replace("GROUP", "scene").replace("CROP", "256"))
        tflite = os.path.join(workdir, "seg.tflite")
        if "tflite" in args.tools:
            code = (
                "import os, sys; sys.path.insert(0, %r)\n"
                "from rskeras.config.loader import load_config\nfrom rskeras.run import build_run\n"
                "from rskeras.export.inference import exportable_from_run\nfrom rskeras.export.tflite import convert_tflite, write_tflite\n"
                "r = build_run(load_config([%r], []), 'predict')\n"
                "e = exportable_from_run(r, 'predict', name='seg')\n"
                "write_tflite(e, convert_tflite(e, (256, 256)), %r, (256, 256), 'none')\n"
            ) % (ROOT, config, tflite)
        for size in args.sizes:
            dataset = os.path.join(workdir, f"scene-{size}")
            print(f"  writing a {size}x{size}x12 uint16 scene ...", flush=True)
            scene = scene_dataset(dataset, size)
            if "tflite" in args.tools and not os.path.exists(tflite):
                built = run_measured([sys.executable, "-c", code], scale_env(dataset), workdir)
                if built["rc"] != 0:
                    raise RuntimeError(built["output"][-3000:])
            whole_gib = size * size * 12 * 4 / (1 << 30)
            if "train" in args.tools:
                command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "predict", "--config", config]
                r = run_measured(command, scale_env(dataset), workdir)
                if r["rc"] != 0:
                    raise RuntimeError(r["output"][-3000:])
                results[f"train.py predict {size}"] = {"max_rss_mib": round(r["max_rss_mib"]), "seconds": round(r["seconds"], 1), "whole_scene_float32_gib": round(whole_gib, 1)}
                print(f"  train.py predict {size}x{size}x12: peak RSS {r['max_rss_mib']:.0f} MiB ({r['seconds']:.0f}s; the scene is {whole_gib:.1f} GiB as float32)", flush=True)
            if "tflite" in args.tools:
                command = [sys.executable, os.path.join(ROOT, "tools", "predict_tflite.py"), "--model", tflite, "--input", scene, "--output", os.path.join(workdir, f"out-{size}.tif"), "--overlap", "16", "--quiet"]
                r = run_measured(command, scale_env(dataset), workdir)
                if r["rc"] != 0:
                    raise RuntimeError(r["output"][-3000:])
                results[f"predict_tflite {size}"] = {"max_rss_mib": round(r["max_rss_mib"]), "seconds": round(r["seconds"], 1), "whole_scene_float32_gib": round(whole_gib, 1)}
                print(f"  predict_tflite.py {size}x{size}x12: peak RSS {r['max_rss_mib']:.0f} MiB ({r['seconds']:.0f}s)", flush=True)
            shutil.rmtree(dataset, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def add_data_service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", help="64x64 sample dataset to use/create (default: a temp dir)")
    p.add_argument("--workers", type=int, default=2, help="tf.data service workers (default 2)")
    p.add_argument("--min-examples", type=int, default=1200, help="examples timed after the first epoch (default 1200)")


def run_data_service(args: argparse.Namespace) -> dict[str, Any]:
    """Input examples/s of the classification train split (disk cache) in this process and
    through a loopback tf.data service (a dispatcher and --workers workers)."""
    import socket

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    results: dict[str, Any] = {}
    servers: list[subprocess.Popen] = []
    try:
        sample = make_or_reuse(args.sample, 64, 300, workdir)
        cache = os.path.join(workdir, "cache")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tool = os.path.join(ROOT, "tools", "data_service.py")
        env = scale_env(sample)
        servers.append(subprocess.Popen([sys.executable, tool, "dispatcher", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        servers += [subprocess.Popen([sys.executable, tool, "worker", "--dispatcher", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.workers)]
        for mode, extra in (("local", {}), (f"tf.data service, {args.workers} workers", {"data_service": {"address": f"grpc://127.0.0.1:{port}"}})):
            dm = data_module(sample, 16, 0, cache_dir=cache, **extra)
            (n1, t1), (n2, t2) = time_epochs(dm, args.min_examples)
            results[mode] = {"epoch1_examples_per_s": round(n1 / t1, 1), "later_examples_per_s": round(n2 / max(t2, 1e-9), 1)}
            print(f"  input {mode:<28}: epoch 1 {n1 / t1:8.1f} ex/s, epochs 2+ {n2 / max(t2, 1e-9):8.1f} ex/s", flush=True)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


SECTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {
    "input": ("input pipeline throughput (no cache / disk cache / memory cache)", add_input_arguments, run_input),
    "train-step": ("model train-step throughput on an in-memory batch", add_train_step_arguments, run_train_step),
    "detection": ("detection (configs/detection.yaml): training examples/s, per-image latency Keras/SavedModel/TFLite", add_detection_arguments, run_detection),
    "encoders": ("ms per train step of the Galileo / Presto / SSL4EO-S12 configs on 64x64 windows", add_encoders_arguments, run_encoders),
    "olmoearth": ("OlmoEarth nano/tiny train step (configs/olmoearth_segmentation.yaml, 64x64x12, cached batch)", add_olmoearth_arguments, run_olmoearth),
    "vs-rslearn": (
        "rslearn vs rskeras on the six benchmarks/rslearn configs: CPU-s/epoch, samples/s, RSS, val metrics",
        vs_rslearn.add_vs_rslearn_arguments,
        vs_rslearn.guarded(vs_rslearn.run_vs_rslearn),
    ),
    "step": ("train step of rslearn and rskeras (fp32/bf16/XLA) on the same cached batch, ms/step", vs_rslearn.add_step_arguments, vs_rslearn.guarded(vs_rslearn.run_step)),
    "inference": (
        "per-tile latency: rslearn eager vs rskeras Keras/SavedModel/TFLite fp32/int8",
        vs_rslearn.add_inference_arguments,
        vs_rslearn.guarded(vs_rslearn.run_inference),
    ),
    "predict-shards": ("train.py predict windows/s with 1 and 2 worker processes (--shard i/N)", add_predict_shards_arguments, run_predict_shards),
    "predict-memory": ("peak RSS of train.py predict / predict_tflite.py over 8192^2 and 16384^2 x 12 scenes", add_predict_memory_arguments, run_predict_memory),
    "data-service": ("input examples/s in-process vs through a loopback tf.data service", add_data_service_arguments, run_data_service),
}
# Sections that compare with rslearn need its venv; ``all`` runs the others.
RSLEARN_SECTIONS = ("vs-rslearn", "step", "inference")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    sub = parser.add_subparsers(dest="section", required=True)
    for name, (help_text, add_args, _) in SECTIONS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    all_parser = sub.add_parser("all", help="every rskeras-only section (input, train-step, detection) with default options")
    all_parser.add_argument("--sample", help="64x64 sample dataset to use/create")
    args = parser.parse_args(argv)
    names = [n for n in SECTIONS if n not in RSLEARN_SECTIONS] if args.section == "all" else [args.section]
    for name in names:
        section_parser = argparse.ArgumentParser()
        SECTIONS[name][1](section_parser)
        section_args = args if args.section != "all" else section_parser.parse_args(["--sample", args.sample] if args.sample else [])
        print(f"[{name}]", flush=True)
        RESULTS[name] = SECTIONS[name][2](section_args)
    if "input" in RESULTS and "train-step" in RESULTS:
        demand = RESULTS["train-step"]["classification_examples_per_s"]
        print("[ratios] input pipeline rate / train-step demand (64x64x12, classification.yaml):")
        for mode in ("no cache", "disk cache", "memory cache"):
            r = RESULTS["input"][f"64x64x12 {mode}"]
            print(f"  {mode:<12}: epoch 1 {r['epoch1_examples_per_s'] / demand:6.2f}x, epochs 2+ {r['later_examples_per_s'] / demand:6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
