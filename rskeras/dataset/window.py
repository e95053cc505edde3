"""A window: a box in pixel coordinates of a projection, with its layer data on disk."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any

from rskeras.config.dataset import LayerConfig, band_set_dir_name
from rskeras.utils.geometry import PixelBounds, Projection


class WindowError(ValueError):
    """A window's files are missing or malformed (the message names the window)."""


def layer_dir_name(layer: str, group_idx: int = 0) -> str:
    """Directory of item group ``group_idx`` of ``layer`` (group 0 is the bare name)."""
    return layer if group_idx == 0 else f"{layer}.{group_idx}"


def parse_layer_dir_name(name: str) -> tuple[str, int]:
    """``"s2"`` -> ("s2", 0), ``"s2.3"`` -> ("s2", 3); more than one '.' is an error."""
    parts = name.split(".")
    if len(parts) == 1:
        return name, 0
    if len(parts) == 2:
        try:
            return parts[0], int(parts[1])
        except ValueError:
            pass
    raise ValueError(f"invalid layer directory name {name!r} (expected <layer> or <layer>.<int>)")


def parse_time(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


@dataclasses.dataclass
class Window:
    """One window of an rslearn dataset (``windows/<group>/<name>/``)."""

    path: str
    group: str
    name: str
    projection: Projection
    bounds: PixelBounds
    time_range: tuple[datetime.datetime, datetime.datetime] | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.bounds[2] - self.bounds[0]

    @property
    def height(self) -> int:
        return self.bounds[3] - self.bounds[1]

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}"

    @classmethod
    def load(cls, path: str, group: str | None = None, name: str | None = None) -> "Window":
        """Reads ``<path>/metadata.json``; errors name the window directory."""
        group = group if group is not None else os.path.basename(os.path.dirname(path))
        name = name if name is not None else os.path.basename(path)
        md_path = os.path.join(path, "metadata.json")
        try:
            with open(md_path) as f:
                md = json.load(f)
        except FileNotFoundError:
            raise WindowError(f"window {group}/{name}: missing {md_path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WindowError(f"window {group}/{name}: malformed metadata.json ({md_path}): {e}") from None
        return cls.from_metadata(md, path, group, name)

    @classmethod
    def from_metadata(cls, md: Any, path: str, group: str, name: str) -> "Window":
        where = f"window {group}/{name}: metadata.json"
        if not isinstance(md, dict):
            raise WindowError(f"{where}: expected an object")
        try:
            projection = Projection.from_json(md["projection"])
        except (KeyError, TypeError, ValueError) as e:
            raise WindowError(f"{where}: invalid or missing 'projection' ({e!r})") from None
        bounds = md.get("bounds")
        if not isinstance(bounds, list) or len(bounds) != 4 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            raise WindowError(f"{where}: 'bounds' must be a list of 4 integers, got {bounds!r}")
        if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
            raise WindowError(
                f"{where}: 'bounds' {bounds} have a zero or negative size "
                f"({bounds[2] - bounds[0]}x{bounds[3] - bounds[1]} pixels; expected [x0, y0, x1, y1] with x1 > x0 and y1 > y0)"
            )
        time_range = None
        if md.get("time_range"):
            try:
                time_range = (parse_time(md["time_range"][0]), parse_time(md["time_range"][1]))
            except (TypeError, ValueError, IndexError) as e:
                raise WindowError(f"{where}: invalid 'time_range' {md['time_range']!r} ({e})") from None
        options = md.get("options") or {}
        if not isinstance(options, dict):
            raise WindowError(f"{where}: 'options' must be an object")
        return cls(path, group, name, projection, tuple(bounds), time_range, options)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "projection": self.projection.to_json(),
            "bounds": list(self.bounds),
            "time_range": [t.isoformat() for t in self.time_range] if self.time_range else None,
            "options": self.options,
        }

    def save(self) -> None:
        """Writes metadata.json atomically."""
        from rskeras.utils.fileio import atomic_write_text

        os.makedirs(self.path, exist_ok=True)
        atomic_write_text(os.path.join(self.path, "metadata.json"), json.dumps(self.to_metadata()))

    # ---- layer data ---------------------------------------------------------------------

    def layer_dir(self, layer: str, group_idx: int = 0) -> str:
        return os.path.join(self.path, "layers", layer_dir_name(layer, group_idx))

    def is_layer_completed(self, layer: str, group_idx: int = 0) -> bool:
        return os.path.exists(os.path.join(self.layer_dir(layer, group_idx), "completed"))

    def completed_layers(self) -> list[tuple[str, int]]:
        """(layer, group index) of every completed item group, sorted.

        As in rslearn, every non-hidden directory under ``layers/`` must parse as
        ``<layer>`` or ``<layer>.<int>`` (a malformed name is an error even when that
        directory is not completed).
        """
        layers_dir = os.path.join(self.path, "layers")
        try:
            entries = list(os.scandir(layers_dir))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                parsed = parse_layer_dir_name(entry.name)
            except ValueError as e:
                raise WindowError(f"window {self.label}: {e}") from None
            if os.path.exists(os.path.join(entry.path, "completed")):
                out.append(parsed)
        return sorted(out)

    def completed_group_indexes(self, layer: str) -> list[int]:
        return [idx for name, idx in self.completed_layers() if name == layer]

    def mark_layer_completed(self, layer: str, group_idx: int = 0, root: str | None = None) -> None:
        """Writes the layer's ``completed`` marker durably (temporary file, fsync, rename):
        a symlink named ``completed`` is replaced, never followed. With ``root`` (the
        dataset root) the layer directory must resolve inside it."""
        from rskeras.utils.fileio import atomic_write_bytes

        atomic_write_bytes(os.path.join(self.layer_dir(layer, group_idx), "completed"), b"", root)

    def raster_dir(self, layer: str, bands: list[str], group_idx: int = 0) -> str:
        return os.path.join(self.layer_dir(layer, group_idx), band_set_dir_name(bands))

    def raster_path(self, layer: str, bands: list[str], group_idx: int = 0) -> str:
        return os.path.join(self.raster_dir(layer, bands, group_idx), "geotiff.tif")

    def vector_path(self, layer: str, group_idx: int = 0) -> str:
        return os.path.join(self.layer_dir(layer, group_idx), "data.geojson")

    def band_set_raster_path(self, layer: str, layer_config: LayerConfig, band_set_idx: int, group_idx: int = 0) -> str:
        return self.raster_path(layer, layer_config.band_sets[band_set_idx].bands, group_idx)
