"""Which of two exact forms of an op a model traces: the trainer's steps or a portable graph.

Some layers have two implementations of the same numbers: one that trains faster in
TensorFlow and one that a TFLite export takes with builtin ops only, or that the LiteRT
interpreter hands whole to XNNPACK. The trainer's train, eval and predict steps trace
their model inside ``trainer_step_graph()``; everything else (SavedModel and TFLite
exports, a Keras model called directly) gets the portable form. Users:

* RoIAlign (``rskeras.models.detection.roi_align``): ``crop_and_resize`` in the trainer,
  gathers elsewhere (TFLite has no CROP_AND_RESIZE builtin);
* Swin (``rskeras.models.swin``): the cyclic shift as a split + concat in the trainer (its
  gradient is one concat), two strided slices + concat elsewhere (an unequal split is a
  SPLIT_V, which XNNPACK does not delegate); the patch merging as four stride-2 slices in
  the trainer, a reshape + transpose elsewhere (XNNPACK leaves stride-2 slices out);
* nearest upsampling by an integer factor (``rskeras.models.interpolate``, UNetDecoder and
  Fpn): a broadcast + reshape in the trainer's XLA steps (XLA compiles it and its
  gradient; ``ResizeNearestNeighborGrad`` has no XLA kernel) and in any trainer step on a
  GPU (the resize's GPU gradient is not deterministic); TF's legacy nearest resize
  elsewhere, including the trainer's CPU steps without XLA (its CPU gradient is ~5x faster
  than the broadcast's sum) and exports (TFLite's ``BROADCAST_TO`` is not delegated to
  XNNPACK: at 256x256 it took 90 ms of the segmentation model's 300).

``trainer_step_graph(xla=True)`` marks the part of a step that XLA compiles.
"""

from __future__ import annotations

_depth = 0
_xla_depth = 0


class trainer_step_graph:  # noqa: N801 - used as a context manager, like contextlib's
    """Within this block (while a trainer step is traced), layers use their training form;
    ``xla=True``: the block is traced for XLA (``trainer.jit_compile``).

    A class, not a generator: AutoGraph, which converts the code a Keras step calls,
    breaks generator-based context managers."""

    def __init__(self, xla: bool = False):
        self.xla = bool(xla)

    def __enter__(self):
        global _depth, _xla_depth
        _depth += 1
        _xla_depth += self.xla
        return self

    def __exit__(self, *exc):
        global _depth, _xla_depth
        _depth -= 1
        _xla_depth -= self.xla
        return False


def in_trainer_step() -> bool:
    """Whether a trainer step is being traced (see the module docstring)."""
    return _depth > 0


def in_xla_step() -> bool:
    """Whether the part of a trainer step being traced is compiled by XLA."""
    return _depth > 0 and _xla_depth > 0
