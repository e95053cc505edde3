"""Object detection: DetectionTask (box targets from vector labels) and its metrics
(COCO mAP, F1/precision/recall with one-to-one matching)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import shapely
import tensorflow as tf

from rskeras.train.mean_ap import DetectionImage, coco_map
from rskeras.train.metrics import HostMetric, check_kwargs
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.segmentation import DEFAULT_COLORS, best_threshold_scores, threshold_suffix
from rskeras.train.tasks.task import BasicTask, class_ids_from_text, export_outputs
from rskeras.utils.feature import Feature

DEFAULT_F1_THRESHOLDS = [[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]]


class DetectionTask(BasicTask):
    """Predicts class-labelled boxes; targets come from vector features.

    For each feature of the ``targets`` vector input having ``property_name`` (class as
    in ClassificationTask), in stored order:

    1. box = ``[int(cx) − s, int(cy) − s, int(cx) + s, int(cy) + s]`` with the centroid
       (cx, cy) when ``box_size`` s is set, else ``int()`` of the geometry bounds
       (``int`` truncates toward zero);
    2. dropped if it does not overlap the crop ``[x0, y0, x1, y1]``
       (``b0 >= x1 or b2 <= x0 or b1 >= y1 or b3 <= y0``);
    3. with ``exclude_by_center``: dropped if the floor center is not strictly inside;
    4. with ``clip_boxes``: clamped to the crop;
    5. made crop-relative (minus (x0, y0)).

    Args:
        property_name: property holding the class name (or id).
        classes: class names. With Faster R-CNN, ``classes[0]`` is a dummy background.
        filters: accepted for compatibility and ignored, as in rslearn.
        read_class_id: read integer class ids.
        skip_unknown_categories: skip features of unknown classes instead of failing.
        skip_empty_examples: mark examples without boxes invalid (metrics skip them; the
            detector's loss does not look at ``valid``).
        colors: visualisation colors per class.
        box_size: half side of fixed boxes around centroids (needed for points).
        clip_boxes: clamp boxes to the crop (default true).
        exclude_by_center: drop boxes whose center is outside the crop.
        score_threshold: ``process_output`` and ``visualize`` keep detections with
            score strictly greater than this (default 0.5). Metrics use all detections.
        enable_map_metric: ``mAP`` (COCO mAP@[.5:.95], default true).
        enable_f1_metric: ``F1<sfx>`` per threshold list.
        enable_precision_recall: ``precision<sfx>`` and ``recall<sfx>`` per threshold list.
        f1_metric_thresholds: score threshold lists (suffix as in SegmentationTask).
        f1_metric_kwargs: ``cmp_mode`` ("iou" | "distance"), ``cmp_threshold`` (0.5),
            ``flatten_classes`` (false).
        image_bands, remap_values: see BasicTask.

    Targets (per example): ``{"boxes": float32 [N, 4] (x1, y1, x2, y2),
    "labels": int32 [N], "valid": int32 [], "width": float32 [], "height": float32 []}``;
    batches pad ``labels`` with -1 (:meth:`target_padding_values`). Model outputs are
    padded: ``{"boxes": [B, K, 4], "scores": [B, K], "labels": [B, K],
    "num_detections": [B]}``.
    """

    def __init__(
        self,
        property_name: str,
        classes: list[str],
        filters: list[Any] | None = None,
        read_class_id: bool = False,
        skip_unknown_categories: bool = False,
        skip_empty_examples: bool = False,
        colors: list | None = None,
        box_size: int | None = None,
        clip_boxes: bool = True,
        exclude_by_center: bool = False,
        score_threshold: float = 0.5,
        enable_map_metric: bool = True,
        enable_f1_metric: bool = False,
        enable_precision_recall: bool = False,
        f1_metric_thresholds: list[list[float]] | None = None,
        f1_metric_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not classes:
            raise ValueError("DetectionTask: classes must not be empty")
        self.property_name = property_name
        self.classes = list(classes)
        self.filters = list(filters or [])
        self.read_class_id = read_class_id
        self.skip_unknown_categories = skip_unknown_categories
        self.skip_empty_examples = skip_empty_examples
        self.colors = [tuple(c) for c in (colors or DEFAULT_COLORS)]
        self.box_size = box_size
        self.clip_boxes = clip_boxes
        self.exclude_by_center = exclude_by_center
        self.score_threshold = score_threshold
        self.enable_map_metric = enable_map_metric
        self.enable_f1_metric = enable_f1_metric
        self.enable_precision_recall = enable_precision_recall
        self.f1_metric_thresholds = [list(t) for t in (f1_metric_thresholds or DEFAULT_F1_THRESHOLDS)]
        self.f1_metric_kwargs = dict(f1_metric_kwargs or {})
        # Validate metric arguments now, without creating TF state.
        check_kwargs(
            self.f1_metric_kwargs, {"num_classes", "cmp_mode", "cmp_threshold", "flatten_classes"}, "DetectionTask f1_metric_kwargs"
        )
        if self.f1_metric_kwargs.get("cmp_mode", "iou") not in ("iou", "distance"):
            raise ValueError(f"DetectionTask: cmp_mode must be 'iou' or 'distance', got {self.f1_metric_kwargs['cmp_mode']!r}")

    def vector_property_names(self) -> list[str]:
        return [self.property_name]

    def target_padding_values(self) -> dict[str, Any]:
        return {"labels": -1}

    # ---- targets ---------------------------------------------------------------------

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        if "targets" not in raw_inputs:
            raise KeyError("DetectionTask: raw inputs have no 'targets' vector input")
        vec = raw_inputs["targets"]
        crop = tf.cast(metadata["crop_bounds"], tf.float64)
        x0, y0, x1, y1 = crop[0], crop[1], crop[2], crop[3]
        has = vec["has_property"][self.property_name]
        ids = class_ids_from_text(vec["properties"][self.property_name], self.classes, self.read_class_id)
        known = (ids >= 0) & (ids < len(self.classes))
        checks = []
        if not self.skip_unknown_categories:
            checks.append(
                tf.debugging.Assert(
                    tf.reduce_all(known | ~has),
                    [
                        f"DetectionTask: value of '{self.property_name}' is not one of {self.classes} "
                        "(set skip_unknown_categories to skip it), window",
                        metadata["window_name"],
                    ],
                )
            )
        keep = has & known
        # int() truncates toward zero, as does a float -> int cast.
        trunc = lambda v: tf.cast(tf.cast(v, tf.int64), tf.float64)  # noqa: E731
        if self.box_size:
            s = float(self.box_size)
            cx = trunc(vec["centroid"][:, 0])
            cy = trunc(vec["centroid"][:, 1])
            boxes = tf.stack([cx - s, cy - s, cx + s, cy + s], axis=1)
        else:
            boxes = trunc(tf.reshape(vec["bounds"], [-1, 4]))
        overlaps = ~((boxes[:, 0] >= x1) | (boxes[:, 2] <= x0) | (boxes[:, 1] >= y1) | (boxes[:, 3] <= y0))
        keep &= overlaps
        if self.exclude_by_center:
            center_x = tf.math.floor((boxes[:, 0] + boxes[:, 2]) / 2)
            center_y = tf.math.floor((boxes[:, 1] + boxes[:, 3]) / 2)
            keep &= (center_x > x0) & (center_x < x1) & (center_y > y0) & (center_y < y1)
        if self.clip_boxes:
            lo = tf.stack([x0, y0, x0, y0])
            hi = tf.stack([x1, y1, x1, y1])
            boxes = tf.minimum(tf.maximum(boxes, lo[None, :]), hi[None, :])
        boxes = boxes - tf.stack([x0, y0, x0, y0])[None, :]
        with tf.control_dependencies(checks):
            boxes = tf.cast(tf.boolean_mask(boxes, keep), tf.float32)
            labels = tf.boolean_mask(ids, keep)
        count = tf.shape(labels)[0]
        valid = tf.where(count > 0, 1, 0) if self.skip_empty_examples else tf.constant(1)
        return {}, {
            "valid": tf.cast(valid, tf.int32),
            "boxes": tf.reshape(boxes, [-1, 4]),
            "labels": tf.cast(labels, tf.int32),
            "width": tf.cast(x1 - x0, tf.float32),
            "height": tf.cast(y1 - y0, tf.float32),
        }

    # ---- outputs ---------------------------------------------------------------------

    def process_output(self, raw_output, metadata: SampleMetadata) -> list[Feature]:
        """One example's detections (``boxes`` [K, 4], ``scores`` [K], ``labels`` [K],
        optional ``num_detections``) -> box polygons in window pixel coordinates for
        scores > score_threshold, properties ``{"score", property_name}``."""
        boxes, scores, labels = example_detections(raw_output)
        wanted = scores > self.score_threshold
        x0, y0 = metadata.crop_bounds[0], metadata.crop_bounds[1]
        features = []
        for box, class_id, score in zip(boxes[wanted], labels[wanted], scores[wanted]):
            shp = shapely.box(x0 + float(box[0]), y0 + float(box[1]), x0 + float(box[2]), y0 + float(box[3]))
            class_id = int(class_id)
            value = class_id if self.read_class_id else self.classes[class_id]
            features.append(Feature(shp, {"score": float(score), self.property_name: value}))
        return features

    def output_layer(self) -> keras.layers.Layer:
        return DetectionOutput()

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {
            "kind": "detection",
            **export_outputs(prefix, {"boxes": "float32", "scores": "float32", "labels": "int32", "num_detections": "int32"}),
            "merge": "boxes",
            "property_name": self.property_name,
            "classes": list(self.classes),
            "read_class_id": bool(self.read_class_id),
            "score_threshold": self.score_threshold,
        }

    def visualize(self, input_dict, target_dict, output):
        """``gt`` and ``pred`` images with 2-pixel box outlines (pred: score > threshold)."""
        if target_dict is None:
            raise ValueError("DetectionTask.visualize needs the target dict")
        image = self.visualize_image(input_dict["image"])
        gt_labels = np.asarray(target_dict["labels"]).reshape(-1)
        gt_boxes = np.asarray(target_dict["boxes"]).reshape(-1, 4)[gt_labels >= 0]
        boxes, scores, labels = example_detections(output)
        wanted = scores > self.score_threshold
        return {
            "gt": self.draw_boxes(image.copy(), gt_boxes, gt_labels[gt_labels >= 0]),
            "pred": self.draw_boxes(image.copy(), boxes[wanted], labels[wanted]),
        }

    def draw_boxes(self, image: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        for box, class_id in zip(boxes, class_ids):
            sx, ex = (int(np.clip(v, 0, w)) for v in (box[0], box[2]))
            sy, ey = (int(np.clip(v, 0, h)) for v in (box[1], box[3]))
            color = self.colors[int(class_id) % len(self.colors)]
            image[sy:ey, sx : sx + 2] = color
            image[sy:ey, max(ex - 2, 0) : ex] = color
            image[sy : sy + 2, sx:ex] = color
            image[max(ey - 2, 0) : ey, sx:ex] = color
        return image

    # ---- metrics ---------------------------------------------------------------------

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        metrics: dict[str, keras.metrics.Metric] = {}
        if self.enable_map_metric:
            metrics["mAP"] = DetectionMeanAP(name="mAP")
        if self.enable_f1_metric or self.enable_precision_recall:
            kwargs = {k: v for k, v in self.f1_metric_kwargs.items() if k != "num_classes"}
            num_classes = int(self.f1_metric_kwargs.get("num_classes", len(self.classes)))
            for thresholds in self.f1_metric_thresholds:
                sfx = threshold_suffix(self.f1_metric_thresholds, thresholds)
                modes = (["f1"] if self.enable_f1_metric else []) + (
                    ["precision", "recall"] if self.enable_precision_recall else []
                )
                for mode in modes:
                    name = ("F1" if mode == "f1" else mode) + sfx
                    metrics[name] = DetectionF1Metric(num_classes, thresholds, metric_mode=mode, name=name, **kwargs)
        return metrics


def example_detections(raw_output: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [n, 4], scores [n], labels [n]) of one example's output dict, cut to
    ``num_detections`` when present (padded detector outputs)."""
    boxes = np.asarray(raw_output["boxes"]).reshape(-1, 4)
    scores = np.asarray(raw_output["scores"]).reshape(-1)
    labels = np.asarray(raw_output["labels"]).reshape(-1)
    if "num_detections" in raw_output and raw_output["num_detections"] is not None:
        n = int(np.asarray(raw_output["num_detections"]))
        boxes, scores, labels = boxes[:n], scores[:n], labels[:n]
    return boxes, scores, labels


