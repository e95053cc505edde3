#!/usr/bin/env python
"""Replays rslearn's first training steps in rskeras: same initial weights, same batches.

Separates "initialisation" from "the training step" when a config learns differently in
the two systems. rslearn (in its venv) seeds, builds the config's model, saves its fresh
weights and runs ``--steps`` AdamW steps on the val batches in order, stochastic depth off
(``torch_side/rslearn_bench.py trajectory``); rskeras then loads those weights through the
torch-weight loader and runs the same steps on the same batches. The per-step training
losses should agree to float32 noise that grows slowly with the steps; a step that
diverges at once points at the loss, the gradients or the optimizer.

    python benchmarks/rslearn/compare_training.py --rslearn-python ~/rsenv/bin/python \\
        [--config benchmarks/rslearn/classification.yaml] [--steps 16] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import vs_rslearn  # noqa: E402


def rskeras_losses(config: str, anchor: str, init: str, steps: int) -> list[float]:
    import tensorflow as tf

    from rskeras.models.swin import StochasticDepth
    from rskeras.weights.files import read_state_dict
    from rskeras.weights.torch_params import load_torch_state_dict

    run = vs_rslearn._build_run(config, anchor, [], os.path.join(anchor, "rskeras_run"))
    load_torch_state_dict(run.lm.model, read_state_dict(init), strict=True)
    for layer in run.lm.model._flatten_layers(include_self=True):
        if isinstance(layer, StochasticDepth):
            layer.p = 0.0
    batches = list(run.data.tf_dataset("val", shuffle=False))
    signature = tf.nest.map_structure(tf.TensorSpec.from_tensor, batches[0])
    ds = tf.data.Dataset.from_generator(lambda: (batches[i % len(batches)] for i in range(steps)), output_signature=signature).repeat()
    means = []

    import keras

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            means.append(float(np.asarray(logs["train_loss"])))

    run.lm.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Record()])
    sizes = [int(tf.nest.flatten(batches[i % len(batches)][0])[0].shape[0]) for i in range(steps)]
    losses, total, count = [], 0.0, 0
    for mean, size in zip(means, sizes):  # running batch-weighted means -> per-step losses
        new_total = mean * (count + size)
        losses.append((new_total - total) / size)
        total, count = new_total, count + size
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rslearn-python", required=True, help="Python of the rslearn venv")
    parser.add_argument("--rslearn-callbacks", default=vs_rslearn.DEFAULT_KIT, help="folder with the kit's anchor_callbacks.py")
    parser.add_argument("--config", default=vs_rslearn.config_path("classification"))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dataset", default=None, help="anchor dataset (default: a new one in a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        vs_rslearn.check_rslearn_python(args.rslearn_python)
        vs_rslearn.check_kit(args.rslearn_callbacks)
    except vs_rslearn.BenchmarkError as e:
        print(f"compare_training.py: error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rskeras-compare-") as tmp:
        dataset = args.dataset or os.path.join(tmp, "dataset")
        vs_rslearn.ensure_dataset(dataset, 64, 256, 64, 0)
        anchor = os.path.join(tmp, "anchor")
        os.makedirs(anchor)
        os.symlink(os.path.abspath(dataset), os.path.join(anchor, "dataset"))
        out = os.path.join(tmp, "trajectory.json")
        opts = argparse.Namespace(rslearn_python=args.rslearn_python, rslearn_callbacks=args.rslearn_callbacks, config=args.config, timeout_s=3600, nice=0, threads=None)
        torch_side = vs_rslearn.run_torch_side(opts, "trajectory", ["--steps", str(args.steps), "--seed", str(args.seed)], anchor, out, os.path.join(tmp, "rslearn.log"))
        if "error" in torch_side:
            print(f"compare_training.py: rslearn failed: {torch_side['error']}", file=sys.stderr)
            return 1
        ours = rskeras_losses(args.config, anchor, out + ".init.npz", args.steps)
    theirs = torch_side["losses"]
    print(f"{os.path.basename(args.config)}: {args.steps} steps from rslearn's seed-{args.seed} weights, val batches in order, stochastic depth off")
    print(f"  {'step':>4} {'rslearn loss':>13} {'rskeras loss':>13} {'rel diff':>9}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(theirs, ours)):
        rel = abs(a - b) / max(abs(a), 1e-12)
        worst = max(worst, rel)
        print(f"  {i:>4} {a:13.6f} {b:13.6f} {rel:9.2e}")
    print(json.dumps({"max_rel_diff": worst}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
