"""Unit tests of the detection building blocks against small numpy references."""

import numpy as np
import pytest
import tensorflow as tf

from rskeras.models.detection.anchors import AnchorGenerator, base_anchors
from rskeras.models.detection.box_coder import BoxCoder
from rskeras.models.detection.box_ops import box_iou, clip_boxes_to_image, large_enough
from rskeras.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from rskeras.models.detection.nms import batched_nms
import contextlib

from rskeras.models.detection.roi_align import map_levels, multi_scale_roi_align
from rskeras.models.step_graph import trainer_step_graph
from rskeras.models.detection.sampler import BalancedPositiveNegativeSampler
from memory_helpers import allocator_peak_growth


def random_boxes(rng, n, size=64.0, min_side=1.0, max_side=30.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(min_side, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def iou_np(a, b):
    out = np.zeros((len(a), len(b)), np.float64)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            w = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            h = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            inter = w * h
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


# ---- box ops / coder / anchors -----------------------------------------------------------


def test_box_iou_matches_numpy_and_padding_is_zero():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 5), random_boxes(rng, 7)
    b[3] = 0  # a zero (padding) box
    got = box_iou(tf.constant(a), tf.constant(b)).numpy()
    np.testing.assert_allclose(got, iou_np(a, b), atol=1e-6)
    assert np.all(got[:, 3] == 0)
    pad = box_iou(tf.zeros((1, 4)), tf.zeros((1, 4))).numpy()
    assert pad[0, 0] == 0.0  # no NaN for two empty boxes


def test_clip_and_small_boxes():
    boxes = tf.constant([[-5.0, 3.0, 70.0, 90.0], [10.0, 10.0, 10.0005, 20.0]])
    clipped = clip_boxes_to_image(boxes, 64, 48).numpy()
    np.testing.assert_array_equal(clipped[0], [0.0, 3.0, 48.0, 64.0])
    assert large_enough(boxes, 1e-3).numpy().tolist() == [True, False]


def test_box_coder_round_trip_and_clamp():
    rng = np.random.default_rng(1)
    proposals, gt = random_boxes(rng, 20), random_boxes(rng, 20)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(tf.constant(gt), tf.constant(proposals))
    np.testing.assert_allclose(coder.decode(deltas, tf.constant(proposals)).numpy(), gt, atol=1e-4)
    # dw is clamped at log(1000/16) after dividing by the weight.
    big = coder.decode(tf.constant([[0.0, 0.0, 100.0, 0.0]]), tf.constant([[0.0, 0.0, 1.0, 1.0]])).numpy()
    np.testing.assert_allclose(big[0, 2] - big[0, 0], 1000.0 / 16, rtol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))


def test_base_anchors_round_half_even_and_order():
    np.testing.assert_array_equal(base_anchors([16], [0.5, 1.0, 2.0]), [[-11, -6, 11, 6], [-8, -8, 8, 8], [-6, -11, 6, 11]])
    two = base_anchors([16, 32], [0.5, 1.0])  # ratio-major, size-minor
    np.testing.assert_array_equal(two[:, 2], [11, 23, 8, 16])


def test_anchor_grid_is_location_major():
    gen = AnchorGenerator([[16]])
    anchors = gen.level_anchors(0, (2, 3), (8, 12)).numpy()  # strides 4, 4
    assert anchors.shape == (2 * 3 * 3, 4)
    # location (y=1, x=2) is the 6th location; its first anchor is the ratio-0.5 one.
    np.testing.assert_array_equal(anchors[5 * 3], [8 - 11, 4 - 6, 8 + 11, 4 + 6])
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator([[16], [32]], [[1.0]])


# ---- matcher / sampler -------------------------------------------------------------------


def test_matcher_thresholds_low_quality_and_padding():
    quality = tf.constant(
        [
            [[0.9, 0.5, 0.2, 0.1], [0.1, 0.6, 0.25, 0.0], [0.99, 0.99, 0.99, 0.99]],
        ]
    )
    gt_valid = tf.constant([[True, True, False]])  # the third row is padding
    plain = Matcher(0.7, 0.3)(quality, gt_valid).numpy()[0]
    assert plain.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD]
    low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality, gt_valid).numpy()[0]
    # gt 1's best prediction (0.6, index 1) is kept as a low-quality match.
    assert low.tolist() == [0, 1, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD]
    empty = Matcher(0.7, 0.3, True)(quality, tf.zeros((1, 3), tf.bool)).numpy()[0]
    assert np.all(empty == BELOW_LOW_THRESHOLD)
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


