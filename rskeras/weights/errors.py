"""Errors of torch-format weight I/O."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file cannot be read; the message names the file and the problem."""


class WeightLoadError(ValueError):
    """A state dict does not fit a model; the message lists every key at fault."""
