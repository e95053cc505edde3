"""A fit's run directory (``trainer.default_root_dir``): one fit at a time, the leftovers
of killed runs, a finished fit recognised as finished, a full disk as a clear error.

* **Lock.** A fit holds an exclusive ``fcntl`` lock on ``<root>/fit.lock`` (which holds
  its PID) for the rest of its process, from before anything is written there (the CLI
  takes it before saving ``config.yaml``). A second fit on the same run directory is
  refused with an error naming the first one's PID. The kernel releases the lock when the
  process ends, ``kill -9`` included, so a stale lock file never blocks a later fit.
* **Leftovers.** Under the lock, nothing else writes the run directory, so a fit starts
  by removing what a killed process left half-written: SavedModel temporary directories
  (``.saved_model-*``) and temporary files of atomic writes (``.tmp-<pid>-*.weights.h5``,
  ``.<name>.<random>.tmp*``).
* **Finished fits.** When training ends normally, ``<root>/fit_state.json`` records it
  (epochs, global step, the checkpoints written). Running the same fit again (e.g. after
  a ``kill -9`` during the SavedModel export that follows training) does not train
  again, and so never overwrites that run's checkpoints: it loads the final weights from
  the newest checkpoint and goes on with what follows training. A rerun asking for more
  epochs (a larger ``max_epochs``/``max_steps``) continues from the last checkpoint, as
  Lightning does when resuming. Delete ``fit_state.json`` (or the run directory) to train
  afresh.
* **Disk full.** A checkpoint is written only when the disk has room for it (checked
  before HDF5 touches the file: an HDF5 library that runs out of space mid-write can
  crash the process), and any write that fails for lack of space (``ENOSPC``, ``EDQUOT``,
  ``EFBIG``) stops the fit with one error naming the file; the checkpoints already
  written are left as they were (every write goes to a temporary file first).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sys
from typing import Any

from rskeras.config.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = "fit.lock"
FIT_STATE_NAME = "fit_state.json"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Leftovers of interrupted atomic writes (rskeras.utils.fileio, checkpointing, SavedModel).
_LEFTOVER_FILES = re.compile(r"^\.(tmp-\d+-.+\.weights\.h5|.+\.[A-Za-z0-9_]+\.tmp.*)$")
_LEFTOVER_DIRS = re.compile(r"^\.saved_model-.+$")


class RunDirectoryBusyError(ConfigError):
    """Another fit holds the run directory's lock."""

    # The run directory is the other fit's: its error.log is not ours to overwrite.
    writes_error_log = False


class DiskFullError(ValueError):
    """A file of the run could not be written for lack of disk space (or quota)."""

    # h5py objects of the failed write can crash the interpreter's teardown (signal 11,
    # "Can't decrement id ref count"): the command ends without it (rskeras.errors).
    exit_without_teardown = True


# ---- lock -------------------------------------------------------------------------------

_held: dict[str, int] = {}  # realpath of a locked run directory -> lock file descriptor


def lock_run_dir(root: str) -> None:
    """Takes the run directory's fit lock for the rest of this process (idempotent).

    Raises RunDirectoryBusyError naming the PID of the fit that holds it.
    """
    os.makedirs(root, exist_ok=True)
    key = os.path.realpath(root)
    if key in _held:
        return
    path = os.path.join(root, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"PID {holder.split()[0]}" if holder else "another process"
        raise RunDirectoryBusyError(
            f"trainer.default_root_dir: run directory {root} is in use by another fit ({who}, "
            f"lock {path}); wait for it to end, or give this run another trainer.default_root_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {datetime.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
    _held[key] = fd


def release_run_dir(root: str) -> None:
    """Releases the lock taken by :func:`lock_run_dir` (else it lasts until the process
    ends)."""
    fd = _held.pop(os.path.realpath(root), None)
    if fd is not None:
        os.close(fd)


# ---- leftovers ----------------------------------------------------------------------------


def remove_leftovers(root: str, directories: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Removes what killed processes left half-written in ``root`` and ``directories``
    (checkpoint directories); call with the run directory locked. Returns the paths."""
    removed = []
    for directory in dict.fromkeys([root, *directories]):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if directory == root and _LEFTOVER_DIRS.match(name) and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif _LEFTOVER_FILES.match(name) and os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                removed.append(path)
    if removed:
        logger.info("removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(sorted(removed)))
    return removed


# ---- finished fits ------------------------------------------------------------------------


def fit_state_path(root: str) -> str:
    return os.path.join(root, FIT_STATE_NAME)


def read_fit_state(root: str) -> dict[str, Any] | None:
    """The finished-fit record of ``root`` (None if there is none; a malformed one is
    reported and ignored)."""
    path = fit_state_path(root)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s (%s)", path, e)
        return None
    if not isinstance(state, dict) or state.get("finished") is not True:
        return None
    return state


def write_fit_state(root: str, state: dict[str, Any]) -> None:
    from rskeras.utils.fileio import atomic_write_text

    with disk_full_as_error(fit_state_path(root)):
        atomic_write_text(fit_state_path(root), json.dumps({"finished": True, **state}, indent=2))


def clear_fit_state(root: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(fit_state_path(root))


# ---- disk space ---------------------------------------------------------------------------


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write failing for lack of space: an OSError with ENOSPC /
    EDQUOT / EFBIG, or an HDF5 error whose text reports one."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return any(m in text for m in ("No space left on device", "errno = 28", "Disk quota exceeded", "errno = 122", "File too large", "errno = 27"))


def disk_full_message(path: str, needed: int | None = None) -> str:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    free = ""
    with contextlib.suppress(OSError):
        free = f", {_mb(shutil.disk_usage(directory).free)} free"
    need = f" (needs about {_mb(needed)}{free})" if needed is not None else (f" ({free[2:]})" if free else "")
    return (
        f"cannot write {path}: no space left in {directory} (disk full, quota or file size limit){need}; the files already written "
        "(checkpoints of earlier epochs) are kept. Free some space and run the same command again to resume"
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _quiet_failed_h5_writes() -> None:
    """Drops h5py's "Exception ignored in ObjectID.__dealloc__ ... file write failed"
    reports (each with a traceback): after a write failed for lack of space, every HDF5
    object of that file reports it when collected; the DiskFullError says it once."""
    if getattr(sys.unraisablehook, "_rskeras_quiet_h5", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and "file write failed" in str(value) and "h5py" in repr(unraisable.object) + str(getattr(unraisable, "err_msg", "")):
            return
        previous(unraisable)

    hook._rskeras_quiet_h5 = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # Cython prints the same error with its traceback through sys.excepthook first.
    previous_excepthook = sys.excepthook

    def excepthook(kind, value, tb) -> None:
        if isinstance(value, RuntimeError) and "file write failed" in str(value) and tb is not None and "h5py" in tb.tb_frame.f_code.co_filename:
            return
        previous_excepthook(kind, value, tb)

    sys.excepthook = excepthook


@contextlib.contextmanager
def disk_full_as_error(path: str):
    """Inside this block, a write failing for lack of space raises DiskFullError naming
    ``path`` (other errors pass through)."""
    _quiet_failed_h5_writes()
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(disk_full_message(getattr(e, "filename", None) or path)) from None


def check_free_space(path: str, needed: int) -> None:
    """Raises DiskFullError when the file system of ``path`` has less than ``needed``
    bytes (plus a margin) free."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed * 1.1 + 2**20:
        raise DiskFullError(disk_full_message(path, needed))
