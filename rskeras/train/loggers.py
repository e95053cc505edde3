"""Experiment loggers for ``trainer.logger`` (Lightning ``lightning.pytorch.loggers``).

``lightning.pytorch.loggers.X`` class paths map to ``rskeras.train.loggers.X``:

* ``TensorBoardLogger(save_dir, name="lightning_logs", version=None, sub_dir=None)``:
  TensorBoard event files in ``<save_dir>/<name>/version_<n>[/<sub_dir>]`` (Keras'
  ``train``/``validation`` sub-directories inside);
* ``CSVLogger(save_dir, name="lightning_logs", version=None)``: ``metrics.csv`` (and
  ``metrics.json``) with one row per epoch in ``<save_dir>/<name>/version_<n>``;
* ``WandbLogger``, ``MLFlowLogger``: not available in rskeras (no network services); a
  clear error says so.

``trainer.logger: true`` (Lightning's default) means a ``TensorBoardLogger`` in the run
directory; ``false`` turns TensorBoard off. The trainer always writes ``metrics.csv`` /
``metrics.json`` in the run directory as well (``MetricsFileLogger``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import keras
import numpy as np

from rskeras.keras_compat import TensorBoardWithoutLearningRate
from rskeras.utils.fileio import atomic_write_text


def next_version(root: str) -> int:
    """The first unused ``version_<n>`` number under ``root``."""
    if not os.path.isdir(root):
        return 0
    numbers = [int(m.group(1)) for d in os.listdir(root) if (m := re.fullmatch(r"version_(\d+)", d))]
    return max(numbers) + 1 if numbers else 0


class MetricsFileLogger(keras.callbacks.Callback):
    """Writes every epoch's logs to ``metrics.csv`` and ``metrics.json`` (atomically).

    Rows of epochs at or after the current one are replaced, so a resumed run continues
    the files of the interrupted one.
    """

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, logs=None):
        if os.path.isdir(self.directory):  # temporary files of a killed run
            for name in os.listdir(self.directory):
                if name.startswith((".metrics.json.", ".metrics.csv.")) and ".tmp" in name:
                    os.remove(os.path.join(self.directory, name))
        path = os.path.join(self.directory, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                self.rows = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        lines = [",".join(keys)] + [",".join("" if k not in r else repr(r[k]) for k in keys) for r in self.rows]
        atomic_write_text(os.path.join(self.directory, "metrics.csv"), "\n".join(lines) + "\n")
        atomic_write_text(os.path.join(self.directory, "metrics.json"), json.dumps(self.rows, indent=2))


class Logger:
    """A logger: the Keras callbacks that write its files."""

    def __init__(self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None):
        self.save_dir = str(save_dir)
        self.name = name or ""
        self.version = version
        self._log_dir: str | None = None

    @property
    def log_dir(self) -> str:
        if self._log_dir is None:
            root = os.path.join(self.save_dir, self.name)
            version = self.version if self.version is not None else next_version(root)
            version = version if isinstance(version, str) else f"version_{version}"
            self._log_dir = os.path.join(root, version)
        return self._log_dir

    def callbacks(self, trainer) -> list[keras.callbacks.Callback]:  # pragma: no cover - interface
        raise NotImplementedError


class TensorBoardLogger(Logger):
    """TensorBoard event files (Lightning ``TensorBoardLogger``).

    Args:
        save_dir: root directory.
        name: experiment name (default "lightning_logs"; empty: no sub-directory).
        version: int or string (default: next free ``version_<n>``).
        log_graph: write the model graph.
        default_hp_metric, prefix, comment, max_queue, flush_secs: accepted for
            compatibility.
        sub_dir: extra sub-directory of the version directory.
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | None = None,
        comment: str = "",
        max_queue: int = 10,
        flush_secs: int = 120,
    ):
        super().__init__(save_dir, name, version)
        self.log_graph = log_graph
        self.sub_dir = sub_dir

    @property
    def log_dir(self) -> str:
        base = super().log_dir
        return os.path.join(base, self.sub_dir) if self.sub_dir else base

    def callbacks(self, trainer) -> list[keras.callbacks.Callback]:
        # Without Keras' learning_rate entry (the next epoch's rate): rskeras logs ``lr``,
        # the rate used during the epoch.
        return [TensorBoardWithoutLearningRate(log_dir=trainer.worker_path(self.log_dir), write_graph=self.log_graph)]


class CSVLogger(Logger):
    """Per-epoch metrics as CSV/JSON (Lightning ``CSVLogger``).

    Args:
        save_dir: root directory.
        name: experiment name (default "lightning_logs").
        version: int or string (default: next free ``version_<n>``).
        prefix, flush_logs_every_n_steps: accepted for compatibility.
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        super().__init__(save_dir, name, version)

    def callbacks(self, trainer) -> list[keras.callbacks.Callback]:
        return [MetricsFileLogger(trainer.worker_path(self.log_dir))]


class _Unavailable:
    service = ""

    def __init__(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(
            f"{type(self).__name__} ({self.service}) is not available in rskeras; "
            "use lightning.pytorch.loggers.TensorBoardLogger or CSVLogger (metrics.csv/metrics.json are always written)"
        )


class WandbLogger(_Unavailable):
    service = "Weights & Biases"


class MLFlowLogger(_Unavailable):
    service = "MLflow"