def test_sampler_quota_and_reproducibility():
    labels = np.zeros((3, 500), np.int32)
    labels[0, :300] = 1  # many positives -> 64 pos + 64 neg
    labels[1, :10] = 1  # few positives -> 10 pos + 118 neg
    labels[2, :] = -1
    labels[2, :5] = 1
    labels[2, 5:20] = 0  # few negatives -> 5 pos + 15 neg
    sampler = BalancedPositiveNegativeSampler(128, 0.5)
    pos, neg = sampler(tf.constant(labels), seed=tf.constant([3, 4]))
    pos, neg = pos.numpy(), neg.numpy()
    assert pos.sum(1).tolist() == [64, 10, 5]
    assert neg.sum(1).tolist() == [64, 118, 15]
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    pos2, _ = sampler(tf.constant(labels), seed=tf.constant([3, 4]))
    np.testing.assert_array_equal(pos, pos2.numpy())
    pos3, neg3 = sampler(tf.constant(labels))  # stateful draw
    assert pos3.numpy().sum() == 79 and neg3.numpy().sum() == 197


# ---- NMS ---------------------------------------------------------------------------------


def nms_np(boxes, scores, groups, valid, thresh):
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    keep = []
    for i in order:
        if all(groups[i] != groups[j] or iou_np(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thresh for j in keep):
            keep.append(i)
    return keep


def test_batched_nms_matches_greedy_reference():
    rng = np.random.default_rng(2)
    b, n = 2, 60
    boxes = np.stack([random_boxes(rng, n, size=40.0, min_side=5.0, max_side=20.0) for _ in range(b)])
    scores = rng.uniform(0, 1, (b, n)).astype(np.float32)
    groups = rng.integers(0, 3, (b, n)).astype(np.int32)
    valid = rng.uniform(0, 1, (b, n)) > 0.2
    idx, count = batched_nms(tf.constant(boxes), tf.constant(scores), tf.constant(groups), tf.constant(valid), 0.5, 50)
    assert idx.shape == (b, 50)
    for i in range(b):
        want = nms_np(boxes[i], scores[i], groups[i], valid[i], 0.5)
        got = idx[i, : int(count[i])].numpy().tolist()
        assert got == want[:50]

    # Dynamic batch size goes through tf.map_fn and gives the same answer.
    fn = tf.function(
        lambda *a: batched_nms(*a, 0.5, 50),
        input_signature=[
            tf.TensorSpec([None, n, 4]),
            tf.TensorSpec([None, n]),
            tf.TensorSpec([None, n], tf.int32),
            tf.TensorSpec([None, n], tf.bool),
        ],
    )
    idx2, count2 = fn(boxes, scores, groups, valid)
    np.testing.assert_array_equal(idx2.numpy(), idx.numpy())
    np.testing.assert_array_equal(count2.numpy(), count.numpy())


# ---- RoIAlign ----------------------------------------------------------------------------


def bilinear_np(feat, y, x):
    h, w = feat.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(feat.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * feat[y0, x0] + hy * lx * feat[y0, x1] + ly * hx * feat[y1, x0] + ly * lx * feat[y1, x1]


def roi_align_np(feat, box, scale, out=7, sr=2):
    """torchvision roi_align (aligned=False) for one box on an HWC map."""
    sx, sy, ex, ey = (c * scale for c in box)
    rw, rh = max(ex - sx, 1.0), max(ey - sy, 1.0)
    bw, bh = rw / out, rh / out
    res = np.zeros((out, out, feat.shape[2]))
    for ph in range(out):
        for pw in range(out):
            acc = 0.0
            for iy in range(sr):
                for ix in range(sr):
                    y = sy + ph * bh + (iy + 0.5) * bh / sr
                    x = sx + pw * bw + (ix + 0.5) * bw / sr
                    acc = acc + bilinear_np(feat, y, x)
            res[ph, pw] = acc / (sr * sr)
    return res


IMPLEMENTATIONS = {"gathers": contextlib.nullcontext, "crop_and_resize": trainer_step_graph}


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_multi_scale_roi_align_matches_reference(implementation):
    rng = np.random.default_rng(3)
    f0 = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)  # stride 4 of a 64x64 image
    f1 = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)  # stride 8
    boxes = np.array(
        [
            [[2.0, 3.0, 20.0, 30.0], [40.0, 40.0, 63.0, 63.0], [-10.0, -10.0, 5.0, 5.0], [30.0, 30.0, 30.2, 30.1]],
            [[0.0, 0.0, 64.0, 64.0], [10.0, 50.0, 100.0, 90.0], [5.5, 7.25, 9.0, 60.0], [62.0, 1.0, 64.0, 3.0]],
        ],
        np.float32,
    )
    with IMPLEMENTATIONS[implementation]():
        pooled = multi_scale_roi_align([tf.constant(f0), tf.constant(f1)], tf.constant(boxes), (64, 64)).numpy()
    assert pooled.shape == (2, 4, 7, 7, 3)
    levels = map_levels(tf.constant(boxes), [0.25, 0.125], 2).numpy()
    for b in range(2):
        for r in range(4):
            # level 2 -> map 0 (scale 1/4), level 3 -> map 1 (scale 1/8): k_min = 2.
            area = (boxes[b, r, 2] - boxes[b, r, 0]) * (boxes[b, r, 3] - boxes[b, r, 1])
            want_level = int(np.clip(np.floor(4 + np.log2(np.sqrt(area) / 224) + 1e-6), 2, 3)) - 2
            assert levels[b, r] == want_level
            feat, scale = (f0[b], 0.25) if want_level == 0 else (f1[b], 0.125)
            np.testing.assert_allclose(pooled[b, r], roi_align_np(feat, boxes[b, r], scale), atol=2e-5)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_roi_align_gradient_is_the_adjoint(implementation):
    """RoIAlign is linear in the features, so <pool(F), U> must equal <F, grad>."""
    rng = np.random.default_rng(4)
    f0 = tf.constant(rng.normal(size=(2, 16, 16, 3)).astype(np.float32))
    f1 = tf.constant(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
    small = [random_boxes(rng, 3, size=50.0, max_side=40.0) for _ in range(2)]
    large = [random_boxes(rng, 3, size=20.0, min_side=120.0, max_side=160.0) for _ in range(2)]  # level 3
    boxes = tf.constant(np.stack([np.concatenate([s, g]) for s, g in zip(small, large)]))
    upstream = tf.constant(rng.normal(size=(2, 6, 7, 7, 3)).astype(np.float32))
    with tf.GradientTape() as tape, IMPLEMENTATIONS[implementation]():
        tape.watch([f0, f1])
        pooled = multi_scale_roi_align([f0, f1], boxes, (64, 64))
        total = tf.reduce_sum(pooled * upstream)
    g0, g1 = tape.gradient(total, [f0, f1])
    adjoint = tf.reduce_sum(f0 * g0) + tf.reduce_sum(f1 * g1)
    np.testing.assert_allclose(adjoint.numpy(), total.numpy(), rtol=1e-4)
    assert np.abs(g0.numpy()).sum() > 0 and np.abs(g1.numpy()).sum() > 0


def test_crop_and_resize_roi_align_equals_the_gathers():
    """The trainer's implementation (crop_and_resize on an edge-padded map) gives the
    gathers' values and gradients, at the borders too (points in [-1, 0), in
    [size - 1, size] and beyond), on every level, for RoIs on no level and for none."""
    rng = np.random.default_rng(6)
    feats = [tf.constant(rng.normal(size=(2, s, s, 5)).astype(np.float32)) for s in (16, 8, 4)]
    edge = np.array([[-3.0, -2.0, 6.0, 7.0], [58.0, 55.0, 64.0, 64.0], [-8.0, 60.0, 2.0, 70.0], [0.0, 0.0, 64.0, 64.0]], np.float32)
    boxes = np.stack([np.concatenate([random_boxes(rng, 6, size=50.0, max_side=40.0), random_boxes(rng, 2, size=20.0, min_side=120.0, max_side=300.0), edge]) for _ in range(2)])
    upstream = tf.constant(rng.normal(size=(2, 12, 7, 7, 5)).astype(np.float32))

    def pooled_and_grads(features, boxes, context):
        with tf.GradientTape() as tape, context():
            tape.watch(features)
            pooled = multi_scale_roi_align(features, tf.convert_to_tensor(boxes), (64, 64))
            total = tf.reduce_sum(pooled * upstream[:, : boxes.shape[1]])
        return [pooled] + tape.gradient(total, features)

    # Three levels, two, two not consecutive, and every RoI on one level (the gradient's
    # shortcut: no gathered rows).
    for features, bx in ((feats, boxes), (feats[:2], boxes), ([feats[0], feats[2]], boxes), (feats, boxes[:, :6])):
        want = pooled_and_grads(features, bx, contextlib.nullcontext)
        got = tf.function(pooled_and_grads, reduce_retracing=True)(features, bx, trainer_step_graph)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=2e-5)
    empty = pooled_and_grads(feats, np.zeros((2, 0, 4), np.float32), trainer_step_graph)
    assert empty[0].shape == (2, 0, 7, 7, 5) and all(float(tf.reduce_sum(tf.abs(g))) == 0.0 for g in empty[1:])


