"""Where a fit's time goes: wall and CPU seconds by phase, in ``<root>/timings.json``.

Every fit records (wall seconds, and CPU seconds of the whole process: all its threads):

* ``startup``: from the process start to the fit (imports, config, dataset index, model
  build; written by the ``fit`` command, absent when ``Trainer.fit`` is called directly);
* ``setup``: the fit's own preparation (run directory, callbacks, optimizer, restore);
* ``sanity_validation``: Lightning's sanity check (``num_sanity_val_steps``), which also
  traces the validation step;
* ``train_first_step``: the first train batch (tracing the train step, its first run);
* ``train_other_steps``: every other train batch, input waits included;
* ``validation_first`` / ``validation_other``: the first validation of the fit (traced
  already when a sanity check ran) and the others;
* ``epoch_end``: the callbacks' epoch-end work (checkpoints, metrics files, logs,
  schedulers);
* ``after_fit``: the fit's closing work (fit state, backup removal);
* ``best_checkpoint`` / ``export``: the ``fit`` command's reload of the best checkpoint
  (and validation when the fit logged none) and its SavedModel export.

The file is rewritten (atomically) at the end of the fit and again by the ``fit`` command.
"""

from __future__ import annotations

import json
import logging
import os
import time

import keras

from rskeras.utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
ORDER = (
    "startup",
    "setup",
    "sanity_validation",
    "train_first_step",
    "train_other_steps",
    "validation_first",
    "validation_other",
    "epoch_end",
    "after_fit",
    "best_checkpoint",
    "export",
)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class PhaseClock:
    """Sums wall and process-CPU seconds by phase name (phases may repeat)."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}
        self._started: dict[str, tuple[float, float]] = {}

    def add(self, phase: str, wall_s: float, cpu_s: float) -> None:
        entry = self.phases.setdefault(phase, {"wall_s": 0.0, "cpu_s": 0.0})
        entry["wall_s"] += wall_s
        entry["cpu_s"] += cpu_s

    def ordered(self) -> list[tuple[str, dict[str, float]]]:
        known = [(name, self.phases[name]) for name in ORDER if name in self.phases]
        return known + [(name, e) for name, e in self.phases.items() if name not in ORDER]

    def start(self, phase: str) -> None:
        self._started[phase] = (time.perf_counter(), time.process_time())

    def stop(self, phase: str) -> None:
        started = self._started.pop(phase, None)
        if started is not None:
            self.add(phase, time.perf_counter() - started[0], time.process_time() - started[1])

    def summary(self) -> str:
        return ", ".join(f"{name} {entry['wall_s']:.1f}" for name, entry in self.ordered())

    def write(self, directory: str) -> str:
        """Writes ``<directory>/timings.json``; returns its path."""
        path = os.path.join(directory, TIMINGS_FILE)
        rounded = {name: {"wall_s": round(e["wall_s"], 3), "cpu_s": round(e["cpu_s"], 3)} for name, e in self.ordered()}
        total = {"wall_s": round(sum(e["wall_s"] for e in self.phases.values()), 3), "cpu_s": round(sum(e["cpu_s"] for e in self.phases.values()), 3)}
        os.makedirs(directory, exist_ok=True)
        atomic_write_text(path, json.dumps({"phases": rounded, "total": total}, indent=2) + "\n")
        return path


class FitTimings(keras.callbacks.Callback):
    """Times the phases of ``Model.fit`` into a :class:`PhaseClock`; the fit's first
    callback, so that ``epoch_end`` covers every other callback's epoch-end work."""

    def __init__(self, clock: PhaseClock):
        super().__init__()
        self.clock = clock
        self._first_batch = True
        self._validations = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.stop("epoch_end")
        self.clock.start("train")

    def on_train_batch_begin(self, batch, logs=None):
        if self._first_batch:
            self.clock.start("train_first_step")

    def on_train_batch_end(self, batch, logs=None):
        if self._first_batch:
            self.clock.stop("train_first_step")
            self._first_batch = False

    def on_test_begin(self, logs=None):
        self.clock.stop("train")  # a no-op when not running
        self.clock.start("validation_first" if self._validations == 0 else "validation_other")

    def on_test_end(self, logs=None):
        self.clock.stop("validation_first" if self._validations == 0 else "validation_other")
        self._validations += 1

    def on_epoch_end(self, epoch, logs=None):
        self.clock.stop("train")
        self.clock.start("epoch_end")

    def on_train_end(self, logs=None):
        self.clock.stop("train")
        self.clock.stop("epoch_end")
        train = self.clock.phases.pop("train", None)
        first = self.clock.phases.get("train_first_step")
        if train is not None:
            other = {k: train[k] - (first[k] if first else 0.0) for k in ("wall_s", "cpu_s")}
            self.clock.add("train_other_steps", max(other["wall_s"], 0.0), max(other["cpu_s"], 0.0))
