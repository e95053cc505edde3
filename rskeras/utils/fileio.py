"""Atomic, durable file writes: write to a temporary file in the same directory, flush it
to disk (fsync), rename it onto the target, fsync the directory.

The writers of outputs into a dataset pass the dataset root as ``root``: every directory
they create or write into must resolve (symlinks followed) inside it, and the final
rename replaces a symlink at the target name instead of writing through it, so a hostile
dataset cannot make a writer create or truncate files elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
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


class UnsafePathError(ValueError):
    """A path the writer was asked to write leads out of its root (through a symlink)."""


def is_inside(path: str, root: str) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def safe_makedirs(directory: str, root: str | None = None) -> None:
    """``os.makedirs(directory, exist_ok=True)``; with ``root``, first checks that the
    deepest existing ancestor of ``directory`` resolves inside ``root`` (so no symlink
    leads the new directories, or the files written into them, out of it)."""
    if root is not None:
        # The root itself is the caller's choice (e.g. a new output dataset): create it.
        os.makedirs(root, exist_ok=True)
        existing = os.path.abspath(directory)
        while not os.path.lexists(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            existing = parent
        if not is_inside(existing, root):
            target = os.path.realpath(existing)
            raise UnsafePathError(f"{existing} resolves to {target}, outside {root} (a symlink leads out of it); refusing to write there")
    os.makedirs(directory, exist_ok=True)
    if root is not None and not is_inside(directory, root):
        raise UnsafePathError(f"{directory} resolves to {os.path.realpath(directory)}, outside {root}; refusing to write there")


def fsync_path(path: str) -> None:
    """Flushes a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Flushes a directory entry (a rename or a new file in it) to disk, where the
    platform supports it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, root: str | None = None) -> Iterator[str]:
    """Yields a temporary path next to ``path``; on success the file written there is
    flushed to disk, renamed onto ``path`` with the umask's mode (as a plain ``open`` would
    create it, not mkstemp's 0600) and the directory flushed.

    On error the temporary file is removed and ``path`` is left as it was. With ``root``
    the directory must resolve inside ``root`` (see :func:`safe_makedirs`); a symlink at
    ``path`` itself is replaced, never followed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    safe_makedirs(directory, root)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        apply_default_mode(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def remove_stale_temporaries(path: str) -> None:
    """Removes the temporary files :func:`atomic_path` leaves beside ``path`` when its
    process is killed (``kill -9``) while writing it; call it only where no other process
    writes ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(f".{base}.") and ".tmp" in name:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def atomic_write_text(path: str, text: str, root: str | None = None) -> None:
    with atomic_path(path, root) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes, root: str | None = None) -> None:
    with atomic_path(path, root) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