def test_crop_and_resize_roi_align_holds_two_pooled_tensors_at_most():
    """Forward and backward of the trainer's RoIAlign hold at most the running sum and one
    crop (2 x [N, P, P, C]), the caller's loss included: no crop is kept for the backward
    pass, and with every RoI on one level the gradient is not gathered into a copy.
    Measured with TF's CPU allocator statistics (which oneDNN's allocator keeps): 1.3 x;
    left to autodiff, the crops' sums and their division by the number of samples
    peaked at 5.2 x."""
    rng = np.random.default_rng(8)
    features = [tf.constant(rng.normal(size=(2, s, s, 64)).astype(np.float32)) for s in (16, 8)]
    boxes = tf.constant(np.stack([random_boxes(rng, 1024, size=50.0, max_side=40.0) for _ in range(2)]))
    weights = tf.constant(rng.normal(size=(64,)).astype(np.float32))
    pooled_bytes = 2 * 1024 * 7 * 7 * 64 * 4

    @tf.function
    def step():
        with tf.GradientTape() as tape, trainer_step_graph():
            tape.watch(features)
            total = tf.reduce_sum(multi_scale_roi_align(features, boxes, (64, 64)) * weights)
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(total, features)])

    step()  # traced and instantiated
    growth = allocator_peak_growth(step)
    assert growth <= 2.0 * pooled_bytes, f"peak grew by {growth / pooled_bytes:.2f} x [N, P, P, C]"


def test_roi_align_in_a_graph_equals_eager():
    """In a tf.function the taps are chained (one gathered tensor alive at a time, not
    16): values and gradients must stay those of eager execution (to float32 rounding:
    Grappler may regroup the graph's sums)."""
    rng = np.random.default_rng(5)
    feats = [tf.constant(rng.normal(size=(2, s, s, 4)).astype(np.float32)) for s in (16, 8)]
    boxes = tf.constant(np.stack([random_boxes(rng, 5, size=50.0, max_side=40.0) for _ in range(2)]))
    upstream = tf.constant(rng.normal(size=(2, 5, 7, 7, 4)).astype(np.float32))

    def pooled_and_grads(f0, f1):
        with tf.GradientTape() as tape:
            tape.watch([f0, f1])
            pooled = multi_scale_roi_align([f0, f1], boxes, (64, 64))
            total = tf.reduce_sum(pooled * upstream)
        return [pooled] + tape.gradient(total, [f0, f1])

    eager = pooled_and_grads(*feats)
    graph = tf.function(pooled_and_grads)(*feats)
    for e, g in zip(eager, graph):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-5)
