"""Allocator statistics for the memory tests (TF's CPU allocator, which oneDNN's keeps)."""

from __future__ import annotations

import pytest
import tensorflow as tf


def allocator_peak_growth(fn) -> int:
    """Bytes the CPU allocator's peak grows by during a call of ``fn`` (already traced and
    instantiated), or skips the test where the allocator keeps no statistics."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, tf.errors.OpError) as e:  # pragma: no cover - no allocator statistics
        pytest.skip(f"no CPU allocator statistics: {e}")
    fn()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
