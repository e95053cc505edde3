"""What time-series encoders read from a batch besides the images: per-timestep dates.

rslearn hands a model ``RasterImage(image C×T×H×W, timestamps=[(start, end), ...])`` per
example. In rskeras a raster input ``key`` is ``[B, T, H, W, C]`` and, when its DataInput
sets ``load_timestamps: true`` (and ``passthrough``), the batch also holds
``<key>_timestamps`` float64 ``[B, T, 2]``: (start, end) POSIX seconds of every timestep,
NaN when unknown or padded, and ``<key>_timestep_mask`` bool ``[B, T]`` (False for the
timesteps ``padded_batch`` adds; the contract of docs/design.md).

Galileo and Presto only use the month of the centre of each time range; this module turns
the timestamps into months inside the graph, so exported models take the same inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

TIMESTAMPS_SUFFIX = "_timestamps"
TIMESTEP_MASK_SUFFIX = "_timestep_mask"
SECONDS_PER_DAY = 86400


def timestamps_key(key: str) -> str:
    """The batch key holding the timestamps of raster input ``key``."""
    return key + TIMESTAMPS_SUFFIX


def timestep_mask_key(key: str) -> str:
    """The batch key of the bool ``[B, T]`` real-timestep mask of raster input ``key``
    (present with ``load_timestamps``; padded timesteps are False, docs/design.md)."""
    return key + TIMESTEP_MASK_SUFFIX


def month_of_days(days: tf.Tensor) -> tf.Tensor:
    """0-based month (0 = January) of ``days`` since 1970-01-01 (proleptic Gregorian, UTC).

    Integer-only civil-from-days conversion (Hinnant's algorithm) in int32, valid from
    0000-03-01 on, so that it runs as TFLite builtin arithmetic.
    """
    z = tf.cast(days, tf.int32) + 719468
    era = tf.math.floordiv(z, 146097)
    doe = z - era * 146097  # day of era, [0, 146096]
    yoe = tf.math.floordiv(doe - tf.math.floordiv(doe, 1460) + tf.math.floordiv(doe, 36524) - tf.math.floordiv(doe, 146096), 365)
    doy = doe - (365 * yoe + tf.math.floordiv(yoe, 4) - tf.math.floordiv(yoe, 100))  # day of the year from 1 March
    mp = tf.math.floordiv(5 * doy + 2, 153)  # month counted from March = 0
    return tf.where(mp < 10, mp + 2, mp - 10)


def months_from_timestamps(timestamps: tf.Tensor, default_month: int) -> tf.Tensor:
    """``[..., T, 2]`` (start, end) POSIX seconds -> ``[..., T]`` int32 month (0-11) of the
    range centre (rslearn: ``(start + (end - start) / 2).month - 1``); ``default_month``
    where the range is unknown (NaN).

    The seconds are rounded to float32 first (TFLite has no float64 arithmetic), i.e. to
    within 128 s for dates of this century: only a centre less than two minutes from a
    month boundary can fall into the neighbouring month.
    """
    ts = tf.cast(timestamps, tf.float32)
    centre = ts[..., 0] + (ts[..., 1] - ts[..., 0]) * 0.5
    known = tf.logical_and(tf.equal(centre, centre), tf.less(tf.abs(centre), 1e12))
    days = tf.math.floor(tf.where(known, centre, tf.zeros_like(centre)) / float(SECONDS_PER_DAY))
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
        if key in context and timestamps_key(key) in context and context[timestamps_key(key)].shape[1] != 0:
            return months_from_timestamps(context[timestamps_key(key)], default_month)
    return None
