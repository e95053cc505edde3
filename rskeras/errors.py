"""User errors and how every command reports them.

A *user error* is a problem with what the user gave: a config, a dataset, a checkpoint, a
command-line argument. The commands (``rskeras ...``, ``tools/*.py``) report one as a
single line on stderr naming the file, window, layer or YAML key at fault, and exit with
code 2. The traceback is written to ``<run directory>/error.log`` when the run directory
is known, and to stderr with ``--verbose``.

New user-error exceptions derive from :class:`UserError` (or from one of the classes
:func:`user_error_types` lists), so that every command's ``main()`` reports them this way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from typing import Callable

# Exit codes of every command.
EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3

_run_dir: list[str] = []


class UserError(Exception):
    """A problem with the user's input; the message names the file, window, layer or key."""


def note_run_dir(path: str | None) -> None:
    """Records the run directory of the command (where ``error.log`` goes)."""
    _run_dir[:] = [path] if path else []


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that is a user error (imported lazily: no TensorFlow here)."""
    types: list[type[BaseException]] = [UserError]
    for module, names in (
        ("rskeras.config.errors", ("ConfigError",)),
        ("rskeras.config.dataset", ("DatasetConfigError",)),
        ("rskeras.export.errors", ("ExportError",)),
        ("rskeras.weights.errors", ("CheckpointError", "WeightLoadError")),
        ("rskeras.train.dataset", ("DataReadError",)),
        ("rskeras.utils.vector_format", ("VectorReadError",)),
        ("rskeras.utils.raster_format", ("RasterReadError",)),
        ("rskeras.dataset.window", ("WindowError",)),
        ("rskeras.train.run_dir", ("DiskFullError",)),
        ("rskeras.train.prediction_writer", ("PredictionWriteError",)),
        ("rskeras.utils.fileio", ("UnsafePathError",)),
    ):
        mod = sys.modules.get(module)
        if mod is None:
            continue  # not imported: nothing of it can have been raised
        types.extend(getattr(mod, name) for name in names if hasattr(mod, name))
    return tuple(types)


# Names of user errors as they appear inside a TensorFlow error raised around them (a
# py_function in the data pipeline or a metric re-raises the Python error's text).
_WRAPPED_NAMES = (
    "ConfigError",
    "DataReadError",
    "DatasetConfigError",
    "VectorReadError",
    "RasterReadError",
    "WindowError",
    "CheckpointError",
    "WeightLoadError",
    "DiskFullError",
    "PredictionWriteError",
    "UnsafePathError",
    "UserError",
)


def wrapped_user_message(error: BaseException) -> str | None:
    """The message of a user error that TensorFlow wrapped into one of its own errors
    (``tf.errors.InvalidArgumentError: ... DataReadError: window x: ...``), else None."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    text = getattr(error, "message", None) or str(error)
    # A data check in the graph (tf.debugging.Assert naming the window, e.g. an unknown
    # detection category): "assertion failed: [<message>, window] [b'<window name>']".
    check = re.search(r"assertion failed: \[(.*?\bwindow)\] \[(.*?)\]", text, re.S)
    if check:
        names = re.sub(r"b'([^']*)'", r"\1", check.group(2).replace("\\'", "'"))
        return f"{check.group(1)} {names}".replace("\\'", "'")  # TF escapes quotes in eager messages
    for line in text.splitlines():
        line = line.strip()
        for name in _WRAPPED_NAMES:
            marker = f"{name}: "
            index = line.find(marker)
            if index >= 0:
                message = line[index + len(marker):].strip()
                # "... [Op:IteratorGetNext]" / "\n\t [[{{node ...}}]]" tails are TF's.
                return message.split(" [Op:", 1)[0].strip()
    return None


def one_line(message: str) -> str:
    """A message on one line (continuation lines joined with ' | ')."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return " | ".join(lines)


def _write_log(text: str) -> str | None:
    if not _run_dir:
        return None
    path = os.path.join(_run_dir[0], "error.log")
    with contextlib.suppress(OSError):
        os.makedirs(_run_dir[0], exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path
    return None


def _exit_before_teardown() -> None:
    """Ends the process with exit code 2 once the command returns, before the interpreter
    tears its objects down (the last atexit hook to run; stdout/stderr flushed first)."""
    import atexit

    def hard_exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_USER_ERROR)

    atexit.register(hard_exit)  # registered last: runs first, after sys.exit's unwinding


def pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Removes ``--verbose`` from ``argv``; returns (the rest, whether it was there)."""
    rest = [a for a in argv if a != "--verbose"]
    return rest, len(rest) != len(argv)


def _quiet_logging(on: bool) -> None:
    """After a command's error line nothing more is logged: its leftover threads (input
    pipelines still reading other windows, or finishing during the exit's teardown) would
    print warnings after it, and the error must stay the last line. A filter by thread
    was not enough (in one suite run a dtype warning of another window still came after
    the error line), so logging is switched off as a whole. The next command run in this
    process starts with logging on again."""
    logging.disable(logging.CRITICAL if on else logging.NOTSET)


def report_user_errors(run: Callable[[list[str]], int], argv: list[str] | None, prog: str) -> int:
    """Runs ``run(argv)``; a user error becomes one line on stderr and exit code 2.

    ``--verbose`` (anywhere in ``argv``) prints the traceback as well; otherwise it goes
    to ``<run directory>/error.log`` when the command got that far.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, verbose = pop_verbose(argv)
    note_run_dir(None)
    _quiet_logging(False)
    try:
        return run(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - classified below, re-raised if not a user error
        if isinstance(e, user_error_types() + (FileNotFoundError,)):
            message = str(e)
        else:
            message = wrapped_user_message(e)
            if message is None:
                raise
        trace = traceback.format_exc()
        log = None if verbose or not getattr(e, "writes_error_log", True) else _write_log(trace)
        if verbose:
            print(trace, file=sys.stderr, end="")
        where = f" (traceback: {log})" if log else ""
        _quiet_logging(True)
        print(f"{prog}: error: {one_line(message)}{where}", file=sys.stderr)
        if getattr(e, "exit_without_teardown", False):
            _exit_before_teardown()
        return EXIT_USER_ERROR
