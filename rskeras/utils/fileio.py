"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` (or ``os.makedirs``) would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def apply_default_mode(path: str) -> None:
    """Gives a temporary file or directory (``mkstemp``/``mkdtemp``: 0600/0700) the mode of
    a normally created one before it is renamed into place (files within a directory keep
    theirs)."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, default_mode(os.path.isdir(path)))


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to ``path``; on success it is renamed onto ``path``
    with the umask's mode (as a plain ``open`` would create it, not mkstemp's 0600).

    On error the temporary file is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        apply_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
