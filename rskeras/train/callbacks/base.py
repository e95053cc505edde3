"""The callback interface the rskeras trainer adds to Keras callbacks.

A ``Callback`` is a ``keras.callbacks.Callback`` with three Lightning-like additions:

* ``setup(trainer, lm)``: called by the trainer before the optimizer is built (fit only),
  e.g. to freeze modules so that they are left out of the optimizer;
* ``state_dict()`` / ``load_state_dict(state)``: JSON-serializable state saved in every
  training checkpoint and restored on resume (best values, wait counters, ...);
* ``trainer``: the running ``rskeras.train.trainer.Trainer`` (set before ``fit``).

Callback state is keyed by ``state_key`` (class name and position among the callbacks
of that class), so a resumed run must list its callbacks in the same order.
"""

from __future__ import annotations

from typing import Any

import keras


class Callback(keras.callbacks.Callback):
    """Base of the rskeras callbacks (see module docstring)."""

    def __init__(self):
        super().__init__()
        self.trainer = None

    def setup(self, trainer, lm) -> None:
        """Before the optimizer is built (fit only)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
