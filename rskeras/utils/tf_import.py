"""Importing TensorFlow from the commands with its start-up notices printed once.

TensorFlow 2.21's native libraries print the oneDNN notice (and absl's "All log messages
before absl::InitializeLog()" preamble) once per library, before any logging setting
applies (``TF_CPP_MIN_LOG_LEVEL`` does not reach them). The commands import TensorFlow
through :func:`import_tensorflow`, which captures what the import writes to stderr and
writes it back without the preamble, without repeated lines and without the lines below
``TF_CPP_MIN_LOG_LEVEL`` (the commands default it to 2: warnings and errors only).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


SEVERITIES = "IWEF"  # INFO, WARNING, ERROR, FATAL: TF_CPP_MIN_LOG_LEVEL 0..3


def dedupe_native_log(text: str, min_level: int = 0) -> str:
    """``text`` without absl's preamble, without lines repeating an earlier one (the time
    stamp and thread id of a native log line ignored) and without native log lines below
    ``min_level`` (``TF_CPP_MIN_LOG_LEVEL``, which these early lines otherwise ignore)."""
    seen: set[str] = set()
    out = []
    for line in text.splitlines():
        if line.strip() == _PREAMBLE:
            continue
        if _PREFIX.match(line) and SEVERITIES.index(line[0]) < min_level:
            continue
        key = _PREFIX.sub("", line)
        if key in seen:
            continue
        seen.add(key)
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def import_tensorflow() -> None:
    """Imports TensorFlow (once per process) with its native start-up lines de-duplicated."""
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        import tensorflow  # noqa: F401 - no real stderr (embedded); import as is

        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            try:
                level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
            except ValueError:
                level = 0
            text = dedupe_native_log(captured.read().decode(errors="replace"), level)
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()
