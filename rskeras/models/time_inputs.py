"""What time-series encoders read from a batch besides the images: per-timestep dates.

rslearn hands a model ``RasterImage(image C×T×H×W, timestamps=[(start, end), ...])`` per
example. In rskeras a raster input ``key`` is ``[B, T, H, W, C]`` and, when its DataInput
sets ``load_timestamps: true`` (and ``passthrough``), the batch also holds
``<key>_timestamps`` float64 ``[B, T, 2]``: (start, end) POSIX seconds of every timestep,
NaN when unknown (rskeras.train.dataset).

Galileo and Presto only use the month of the centre of each time range; this module turns
the timestamps into months inside the graph, so exported models take the same inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

TIMESTAMPS_SUFFIX = "_timestamps"
SECONDS_PER_DAY = 86400


def timestamps_key(key: str) -> str:
    """The batch key holding the timestamps of raster input ``key``."""
    return key + TIMESTAMPS_SUFFIX


def month_of_days(days: tf.Tensor) -> tf.Tensor:
    """0-based month (0 = January) of ``days`` since 1970-01-01 (proleptic Gregorian, UTC).

    Integer-only civil-from-days conversion (Hinnant's algorithm), valid for every date
    after 0000-03-01, so that it runs as plain TF/TFLite arithmetic.
    """
    z = tf.cast(days, tf.int64) + 719468
    era = tf.math.floordiv(z, 146097)
    doe = z - era * 146097  # day of era, [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year starting 1 March
    mp = (5 * doy + 2) // 153  # month starting from March = 0
    month1 = tf.where(mp < 10, mp + 3, mp - 9)  # 1..12
    return tf.cast(month1 - 1, tf.int32)


def months_from_timestamps(timestamps: tf.Tensor, default_month: int) -> tf.Tensor:
    """``[..., T, 2]`` (start, end) POSIX seconds -> ``[..., T]`` int32 month (0-11) of the
    range centre (rslearn: ``(start + (end - start) / 2).month - 1``); ``default_month``
    where the range is unknown (NaN)."""
    ts = tf.cast(timestamps, tf.float64)
    centre = ts[..., 0] + (ts[..., 1] - ts[..., 0]) / 2.0
    known = tf.math.is_finite(centre)
    days = tf.math.floor(tf.where(known, centre, tf.zeros_like(centre)) / SECONDS_PER_DAY)
    return tf.where(known, month_of_days(days), tf.cast(default_month, tf.int32))


def input_months(context: Any, keys: Sequence[str], default_month: int) -> tf.Tensor | None:
    """Months ``[B, T]`` from the timestamps of the first of ``keys`` that has them.

    rslearn takes the first key *in the input dict's order* with timestamps; batches are
    dicts whose order tf.data does not keep, so rskeras uses the order of ``keys`` (the
    encoder's fixed modality order). None when no key has timestamps.
    """
    if not isinstance(context, dict):
        return None
    for key in keys:
        if key in context and timestamps_key(key) in context:
            return months_from_timestamps(context[timestamps_key(key)], default_month)
    return None
