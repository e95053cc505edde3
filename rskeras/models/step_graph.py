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
  Fpn): a broadcast + reshape in the trainer (XLA compiles it and its gradient), TF's
  legacy nearest resize elsewhere (TFLite's ``BROADCAST_TO`` is not delegated to XNNPACK:
  at 256x256 it took 90 ms of the segmentation model's 300).
"""

from __future__ import annotations

_depth = 0


class trainer_step_graph:  # noqa: N801 - used as a context manager, like contextlib's
    """Within this block (while a trainer step is traced), layers use their training form.

    A class, not a generator: AutoGraph, which converts the code a Keras step calls,
    breaks generator-based context managers."""

    def __enter__(self):
        global _depth
        _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        _depth -= 1
        return False


def in_trainer_step() -> bool:
    """Whether a trainer step is being traced (see the module docstring)."""
    return _depth > 0
