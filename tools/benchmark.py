#!/usr/bin/env python
"""Throughput measurements of rskeras: figures and ratios, no pass/fail.

Sections (run one, or ``all``)::

    python tools/benchmark.py input        # input pipeline alone, examples/s
    python tools/benchmark.py train-step   # the model's train step alone, examples/s
    python tools/benchmark.py detection    # detection training rate and inference latency
    python tools/benchmark.py all

``input`` builds (or reuses, with --sample / --large) two sample datasets
(tools/make_sample_dataset.py): 64x64 and 256x256 windows with 12 bands, and iterates
the train split of configs/classification.yaml (whole windows, Normalize, batch 16) with
no cache, with the on-disk input cache (``cache_dir``: first epoch decodes and writes,
later epochs read the cache) and with the in-memory cache. ``train-step`` times
``train_step`` of configs/classification.yaml on one batch held in memory, i.e. the rate
at which the model consumes examples; the input section prints the ratio of pipeline rate
to that demand (>1: the model sets the training speed).

Adding a section: write ``def run_<name>(args) -> dict`` plus an ``add_<name>_arguments``
and register both in SECTIONS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

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
    from rskeras.lightning_cli import Run

    workdir = tempfile.mkdtemp(prefix="rskeras-bench-")
    try:
        dataset = make_or_reuse(args.sample, 64, 300, workdir)
        os.environ["DATASET_PATH"] = dataset
        cfg = load_config([CONFIG], [("data.init_args.batch_size", str(args.batch_size)), ("trainer.default_root_dir", os.path.join(workdir, "run"))])
        run = Run(cfg, [CONFIG], "fit")
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


def add_detection_arguments(p: argparse.ArgumentParser) -> None:
    from benchmark_detection import add_arguments

    add_arguments(p)


def run_detection(args: argparse.Namespace) -> dict[str, Any]:
    from benchmark_detection import run

    return run(args)


SECTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {
    "input": ("input pipeline throughput (no cache / disk cache / memory cache)", add_input_arguments, run_input),
    "train-step": ("model train-step throughput on an in-memory batch", add_train_step_arguments, run_train_step),
    "detection": ("detection (configs/detection.yaml): training examples/s, per-image latency Keras/SavedModel/TFLite", add_detection_arguments, run_detection),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    sub = parser.add_subparsers(dest="section", required=True)
    for name, (help_text, add_args, _) in SECTIONS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    all_parser = sub.add_parser("all", help="every section with default options")
    all_parser.add_argument("--sample", help="64x64 sample dataset to use/create")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if args.section == "all" else [args.section]
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
