"""Presto (rslearn ``rslearn.models.presto``)."""

from .presto import Presto

__all__ = ["Presto"]
