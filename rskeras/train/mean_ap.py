"""COCO-style mean average precision of boxes (torchmetrics ``MeanAveragePrecision()``
defaults with the pycocotools backend), in numpy.

``coco_map(images)`` reproduces the ``map`` value: xyxy boxes, IoU thresholds
0.50:0.05:0.95 and recall thresholds 0:0.01:1 (both torch float32 linspaces, as
torchmetrics passes them), at most 100 detections per image, area range "all", macro over
the categories present in predictions or ground truth — a category without ground truth
has no precision entries and drops out; the mean runs over every (IoU, recall, category)
precision entry that exists. It is -1 when no image or no ground-truth box was given.

Details reproduced from pycocotools ``COCOeval``: boxes are converted to xywh in float32
and IoUs are computed in float64 from ``x + w``; detections are ranked per image by score
with a stable sort and cut to 100; greedy matching in score order to the unmatched
ground truth with the highest IoU ≥ threshold (``min(t, 1 − 1e-10)``); detections of all
images are then ranked together by score (stable, in image order); the precision
envelope is sampled at the recall thresholds with ``searchsorted(..., "left")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rskeras.train.metrics import torch_linspace_f32

IOU_THRESHOLDS = torch_linspace_f32(0.5, 0.95, 10).astype(np.float64)
RECALL_THRESHOLDS = torch_linspace_f32(0.0, 1.0, 101).astype(np.float64)
MAX_DETECTIONS = 100
AREA_RANGE_ALL = (0.0, 1e5**2)


@dataclass
class DetectionImage:
    """One image's detections and ground truth (xyxy boxes)."""

    pred_boxes: np.ndarray  # [D, 4]
    pred_scores: np.ndarray  # [D]
    pred_labels: np.ndarray  # [D]
    gt_boxes: np.ndarray  # [G, 4]
    gt_labels: np.ndarray  # [G]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """float32 xyxy -> xywh (torchvision ``box_convert``), returned as float64."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    return out.astype(np.float64)


def coco_box_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of xywh boxes as pycocotools' ``bbIou`` (no crowd)."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    w = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = w * h
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _out_of_area(xywh: np.ndarray) -> np.ndarray:
    area = xywh[:, 2] * xywh[:, 3]
    return (area < AREA_RANGE_ALL[0]) | (area > AREA_RANGE_ALL[1])


def evaluate_image(dt: np.ndarray, scores: np.ndarray, gt: np.ndarray):
    """Greedy COCO matching of one image and category.

    Returns (sorted scores [D'], matched [T, D'], dt_ignore [T, D'], gt_ignore [G]) or
    None when the image has neither detections nor ground truth of the category.
    """
    if len(dt) == 0 and len(gt) == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS]
    dt, scores = dt[order], scores[order]
    gt_ignore = _out_of_area(gt)
    gt_order = np.argsort(gt_ignore.astype(np.int64), kind="mergesort")
    gt, gt_ignore = gt[gt_order], gt_ignore[gt_order]
    ious = coco_box_iou(dt, gt)
    num_t = len(IOU_THRESHOLDS)
    gt_matched = np.zeros((num_t, len(gt)), bool)
    dt_matched = np.zeros((num_t, len(dt)), bool)
    dt_ignore = np.zeros((num_t, len(dt)), bool)
    if len(gt) and len(dt):
        for ti, t in enumerate(IOU_THRESHOLDS):
            for di in range(len(dt)):
                best = min(t, 1 - 1e-10)
                m = -1
                for gi in range(len(gt)):
                    if gt_matched[ti, gi]:
                        continue
                    if m > -1 and not gt_ignore[m] and gt_ignore[gi]:
                        break
                    if ious[di, gi] < best:
                        continue
                    best = ious[di, gi]
                    m = gi
                if m == -1:
                    continue
                dt_ignore[ti, di] = gt_ignore[m]
                dt_matched[ti, di] = True
                gt_matched[ti, m] = True
    dt_out_of_area = _out_of_area(dt)[None, :]
    dt_ignore = dt_ignore | (~dt_matched & dt_out_of_area)
    return scores, dt_matched, dt_ignore, gt_ignore


def category_precision(evals: list) -> np.ndarray | None:
    """Interpolated precision ``[T, R]`` of one category over its images' evaluations,
    None when it has no (non-ignored) ground truth."""
    evals = [e for e in evals if e is not None]
    if not evals:
        return None
    scores = np.concatenate([e[0] for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e[1] for e in evals], axis=1)[:, order]
    ignored = np.concatenate([e[2] for e in evals], axis=1)[:, order]
    gt_ignore = np.concatenate([e[3] for e in evals])
    num_gt = int(np.count_nonzero(~gt_ignore))
    if num_gt == 0:
        return None
    tps = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fps = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    out = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t in range(len(IOU_THRESHOLDS)):
        tp, fp = tps[t], fps[t]
        nd = len(tp)
        recall = tp / num_gt
        precision = tp / (fp + tp + np.spacing(1))
        # Precision envelope: non-increasing from the right.
        precision = np.maximum.accumulate(precision[::-1])[::-1] if nd else precision
        idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        q = np.zeros(len(RECALL_THRESHOLDS))
        inside = idx < nd
        q[inside] = precision[idx[inside]]
        out[t] = q
    return out


def coco_map(images: list[DetectionImage]) -> float:
    """torchmetrics ``MeanAveragePrecision()(...)["map"]`` over ``images`` (see module doc)."""
    if not images:
        return -1.0
    converted = []
    labels = []
    for im in images:
        pl = np.asarray(im.pred_labels).astype(np.int64).reshape(-1)
        gl = np.asarray(im.gt_labels).astype(np.int64).reshape(-1)
        converted.append(
            (xyxy_to_xywh(im.pred_boxes), np.asarray(im.pred_scores, np.float32).astype(np.float64).reshape(-1), pl,
             xyxy_to_xywh(im.gt_boxes), gl)
        )
        labels.extend([pl, gl])
    categories = np.unique(np.concatenate(labels)) if labels else np.zeros((0,), np.int64)
    precisions = []
    for c in categories:
        evals = [evaluate_image(pb[pl == c], ps[pl == c], gb[gl == c]) for pb, ps, pl, gb, gl in converted]
        p = category_precision(evals)
        if p is not None:
            precisions.append(p)
    if not precisions:
        return -1.0
    return float(np.mean(np.stack(precisions)))
