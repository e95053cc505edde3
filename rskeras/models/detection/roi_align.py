"""Multi-scale RoIAlign (torchvision ``MultiScaleRoIAlign`` + ``roi_align``, aligned=False)
written with gathers and bilinear weights, so that it converts to TFLite builtins
(``tf.image.crop_and_resize`` does not).

Each RoI is pooled from one level, chosen by the FPN heuristic
``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` clamped to the levels present; level
scales are inferred as powers of two from feature height / image height. Every output
bin averages ``sampling_ratio**2`` bilinear samples at regularly spaced points.

Two implementations of the same numbers:

* gathers of the four bilinear taps of every sample, weighted and summed (the default:
  what a SavedModel holds, so that it converts to TFLite, which has no CROP_AND_RESIZE
  builtin);
* ``tf.image.crop_and_resize`` per level on that level's RoIs, once per sample offset:
  TensorFlow's own bilinear kernel and its gradient, about 3x faster than the gathers
  for a training batch of 8 x 512 RoIs (fwd + bwd), and holding one ``[R, P, P, C]``
  crop at a time. Used inside ``rskeras.models.step_graph.trainer_step_graph()``, which
  the trainer's train, eval and predict steps enter.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from rskeras.models.detection.box_ops import box_area
from rskeras.models.shapes import dim
from rskeras.models.step_graph import in_trainer_step

CANONICAL_SCALE = 224.0
CANONICAL_LEVEL = 4.0
LEVEL_EPS = 1e-6

def infer_scale(feature_height, image_height):
    """``2 ** round(log2(feature_height / image_height))`` (torchvision ``_infer_scale``,
    which looks at the height only)."""
    if isinstance(feature_height, int) and isinstance(image_height, int):
        approx = np.float32(float(feature_height) / float(image_height))
        return float(2.0 ** np.round(np.log2(approx)))
    approx = tf.cast(feature_height, tf.float32) / tf.cast(image_height, tf.float32)
    return tf.pow(2.0, tf.round(tf.math.log(approx) / math.log(2.0)))


def _log2(x: tf.Tensor) -> tf.Tensor:
    return tf.math.log(x) / math.log(2.0)


MIN_SIDE = 1e-6


def map_levels(boxes: tf.Tensor, scales: list, num_levels: int) -> tf.Tensor:
    """Level index (0 = finest) of each box ``[..., 4]`` -> int32 ``[...]``.

    ``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` clamped to ``[k_min, k_max]`` with
    ``k = -log2(scale)`` of the first and last level, minus ``k_min``. With one level
    every box maps to it.
    """
    if num_levels == 1:
        return tf.zeros(tf.shape(boxes)[:-1], tf.int32)
    k_min = -_log2(tf.cast(scales[0], tf.float32))
    k_max = -_log2(tf.cast(scales[-1], tf.float32))
    k_min = tf.round(k_min)
    k_max = tf.round(k_max)
    # Zero-area boxes (the padding of a fixed-size proposal set) would give log2(0) = -inf and
    # then the lowest level, as in torchvision; a floor of 1e-6 on the side gives the same level
    # (the clamp to k_min >= 0 takes anything below -23) and keeps every tensor finite, which an
    # int8 calibration needs.
    s = tf.maximum(tf.sqrt(box_area(boxes)), MIN_SIDE)
    target = tf.floor(CANONICAL_LEVEL + _log2(s / CANONICAL_SCALE) + LEVEL_EPS)
    target = tf.clip_by_value(target, k_min, k_max)
    return tf.cast(target - k_min, tf.int32)


def _axis_taps(start, bin_size, size, output_size: int, sampling_ratio: int):
    """Row (or column) indices and weights of the bilinear taps along one axis.

    Args:
        start: ``[R]`` RoI start in feature coordinates.
        bin_size: ``[R]``.
        size: ``[R]`` feature size along this axis (float).

    Returns:
        ``low``, ``high`` int32 ``[R, P, S]`` and ``w_low``, ``w_high`` float32
        ``[R, P, S]`` (P = output_size, S = sampling_ratio), weights already 0 for
        samples outside ``[-1, size]``.
    """
    p = tf.range(output_size, dtype=tf.float32)[None, :, None]
    i = tf.range(sampling_ratio, dtype=tf.float32)[None, None, :]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    size = size[:, None, None]
    coord = start + p * bin_size + (i + 0.5) * bin_size / float(sampling_ratio)
    inside = (coord >= -1.0) & (coord <= size)
    coord = tf.maximum(coord, 0.0)
    low = tf.floor(coord)
    at_edge = low >= size - 1.0
    low = tf.where(at_edge, size - 1.0, low)
    high = tf.where(at_edge, size - 1.0, low + 1.0)
    coord = tf.where(at_edge, low, coord)
    frac = coord - low
    mask = tf.cast(inside, tf.float32)
    w_high = frac * mask
    w_low = (1.0 - frac) * mask
    return tf.cast(low, tf.int32), tf.cast(high, tf.int32), w_low, w_high


def multi_scale_roi_align(
    features: list,
    boxes: tf.Tensor,
    image_size,
    output_size: int = 7,
    sampling_ratio: int = 2,
) -> tf.Tensor:
    """Pools ``output_size x output_size`` features for every box.

    Args:
        features: list of ``[B, H_l, W_l, C]`` maps, finest first.
        boxes: ``[B, R, 4]`` xyxy boxes in image pixels.
        image_size: ``(height, width)`` of the (padded) image, ints or scalar tensors.
        output_size: int, pooled height and width (default 7).
        sampling_ratio: int > 0, samples per bin along each axis (default 2).

    Returns:
        ``[B, R, output_size, output_size, C]``; RoIs mapped to a level beyond the maps
        given (only possible when the maps are not consecutive powers of two) are 0,
        as in torchvision.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"multi_scale_roi_align: sampling_ratio must be > 0 (adaptive sampling is not supported), got {sampling_ratio}")
    scales = [infer_scale(dim(f, 1), image_size[0]) for f in features]

    batch = tf.shape(boxes)[0]
    num_rois = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    roi_batch = tf.reshape(tf.broadcast_to(tf.range(batch)[:, None], tf.stack([batch, num_rois])), [-1])

    level = map_levels(flat_boxes, scales, len(features))
    pool = _pooled_by_crops if in_trainer_step() else _pooled_by_gathers
    pooled = pool(features, flat_boxes, roi_batch, level, scales, output_size, sampling_ratio)  # [B * R, P, P, C]
    return tf.reshape(pooled, tf.concat([tf.stack([batch, num_rois, output_size, output_size]), tf.shape(pooled)[-1:]], axis=0))


def _pooled_by_gathers(features, flat_boxes, roi_batch, level, scales, output_size: int, sampling_ratio: int):
    """``[N, P, P, C]`` pooled features of the ``N`` flat boxes: one table of all levels'
    pixels, one gather per bilinear tap (TFLite builtins)."""
    num_levels = len(features)
    heights = [dim(f, 1) for f in features]
    widths = [dim(f, 2) for f in features]
    batch = tf.shape(features[0])[0]
    level_ok = level < num_levels
    level = tf.minimum(level, num_levels - 1)

    # One table of all levels' pixels: row offset + (b * H_l + y) * W_l + x.
    table = tf.concat([tf.reshape(f, [-1, tf.shape(f)[-1]]) for f in features], axis=0)
    sizes = [tf.cast(batch, tf.int32) * tf.cast(h, tf.int32) * tf.cast(w, tf.int32) for h, w in zip(heights, widths)]
    offsets = tf.concat([[0], tf.cumsum(tf.stack(sizes))[:-1]], axis=0)
    level_h = tf.gather(tf.stack([tf.cast(h, tf.int32) for h in heights]), level)
    level_w = tf.gather(tf.stack([tf.cast(w, tf.int32) for w in widths]), level)
    level_scale = tf.gather(tf.stack([tf.cast(s, tf.float32) for s in scales]), level)
    base = tf.gather(offsets, level) + roi_batch * level_h * level_w

    start_x = flat_boxes[:, 0] * level_scale
    start_y = flat_boxes[:, 1] * level_scale
    end_x = flat_boxes[:, 2] * level_scale
    end_y = flat_boxes[:, 3] * level_scale
    roi_w = tf.maximum(end_x - start_x, 1.0)
    roi_h = tf.maximum(end_y - start_y, 1.0)
    bin_w = roi_w / float(output_size)
    bin_h = roi_h / float(output_size)

    fh = tf.cast(level_h, tf.float32)
    fw = tf.cast(level_w, tf.float32)
    y_low, y_high, wy_low, wy_high = _axis_taps(start_y, bin_h, fh, output_size, sampling_ratio)
    x_low, x_high, wx_low, wx_high = _axis_taps(start_x, bin_w, fw, output_size, sampling_ratio)
    level_mask = tf.cast(level_ok, tf.float32)[:, None, None]
    row_stride = level_w[:, None, None]
    base = base[:, None, None]

    taps = []
    for iy in range(sampling_ratio):
        for ix in range(sampling_ratio):
            rows = (y_low[:, :, iy], y_high[:, :, iy])
            cols = (x_low[:, :, ix], x_high[:, :, ix])
            wys = (wy_low[:, :, iy], wy_high[:, :, iy])
            wxs = (wx_low[:, :, ix], wx_high[:, :, ix])
            # torch order of the four taps: (low, low), (low, high), (high, low), (high, high).
            for a in range(2):
                for c in range(2):
                    idx = base + rows[a][:, :, None] * row_stride + cols[c][:, None, :]
                    weight = wys[a][:, :, None] * wxs[c][:, None, :] * level_mask
                    taps.append((idx, weight))
    return _weighted_gather(table, taps, sampling_ratio * sampling_ratio)


def _weighted_gather(table: tf.Tensor, taps: list, num_samples: int) -> tf.Tensor:
    """``sum_k weight_k * table[idx_k] / num_samples`` (taps summed four at a time, one
    sample after the other, as torchvision does).

    The gradient w.r.t. ``table`` is written by hand (scatter-adds of the weighted
    output gradient) so that training does not keep the 4 * num_samples gathered
    ``[R, P, P, C]`` tensors alive; the boxes, hence indices and weights, get no
    gradient (torchvision detaches proposals too).

    The taps run one after the other (each gather, and each weighted gradient, waits for
    the previous partial sum): left to TensorFlow's executor, the 4 * num_samples
    independent gathers all ran before their sums and held 16 ``[R, P, P, C]`` tensors at
    once — 3.4 GB for the 8 x 1020 RoIs of a 64x64 detection batch in evaluation, the bulk
    of the detection anchor config's 11 GB peak. The same sums in the same order (checksum
    of that batch unchanged to 7 digits).
    """

    @tf.custom_gradient
    def pooled_from(table):
        pooled = None
        last = None  # the newest partial sum: the next gather waits for it (see above)
        for s in range(num_samples):
            sample = None
            for idx, weight in taps[4 * s : 4 * s + 4]:
                with tf.control_dependencies([last] if last is not None else []):
                    gathered = tf.gather(table, idx)
                term = weight[..., None] * gathered
                sample = last = term if sample is None else sample + term
            pooled = last = sample if pooled is None else pooled + sample
        pooled = pooled / float(num_samples)

        def grad(upstream):
            upstream = upstream / float(num_samples)
            channels = tf.shape(table)[1]
            total = None
            for idx, weight in taps:
                with tf.control_dependencies([total] if total is not None else []):
                    weighted = weight[..., None] * upstream
                part = tf.math.unsorted_segment_sum(
                    tf.reshape(weighted, tf.stack([-1, channels])),
                    tf.reshape(idx, [-1]),
                    num_segments=tf.shape(table)[0],
                )
                total = part if total is None else total + part
            return total

        return pooled, grad

    return pooled_from(table)


def _pooled_by_crops(features, flat_boxes, roi_batch, level, scales, output_size: int, sampling_ratio: int):
    """``[N, P, P, C]`` pooled features of the ``N`` flat boxes with ``crop_and_resize``.

    Per level, its RoIs only; per sample offset ``(iy, ix)``, one ``P x P`` crop whose
    points are that sample of every bin, summed in torchvision's order. The map is padded
    by one edge-replicated pixel on each side and the points shifted by one: torchvision's
    rules (a point in ``[-1, 0)`` reads row 0, one in ``[size - 1, size]`` the last row,
    one beyond ``[-1, size]`` gives 0) are then crop_and_resize's bilinear interpolation
    and zero extrapolation. The boxes get no gradient (torchvision detaches proposals too).

    Memory: the crops run one after the other and each is added into the running sum at
    once, so a pass holds the sum and one ``[N_l, P, P, C]`` crop; the mean over samples is
    taken on the (small) padded map, not on the crops (bilinear taps are linear: the same
    sum, exactly for a power-of-two number of samples). The gradient is written by hand
    (``CropAndResizeGradImage`` of the output gradient, level by level), so that autodiff
    keeps no crop alive for the backward pass (its shape ops of the sums did, holding a
    third ``[N, P, P, C]`` tensor at the training step's peak). When one level holds every
    RoI, as with small objects, its rows of the output gradient are the gradient itself
    (no gathered copy).
    """
    flat_boxes = tf.stop_gradient(flat_boxes)
    mean = 1.0 / float(sampling_ratio * sampling_ratio)
    padded = [tf.pad(f, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC") * mean for f in features]
    positions, levels = [], []
    for l, f in enumerate(features):
        selected = tf.cast(tf.where(tf.equal(level, l))[:, 0], tf.int32)
        boxes = tf.gather(flat_boxes, selected) * tf.cast(scales[l], tf.float32)
        box_index = tf.gather(roi_batch, selected)
        height = tf.cast(dim(f, 1), tf.float32)
        width = tf.cast(dim(f, 2), tf.float32)
        bin_w = tf.maximum(boxes[:, 2] - boxes[:, 0], 1.0) / float(output_size)
        bin_h = tf.maximum(boxes[:, 3] - boxes[:, 1], 1.0) / float(output_size)
        offsets = []
        for iy in range(sampling_ratio):
            for ix in range(sampling_ratio):
                # The first bin's sample in padded coordinates, and the last bin's.
                y0 = boxes[:, 1] + (iy + 0.5) * bin_h / float(sampling_ratio) + 1.0
                x0 = boxes[:, 0] + (ix + 0.5) * bin_w / float(sampling_ratio) + 1.0
                y1 = y0 + (output_size - 1) * bin_h
                x1 = x0 + (output_size - 1) * bin_w
                # crop_and_resize puts point i at y0n * (H' - 1) + i * (y1n - y0n) * (H' - 1) / (P - 1), H' = H + 2.
                offsets.append(tf.stack([y0 / (height + 1.0), x0 / (width + 1.0), y1 / (height + 1.0), x1 / (width + 1.0)], axis=1))
        positions.append(selected)
        levels.append((offsets, box_index))
    # RoIs mapped beyond the maps given (levels not consecutive powers of two): zeros.
    beyond = tf.cast(tf.where(level >= len(features))[:, 0], tf.int32)
    num_rois = tf.shape(level)[0]
    crop_size = [output_size, output_size]

    @tf.custom_gradient
    def pooled_from(*maps):
        parts, last = [], None
        for m, (offsets, box_index) in zip(maps, levels):
            pooled = None
            for normalized in offsets:
                # One crop after the other: the crops of all offsets never coexist.
                with tf.control_dependencies([last] if last is not None else []):
                    crop = tf.image.crop_and_resize(m, normalized, box_index, crop_size, extrapolation_value=0.0)
                pooled = last = crop if pooled is None else pooled + crop
            parts.append(pooled)
        zeros = tf.zeros(tf.concat([tf.shape(beyond), tf.shape(parts[0])[1:]], axis=0), parts[0].dtype)
        out = tf.dynamic_stitch(positions + [beyond], parts + [zeros])

        def grad(upstream):
            grads, last = [], None
            for m, selected, (offsets, box_index) in zip(maps, positions, levels):
                with tf.control_dependencies([last] if last is not None else []):
                    rows = tf.cond(
                        tf.equal(tf.size(selected), num_rois),
                        lambda: tf.identity(upstream),  # every RoI on this level, in order
                        lambda: tf.gather(upstream, selected),
                    )
                total = None
                for normalized in offsets:
                    g = tf.raw_ops.CropAndResizeGradImage(
                        grads=rows, boxes=normalized, box_ind=box_index, image_size=tf.shape(m), T=m.dtype, method="bilinear"
                    )
                    total = last = g if total is None else total + g
                grads.append(total)
            return grads

        return out, grad

    return pooled_from(*padded)