@keras.saving.register_keras_serializable(package="rskeras")
class DetectionOutput(keras.layers.Layer):
    """Export post-processing: passes the padded detections through as
    ``{"boxes": [B, K, 4], "scores": [B, K], "labels": int32 [B, K],
    "num_detections": int32 [B]}`` (no score threshold; ``process_output`` applies it)."""

    def call(self, outputs):
        return {
            "boxes": tf.cast(outputs["boxes"], tf.float32),
            "scores": tf.cast(outputs["scores"], tf.float32),
            "labels": tf.cast(outputs["labels"], tf.int32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
        }


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def detection_batch_tensors(outputs: dict[str, Any], targets: dict[str, Any]) -> list[tf.Tensor]:
    """The tensors a detection metric needs from a batch, in a fixed order."""
    boxes = tf.cast(outputs["boxes"], tf.float32)
    num = outputs.get("num_detections")
    if num is None:
        num = tf.reduce_sum(tf.cast(tf.cast(outputs["labels"], tf.int32) >= 0, tf.int32), axis=-1)
    return [
        boxes,
        tf.cast(outputs["scores"], tf.float32),
        tf.cast(outputs["labels"], tf.int64),
        tf.cast(num, tf.int64),
        tf.cast(targets["boxes"], tf.float32),
        tf.cast(targets["labels"], tf.int64),
        tf.cast(targets["valid"], tf.int64),
    ]


def split_detection_batch(arrays: list[np.ndarray]) -> list[DetectionImage]:
    """Numpy batch (as :func:`detection_batch_tensors`) -> the valid examples' images;
    predictions cut to ``num_detections``, ground truth where ``labels >= 0``."""
    boxes, scores, labels, num, gt_boxes, gt_labels, valid = arrays
    images = []
    for b in range(len(valid)):
        if not valid[b]:
            continue
        n = int(num[b])
        gl = gt_labels[b].reshape(-1)
        real = gl >= 0
        images.append(
            DetectionImage(
                pred_boxes=boxes[b].reshape(-1, 4)[:n],
                pred_scores=scores[b].reshape(-1)[:n],
                pred_labels=labels[b].reshape(-1)[:n],
                gt_boxes=gt_boxes[b].reshape(-1, 4)[real],
                gt_labels=gl[real],
            )
        )
    return images


class DetectionMeanAP(HostMetric):
    """``mAP``: torchmetrics MeanAveragePrecision ``map`` (see
    :mod:`rskeras.train.mean_ap`) over the valid examples of the epoch.

    ``update_state(outputs, targets)`` with padded batch outputs and targets; examples are
    kept on the host (HostMetric)."""

    def update_state(self, outputs, targets, sample_weight=None):
        self.host_update(detection_batch_tensors(outputs, targets))

    def result(self):
        images = [im for arrays in self.host_batches() for im in split_detection_batch(list(arrays))]
        return tf.constant(coco_map(images), tf.float32)


def box_iou_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torchvision ``box_iou`` of xyxy boxes in float32 ``[len(a), len(b)]``."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def max_matching(adjacency: np.ndarray) -> int:
    """Size of a maximum one-to-one matching of a bool ``[G, P]`` matrix (augmenting
    paths). Equals the number of True pairs a minimum-cost assignment of
    ``1 − adjacency`` selects (rslearn's ``linear_sum_assignment`` use)."""
    rows, cols = adjacency.shape
    match_of_col = [-1] * cols
    neighbours = [np.nonzero(adjacency[r])[0].tolist() for r in range(rows)]

    def augment(r: int, seen: list[bool]) -> bool:
        for c in neighbours[r]:
            if seen[c]:
                continue
            seen[c] = True
            if match_of_col[c] == -1 or augment(match_of_col[c], seen):
                match_of_col[c] = r
                return True
        return False

    return sum(augment(r, [False] * cols) for r in range(rows))


def detection_match_counts(
    images: list[DetectionImage],
    num_classes: int,
    thresholds: list[float],
    cmp_mode: str,
    cmp_threshold: float,
) -> np.ndarray:
    """tp/fp/fn ``[num_classes, T, 3]`` of rslearn's detection F1Metric over ``images``.

    Per image, class c and score threshold t: ground truth of class c vs predictions of
    class c with score >= t, matched one-to-one where IoU >= cmp_threshold ("iou") or
    center distance <= cmp_threshold ("distance").
    """
    counts = np.zeros((num_classes, len(thresholds), 3), np.float64)
    for im in images:
        for c in range(num_classes):
            gt = im.gt_boxes[im.gt_labels == c].astype(np.float32)
            for ti, t in enumerate(thresholds):
                sel = (im.pred_scores >= np.float32(t)) & (im.pred_labels == c)
                pred = im.pred_boxes[sel].astype(np.float32)
                if cmp_mode == "iou":
                    adjacency = box_iou_f32(gt, pred) >= cmp_threshold
                else:
                    gc = np.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2], axis=1).astype(np.float64)
                    pc = np.stack([(pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2], axis=1).astype(np.float64)
                    distances = np.sqrt(((gc[:, None, :] - pc[None, :, :]) ** 2).sum(-1))
                    adjacency = distances <= cmp_threshold
                tp = max_matching(adjacency) if adjacency.size else 0
                counts[c, ti] += (tp, len(pred) - tp, len(gt) - tp)
    return counts


class DetectionF1Metric(keras.metrics.Metric):
    """rslearn's detection F1Metric (also precision / recall).

    Counts (see :func:`detection_match_counts`) live in a SUM-aggregated Keras variable;
    the per-batch matching runs in ``tf.py_function`` (a pure function of the batch).
    The value is, per class, the best score over the thresholds (F1 = 2PR/(P+R), 0 when
    P+R < 0.001), averaged over **all** ``num_classes`` classes including the
    background class 0, or computed on counts pooled over classes with
    ``flatten_classes``. Only examples with a truthy ``valid`` count; predictions are
    not thresholded by the task's score_threshold.

    Args:
        num_classes: number of classes.
        score_thresholds: the score thresholds (predictions with score >= t).
        cmp_mode: "iou" (default) or "distance" (box centers).
        cmp_threshold: minimum IoU / maximum distance of a match (default 0.5).
        flatten_classes: pool counts over classes.
        metric_mode: "f1" (default), "precision" or "recall".
    """

    host_side = True  # update_state runs tf.py_function (not XLA-compilable)

    def __init__(
        self,
        num_classes: int,
        score_thresholds: list[float],
        cmp_mode: str = "iou",
        cmp_threshold: float = 0.5,
        flatten_classes: bool = False,
        metric_mode: str = "f1",
        name: str = "F1",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if cmp_mode not in ("iou", "distance"):
            raise ValueError(f"DetectionF1Metric: cmp_mode must be 'iou' or 'distance', got {cmp_mode!r}")
        if metric_mode not in ("f1", "precision", "recall"):
            raise ValueError(f"DetectionF1Metric: metric_mode must be f1/precision/recall, got {metric_mode!r}")
        if not score_thresholds:
            raise ValueError("DetectionF1Metric: score_thresholds must not be empty")
        self.num_classes = int(num_classes)
        self.score_thresholds = [float(t) for t in score_thresholds]
        self.cmp_mode = cmp_mode
        self.cmp_threshold = float(cmp_threshold)
        self.flatten_classes = flatten_classes
        self.metric_mode = metric_mode
        self.counts = self.add_variable(
            shape=(self.num_classes, len(self.score_thresholds), 3), initializer="zeros", dtype="float64", name="counts"
        )

    def batch_counts(self, *arrays: np.ndarray) -> np.ndarray:
        images = split_detection_batch([np.asarray(a) for a in arrays])
        return detection_match_counts(images, self.num_classes, self.score_thresholds, self.cmp_mode, self.cmp_threshold)

    def update_state(self, outputs, targets, sample_weight=None):
        tensors = detection_batch_tensors(outputs, targets)
        if tf.executing_eagerly():
            counts = tf.constant(self.batch_counts(*[t.numpy() for t in tensors]))
        else:
            counts = tf.py_function(lambda *ts: self.batch_counts(*[t.numpy() for t in ts]), tensors, Tout=tf.float64)
            counts.set_shape(self.counts.shape)
        self.counts.assign_add(counts)

    def result(self):
        counts = tf.convert_to_tensor(self.counts)
        if self.flatten_classes:
            counts = tf.reduce_sum(counts, axis=0, keepdims=True)
        return tf.reduce_mean(best_threshold_scores(counts, self.metric_mode))
