"""TFLite conversion in a child process, so that a crash of the converter cannot take the
export command with it.

TensorFlow's TFLite converter and quantizer are C++ (MLIR); some of their failures abort
the process (a failed check, a segfault) instead of raising. ``tools/export.py`` therefore
converts in a child Python process (``convert_isolated``): the parent writes the
``serving_default`` SavedModel and the calibration inputs to a temporary directory, the
child (``python -m rskeras.export.tflite_worker``) runs the same converter settings as an
in-process conversion and writes the flatbuffer, or a JSON file with the converter's error
message. The parent turns an error into ``UnsupportedOpsError`` / ``ExportError`` and a
crash into an ``ExportError`` that names the signal, the quantization and the last lines
the converter logged. The flatbuffer is the same as an in-process conversion's.

Calibration inputs travel as one ``.npz`` file per example (signature layout, batch 1), read
back one at a time, so the child holds one example in memory at once.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rskeras.export.errors import ExportError
from rskeras.export.tflite_convert import convert_saved_model, unsupported_ops_error, unsupported_ops_from_message
from rskeras.utils.fileio import atomic_write_bytes, atomic_write_text

ERROR_FILE = "error.json"
OUTPUT_FILE = "model.tflite"
LOG_FILE = "converter.log"
_LOG_LINES = 6
# The child's command line before its arguments; None: this Python, ``-m`` this module.
WORKER_COMMAND: Sequence[str] | None = None


def write_calibration(representative: Callable[[], Iterable[dict[str, Any]]], directory: str) -> int:
    """Writes each calibration example of ``representative()`` to ``directory`` as
    ``NNNNNN.npz``; returns the count."""
    os.makedirs(directory, exist_ok=True)
    count = 0
    for example in representative():
        np.savez(os.path.join(directory, f"{count:06d}.npz"), **{k: np.asarray(v) for k, v in example.items()})
        count += 1
    return count


def read_calibration(directory: str) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    """The generator factory of the examples ``write_calibration`` wrote, in order."""
    paths = sorted(glob.glob(os.path.join(directory, "*.npz")))

    def gen() -> Iterable[dict[str, np.ndarray]]:
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                yield {k: data[k] for k in data.files}

    return gen


def _tail(path: str, lines: int = _LOG_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            text = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def convert_isolated(
    saved_model_dir: str,
    quantize: str,
    representative: Callable[[], Iterable[dict[str, Any]]] | None,
    command: Sequence[str] | None = None,
) -> bytes:
    """Converts ``saved_model_dir`` (``serving_default``) in a child process; returns the
    flatbuffer. ``command`` (or ``WORKER_COMMAND``) replaces ``[python, -m,
    rskeras.export.tflite_worker]`` (tests).

    Raises the converter's error as ``UnsupportedOpsError`` / ``ExportError``, and a crash of
    the child as ``ExportError`` naming the signal and the converter's last log lines."""
    with tempfile.TemporaryDirectory(prefix="rskeras-convert-") as work:
        calibration = None
        if representative is not None:
            calibration = os.path.join(work, "calibration")
            write_calibration(representative, calibration)
        args = list(command or WORKER_COMMAND or [sys.executable, "-m", "rskeras.export.tflite_worker"])
        args += ["--saved-model", saved_model_dir, "--quantize", quantize, "--work", work]
        if calibration:
            args += ["--calibration", calibration]
        log = os.path.join(work, LOG_FILE)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # the child imports this rskeras even when it is not installed (a checkout on sys.path)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(log, "wb") as out:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        output = os.path.join(work, OUTPUT_FILE)
        if proc.returncode == 0 and os.path.exists(output):
            with open(output, "rb") as f:
                return f.read()
        error = os.path.join(work, ERROR_FILE)
        if os.path.exists(error):
            with open(error) as f:
                message = json.load(f)["message"]
            raise conversion_error(message, quantize)
        tail = _tail(log)
        raise ExportError(
            f"the TFLite converter crashed ({_signal_name(proc.returncode)}) converting with quantize={quantize}"
            + (f"; its last output: {tail}" if tail else "")
            + (
                "; try --quantize int8-mixed or dynamic"
                if quantize == "int8"
                else "; try --quantize dynamic" if quantize == "int8-mixed" else ""
            )
        )


def conversion_error(message: str, quantize: str) -> Exception:
    """The exception for a converter error message: ``UnsupportedOpsError`` when it names
    ops outside the builtin set, else an ``ExportError`` with its first lines."""
    ops, scopes = unsupported_ops_from_message(message)
    if ops:
        return unsupported_ops_error(ops, scopes)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = " | ".join(lines[:3]) if lines else "(no message)"
    return ExportError(f"TFLite conversion with quantize={quantize} failed: {first}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rskeras.export.tflite_worker",
        description="Converts a SavedModel (serving_default) to TFLite with builtin ops only; the child process of "
        "tools/export.py (writes <work>/model.tflite, or <work>/error.json with the converter's message)",
    )
    parser.add_argument("--saved-model", required=True, help="SavedModel directory with a serving_default signature")
    parser.add_argument("--quantize", required=True, help="none, float16, dynamic, int8 or int8-mixed")
    parser.add_argument("--work", required=True, help="directory for model.tflite / error.json")
    parser.add_argument("--calibration", help="directory of NNNNNN.npz calibration examples (int8, int8-mixed)")
    args = parser.parse_args(argv)
    representative = read_calibration(args.calibration) if args.calibration else None
    try:
        content = convert_saved_model(args.saved_model, args.quantize, representative, raw_errors=True)
    except Exception as e:  # the converter's errors: reported to the parent as text
        atomic_write_text(os.path.join(args.work, ERROR_FILE), json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 1
    atomic_write_bytes(os.path.join(args.work, OUTPUT_FILE), content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
