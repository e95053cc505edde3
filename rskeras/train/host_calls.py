"""Python code inside ``tf.data`` (``tf.py_function``): its errors, and a teardown that ends.

The data pipeline reads windows in Python (``RslearnDataModule`` calls the readers of
``rskeras.train.dataset`` through ``tf.py_function``). Two things go wrong with such
*host calls* unless they are handled:

1. **The error arrives wrapped.** An exception raised in a host call reaches the caller of
   the iterator (Keras ``fit``/``evaluate``, ``next(iter(ds))``) as a TensorFlow
   ``InvalidArgumentError`` whose text embeds the Python traceback. Host calls made through
   :func:`host_call` record their exception; :func:`surface_errors` turns the TensorFlow
   error back into that exception (a ``DataReadError`` naming window, input, layer and
   file), so the commands can report it as one line.

2. **The process never exits.** When a Python process ends while a pipeline is alive (its
   iterator still referenced by a traceback, a Keras model, a reference cycle), tf.data's
   background threads (prefetch, parallel map) may be running, or about to start, a host
   call. A host call needs the GIL, and once the interpreter has started finalizing,
   CPython ends every thread that asks for it (``PyThread_exit_thread``). That call then
   never completes, and the iterator's destructor, run later during the finalization,
   waits for it forever: the "error printed, then a hang" seen after data errors,
   intermittent because it depends on whether a read was in flight. rskeras therefore
   tears pipelines down *before* finalization, in an ``atexit`` hook (atexit handlers run
   while other threads can still take the GIL): new host calls fail at once, the last
   uncaught exception (``sys.last_*``) is dropped, garbage is collected (iterators
   destroyed: their in-flight calls finish, no new ones start), and the hook waits, for a
   bounded time, until no host call is running.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

# Exceptions raised by host calls, newest last (a few: the one an iterator reports is
# normally among the first raised after it started).
_RECENT: collections.deque[BaseException] = collections.deque(maxlen=32)
_lock = threading.Lock()
_state = {"closing": False, "in_flight": 0, "last_start": 0.0, "hook": False}

# How long the exit hook waits for running host calls to finish (seconds), and for how
# long none must have started to call the pipelines quiet.
EXIT_WAIT_S = 30.0
QUIET_S = 0.2


class PipelineClosedError(RuntimeError):
    """A host call started while the process was exiting."""


def host_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``fn`` (the Python function a ``tf.py_function`` runs): its exceptions are
    recorded for :func:`surface_errors`, and it refuses to start once the process exits."""
    _install_exit_hook()

    def call(*args: Any) -> Any:
        with _lock:
            if _state["closing"]:
                raise PipelineClosedError("the process is exiting: input pipeline closed")
            _state["in_flight"] += 1
            _state["last_start"] = time.monotonic()
        try:
            return fn(*args)
        except BaseException as e:
            _RECENT.append(e)
            raise
        finally:
            with _lock:
                _state["in_flight"] -= 1

    return call


def recorded_error(error: BaseException) -> BaseException | None:
    """The host-call exception that a TensorFlow error reports, if it is one: a recorded
    exception whose message the TensorFlow error's text contains."""
    import tensorflow as tf

    if not isinstance(error, tf.errors.OpError):
        return None
    text = getattr(error, "message", None) or str(error)
    for candidate in reversed(list(_RECENT)):
        message = str(candidate)
        if message and f"{type(candidate).__name__}: {message}" in text:
            return candidate
    return None


def pipeline_assertion(error: BaseException) -> str | None:
    """The message of a ``tf.debugging.Assert`` that failed inside a tf.data pipeline
    (a task's check of one example, e.g. an unknown class name, naming the window), else
    None."""
    import tensorflow as tf

    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    text = getattr(error, "message", None) or str(error)
    marker = "assertion failed: "
    # The first line holding the assertion (graph-mode errors start "Graph execution
    # error:" and name the node on later lines).
    first = next((line for line in (text or "").splitlines() if marker in line), "")
    # Raised by the iterator itself ("Iterator::..."), or by a compiled train/eval step
    # that pulls from it ("[[IteratorGetNext]] [Op:__inference_multi_step_on_iterator]").
    if marker not in first or ("Iterator::" not in first and "IteratorGetNext" not in text):
        return None
    payload = first.split(marker, 1)[1].strip()
    if payload.startswith("[") and payload.endswith("]"):
        payload = payload[1:-1]
    return payload.replace("] [", " ").replace("\\'", "'").strip() or None


@contextlib.contextmanager
def surface_errors() -> Iterator[None]:
    """Inside this block, a TensorFlow error that reports a host call's exception is
    replaced by that exception (e.g. the ``DataReadError`` naming the window), and a
    failed data assertion of a task by a ``DataReadError`` with its message."""
    try:
        yield
    except Exception as e:
        original = recorded_error(e)
        if original is not None:
            raise original.with_traceback(None) from None
        import tensorflow as tf

        if isinstance(e, tf.errors.UnimplementedError) and "deterministic XLA implementation" in str(e):
            from rskeras.config.errors import ConfigError

            reason = next((line.strip() for line in str(e).splitlines() if "deterministic XLA implementation" in line), "")
            raise ConfigError(
                f"trainer.deterministic with trainer.jit_compile: true: {reason.rstrip('.')}; set trainer.jit_compile "
                "to false (or auto, which stays off under trainer.deterministic) or trainer.deterministic to false"
            ) from None
        message = pipeline_assertion(e)
        if message is None:
            raise
        from rskeras.train.dataset import DataReadError

        raise DataReadError(message) from None


def _install_exit_hook() -> None:
    with _lock:
        if _state["hook"]:
            return
        _state["hook"] = True
    atexit.register(close_pipelines)


def close_pipelines(timeout: float = EXIT_WAIT_S) -> bool:
    """Tears down the input pipelines before the interpreter finalizes (the atexit hook;
    see the module docstring). Returns whether no host call was left running."""
    with _lock:
        _state["closing"] = True
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    _RECENT.clear()
    gc.collect()
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            busy = _state["in_flight"] > 0 or time.monotonic() - _state["last_start"] < QUIET_S
        if not busy:
            return True
        if time.monotonic() > deadline:
            logger.warning("input pipeline: host calls still running at exit after %.0f s", timeout)
            return False
        time.sleep(0.05)
