"""Galileo (rslearn ``rslearn.models.galileo``)."""

from .galileo import Galileo, GalileoModel, GalileoSize

__all__ = ["Galileo", "GalileoModel", "GalileoSize"]
