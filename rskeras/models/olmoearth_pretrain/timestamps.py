"""From rskeras' batched time series to OlmoEarth's aligned modality tensors (graph ops).

rslearn's OlmoEarth wrapper builds, per batch, one timeline shared by all modalities
(``_prepare_modality_inputs``; inputs follow the time-series contract of docs/design.md):

* ``use_legacy_timestamps=True``: timestep t of every modality is slot t; the slots are
  dated day 1, month t (0-based), 2024; ``T = max T`` of the batch's modalities.
* ``False``: each example's images are merged greedily onto a timeline, modality by
  modality in the wrapper's order (sentinel2_l2a, sentinel1, worldcover,
  openstreetmap_raster, landsat), image by image: an image (its centre time
  ``start + (end - start) / 2``) takes the existing timeline entry closest to it if that
  entry is less than ``tolerance`` away and no other image of the same modality holds it
  (first in creation order on ties), else it appends a new entry. The timeline is sorted;
  ``T`` is the longest timeline of the batch; empty slots are missing.

Slots without an image are zero-filled and marked missing (``valid`` False). Timestamps
are ``(day, 0-based month, year)`` int32 of the slot's time (UTC), ``(0, 0, 0)`` for
unused slots.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import tensorflow as tf

SECONDS_PER_DAY = 86400.0
DEFAULT_TOLERANCE = datetime.timedelta(days=15)


def parse_timedelta(value: Any, name: str = "timestamp_error_tolerance") -> datetime.timedelta:
    """A ``timedelta`` from a timedelta, ``{days: .., hours: ..}``, ``str(timedelta)``
    ("15 days, 0:00:00", "12:00:00") or ISO-8601 ("P15D", "PT12H")."""
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, dict):
        try:
            return datetime.timedelta(**value)
        except TypeError as e:
            raise ValueError(f"{name}: {e}") from None
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(?:(-?\d+) days?,?\s*)?(?:(\d+):(\d{2}):(\d{2}(?:\.\d+)?))?", text)
        if m and text and any(g is not None for g in m.groups()):
            days = int(m.group(1) or 0)
            hours, minutes, seconds = int(m.group(2) or 0), int(m.group(3) or 0), float(m.group(4) or 0)
            return datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        m = re.fullmatch(r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", text)
        if m and text not in ("P", "PT"):
            d, h, mi, s = (float(g or 0) for g in m.groups())
            return datetime.timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ValueError(
        f"{name}: expected a duration such as '15 days, 0:00:00', 'P15D' or {{days: 15}}, got {value!r}"
    )


def civil_from_posix(seconds: tf.Tensor) -> tf.Tensor:
    """float64 POSIX seconds ``[...]`` -> int32 ``[..., 3]`` (day, 0-based month, year), UTC."""
    days = tf.cast(tf.floor(seconds / SECONDS_PER_DAY), tf.int64)
    z = days + 719468
    era = tf.math.floordiv(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = tf.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + tf.cast(month <= 2, tf.int64)
    return tf.cast(tf.stack([day, month - 1, year], axis=-1), tf.int32)


def _pad_time(x: tf.Tensor, t_max, value) -> tf.Tensor:
    t = tf.shape(x)[1]
    pad = [[0, 0], [0, t_max - t]] + [[0, 0]] * (len(x.shape) - 2)
    return tf.pad(x, pad, constant_values=value)


def _time_dim(x: tf.Tensor):
    return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]


def prepare_legacy(images: dict[str, tf.Tensor], masks: dict[str, tf.Tensor]):
    """Legacy timeline: (images, valid, timestamps) padded to the longest T."""
    dims = [_time_dim(x) for x in images.values()]
    if all(isinstance(d, int) for d in dims):
        t_max = max(dims)
    else:
        t_max = tf.reduce_max(tf.stack([tf.convert_to_tensor(d) for d in dims]))
    data, valid = {}, {}
    for m, x in images.items():
        data[m] = _pad_time(x, t_max, 0)
        valid[m] = _pad_time(masks[m], t_max, False)
    b = tf.shape(next(iter(images.values())))[0]
    months = tf.range(t_max, dtype=tf.int32)
    stamp = tf.stack([tf.ones_like(months), months, tf.fill(tf.shape(months), 2024)], axis=-1)
    timestamps = tf.tile(stamp[None], [b, 1, 1])
    return data, valid, timestamps


def prepare_merged(images: dict[str, tf.Tensor], masks: dict[str, tf.Tensor], centers: dict[str, tf.Tensor], tolerance_seconds: float):
    """Greedy merged timeline (see the module docstring): (images, valid, timestamps)."""
    names = list(images)
    x0 = next(iter(images.values()))
    b = tf.shape(x0)[0]
    c_all = tf.concat([tf.cast(centers[m], tf.float64) for m in names], axis=1)  # [B, K]
    v_all = tf.concat([masks[m] for m in names], axis=1)
    counts = [tf.shape(masks[m])[1] for m in names]
    owner = tf.concat([tf.fill([counts[i]], i) for i in range(len(names))], axis=0)  # [K]
    k = tf.shape(c_all)[1]
    slots = tf.range(k)[None, :]
    tol = tf.constant(tolerance_seconds, tf.float64)
    inf = tf.constant(float("inf"), tf.float64)

    def step(i, times, length, used, assigned):
        first_of_modality = tf.logical_or(tf.equal(i, 0), tf.not_equal(owner[i], owner[tf.maximum(i - 1, 0)]))
        used = tf.logical_and(used, tf.logical_not(first_of_modality))
        c, v = c_all[:, i], v_all[:, i]
        diff = tf.abs(c[:, None] - times)
        candidate = (slots < length[:, None]) & tf.logical_not(used) & (diff < tol)
        best = tf.reduce_min(tf.where(candidate, diff, inf), axis=1)
        first = tf.reduce_min(tf.where(candidate & tf.equal(diff, best[:, None]), slots, k), axis=1)
        reuse = first < k
        slot = tf.where(reuse, first, length)
        new = v & tf.logical_not(reuse)
        at_new = tf.equal(slots, length[:, None]) & new[:, None]
        times = tf.where(at_new, c[:, None], times)
        length = length + tf.cast(new, tf.int32)
        used = used | (tf.equal(slots, slot[:, None]) & v[:, None])
        assigned = tf.where(tf.equal(slots, i) & v[:, None], slot[:, None], assigned)
        return i + 1, times, length, used, assigned

    init = (
        tf.constant(0),
        tf.zeros([b, k], tf.float64),
        tf.zeros([b], tf.int32),
        tf.zeros([b, k], tf.bool),
        tf.fill([b, k], -1),
    )
    _, times, length, _, assigned = tf.while_loop(lambda i, *_: i < k, step, init)
    keys = tf.where(slots < length[:, None], times, inf)
    order = tf.argsort(keys, axis=1, stable=True)
    rank = tf.argsort(order, axis=1, stable=True)  # slot -> position on the sorted timeline
    sorted_times = tf.gather(keys, order, batch_dims=1)
    t_max = tf.reduce_max(length)
    position = tf.where(assigned >= 0, tf.gather(rank, tf.maximum(assigned, 0), batch_dims=1), -1)  # [B, K]
    data, valid, start = {}, {}, 0
    for m, count in zip(names, counts):
        pos_m = position[:, start : start + count]  # [B, T_m]
        hit = tf.equal(pos_m[:, :, None], tf.range(t_max)[None, None, :])  # [B, T_m, T]
        src = tf.reduce_max(tf.where(hit, tf.range(count)[None, :, None], -1), axis=1)  # [B, T]
        gathered = tf.gather(images[m], tf.maximum(src, 0), axis=1, batch_dims=1)
        present = src >= 0
        shape = tf.concat([tf.shape(present), tf.ones([len(images[m].shape) - 2], tf.int32)], 0)
        data[m] = tf.where(tf.reshape(present, shape), gathered, tf.zeros([], gathered.dtype))
        valid[m] = present
        start = start + count
    finite = tf.math.is_finite(sorted_times[:, :t_max])
    dates = civil_from_posix(tf.where(finite, sorted_times[:, :t_max], 0.0))
    used_slot = tf.range(t_max)[None, :] < length[:, None]
    timestamps = tf.where(used_slot[..., None], dates, 0)
    return data, valid, timestamps


def image_centers(timestamps: tf.Tensor) -> tf.Tensor:
    """``[B, T, 2]`` (start, end) POSIX seconds -> ``[B, T]`` centre times."""
    ts = tf.cast(timestamps, tf.float64)
    return ts[..., 0] + (ts[..., 1] - ts[..., 0]) / 2.0
