"""An rslearn dataset on disk: ``config.json`` plus ``windows/<group>/<name>/``."""

from __future__ import annotations

import logging
import os

from rskeras.config.dataset import DatasetConfig
from rskeras.dataset.window import Window, WindowError

logger = logging.getLogger(__name__)


class Dataset:
    """Opens the dataset at ``path`` and lists its windows.

    Args:
        path: dataset root (a local directory).
    """

    def __init__(self, path: str):
        self.path = str(path)
        self.config = DatasetConfig.load(self.path)

    @property
    def layers(self):
        return self.config.layers

    def windows_dir(self) -> str:
        return os.path.join(self.path, "windows")

    def list_groups(self) -> list[str]:
        try:
            return sorted(g for g in os.listdir(self.windows_dir()) if not g.startswith(".") and os.path.isdir(os.path.join(self.windows_dir(), g)))
        except FileNotFoundError:
            return []

    def window_paths(self, groups: list[str] | None = None, names: list[str] | None = None) -> list[tuple[str, str, str]]:
        """(path, group, name) of the windows in ``groups`` (all if None), optionally only ``names``."""
        out = []
        selected = groups if groups else self.list_groups()
        wanted = set(names) if names else None
        for group in selected:
            gdir = os.path.join(self.windows_dir(), group)
            if not os.path.isdir(gdir):
                logger.warning("dataset %s: window group %s does not exist, skipping", self.path, group)
                continue
            for name in sorted(os.listdir(gdir)):
                if name.startswith(".") or (wanted is not None and name not in wanted):
                    continue
                path = os.path.join(gdir, name)
                if os.path.isdir(path):
                    out.append((path, group, name))
        return out

    def load_windows(
        self,
        groups: list[str] | None = None,
        names: list[str] | None = None,
        skip_bad: bool = False,
        bad: list[tuple[str, str]] | None = None,
    ) -> list[Window]:
        """Loads the windows of ``groups`` (all if None), optionally only ``names``.

        Args:
            groups: window groups (all groups when None or empty).
            names: window names to keep (all when None or empty).
            skip_bad: skip windows whose ``metadata.json`` is missing or malformed
                (each is appended to ``bad`` as ``(window label, message)``) instead of
                raising ``WindowError``.
            bad: list collecting the skipped windows.
        """
        out = []
        for path, group, name in self.window_paths(groups, names):
            try:
                out.append(Window.load(path, group, name))
            except WindowError as e:
                if not skip_bad:
                    raise
                logger.warning("skipping window %s/%s: %s", group, name, e)
                if bad is not None:
                    bad.append((f"{group}/{name}", str(e)))
        return out
