"""Measurement-only Keras callback for the rskeras half of the rslearn side-by-side runs.

The configs in ``benchmarks/rslearn/`` name ``anchor_callbacks.EpochStats`` (class path
untouched, as an rslearn user would hand them over). For rslearn that is the anchor kit's
Lightning callback; ``tools/benchmark.py vs-rslearn`` puts *this* directory on PYTHONPATH
for rskeras, so the same YAML resolves to this Keras callback, which writes the same JSON
lines with the same meaning:

* ``train_s``: wall time from the start of the first train batch to the end of the last
  (input pipeline inside the epoch included, validation excluded);
* ``train_cpu_s_main`` / ``train_cpu_s_tree``: CPU seconds (user + system) of the trainer
  process / of its whole process tree over that interval;
* ``train_samples``: examples trained in the epoch (the batch-size-weighted count of
  the ``train_loss`` tracker, so a short last batch counts right);
* ``first_batch_wait_s``: epoch start to first batch start;
* ``val_s``: wall time of the epoch's validation;
* ``peak_tree_rss_mb``: peak of the summed VmRSS of the process tree, sampled at every
  train and validation batch (shared pages counted twice, as in the kit);
* ``metrics``: the epoch's logged scalars (``train_loss``, ``val_loss``, ``val_<metric>``).

Not part of the rskeras package: it only measures. Linux only (reads /proc).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from proc_tree import process_cpu_s, tree_cpu_s, tree_rss_mb  # noqa: E402  (same folder)


class EpochStats(keras.callbacks.Callback):
    """Per-epoch throughput, CPU seconds, peak RSS and metrics as JSON lines in ``out``.

    Args:
        out: JSON-lines file (appended to).
        rss_every_n_batches: sample the process-tree RSS every n batches (default 1).
    """

    def __init__(self, out: str, rss_every_n_batches: int = 1):
        super().__init__()
        self.out = Path(out)
        self.rss_every = max(1, int(rss_every_n_batches))
        self.pid = os.getpid()
        self.peak_tree_rss_mb = 0.0
        self._fit_t0 = None
        self._in_fit = False

    # ---- helpers -------------------------------------------------------------------

    def _sample_rss(self) -> None:
        self.peak_tree_rss_mb = max(self.peak_tree_rss_mb, tree_rss_mb(self.pid))

    def _write(self, record: dict) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print("[EpochStats] " + json.dumps(record), flush=True)

    def _train_samples(self) -> int | None:
        tracker = getattr(self.model, "train_trackers", {}).get("train_loss")
        count = getattr(tracker, "count", None)
        if count is None:
            return None
        return int(round(float(np.asarray(count.numpy() if hasattr(count, "numpy") else count))))

    # ---- fit -----------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._fit_t0 = time.perf_counter()
        self._in_fit = True
        self._sample_rss()

    def on_train_end(self, logs=None):
        self._in_fit = False
        self._sample_rss()
        self._write(
            {
                "event": "fit_end",
                "fit_wall_s": round(time.perf_counter() - self._fit_t0, 2),
                "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
            }
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_t0 = time.perf_counter()
        self._t_train0 = self._t_train1 = None
        self._steps = 0
        self._train_cpu_s = self._train_tree_cpu_s = None
        self._val_t0 = None
        self._val_s = None
        self._first_batch_wait_s = float("nan")

    def on_train_batch_begin(self, batch, logs=None):
        if self._t_train0 is None:
            self._t_train0 = time.perf_counter()
            self._first_batch_wait_s = self._t_train0 - self._epoch_t0
            self._cpu0 = process_cpu_s(self.pid)
            self._tree_cpu0 = tree_cpu_s(self.pid)

    def on_train_batch_end(self, batch, logs=None):
        self._t_train1 = time.perf_counter()
        self._steps += 1
        if batch % self.rss_every == 0:
            self._sample_rss()

    def _close_train_part(self):
        if self._train_cpu_s is None and self._t_train0 is not None:
            self._train_cpu_s = process_cpu_s(self.pid) - self._cpu0
            self._train_tree_cpu_s = sum(c - self._tree_cpu0.get(p, 0.0) for p, c in tree_cpu_s(self.pid).items())
            self._n_train = self._train_samples()

    # ---- validation inside fit -----------------------------------------------------

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            return
        self._close_train_part()
        self._val_t0 = time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        if self._in_fit and batch % self.rss_every == 0:
            self._sample_rss()

    def on_test_end(self, logs=None):
        if self._in_fit and self._val_t0 is not None:
            self._val_s = time.perf_counter() - self._val_t0

    def on_epoch_end(self, epoch, logs=None):
        self._close_train_part()
        self._sample_rss()
        train_s = (self._t_train1 - self._t_train0) if self._t_train0 is not None else float("nan")
        n = getattr(self, "_n_train", None)
        metrics = {}
        for key, value in (logs or {}).items():
            array = np.asarray(value)
            if array.size == 1:
                metrics[key] = float(array.reshape(()))
        self._write(
            {
                "event": "epoch_end",
                "epoch": epoch,
                "train_samples": n,
                "train_s": round(train_s, 2),
                "first_batch_wait_s": round(self._first_batch_wait_s, 2),
                "train_samples_per_s": round(n / train_s, 2) if n and train_s > 0 else None,
                "train_cpu_s_main": None if self._train_cpu_s is None else round(self._train_cpu_s, 2),
                "train_cpu_s_tree": None if self._train_tree_cpu_s is None else round(self._train_tree_cpu_s, 2),
                "val_s": None if self._val_s is None else round(self._val_s, 2),
                "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
                "metrics": metrics,
            }
        )
