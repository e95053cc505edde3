"""Errors raised while exporting a model."""

from __future__ import annotations


class ExportError(ValueError):
    """A model or config cannot be exported as asked; the message names the config key,
    transform, input or op at fault."""


class UnsupportedOpsError(ExportError):
    """TFLite conversion needs ops outside the TFLite builtin op set (Flex / custom ops).

    Attributes:
        ops: the TensorFlow op names (e.g. ``["Cumprod"]``).
        scopes: op name -> the name scopes (layer paths) where the op appears.
    """

    def __init__(self, message: str, ops: list[str], scopes: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.ops = list(ops)
        self.scopes = dict(scopes or {})
