"""Second stage of Faster R-CNN: RoI box head, box predictor, losses and detections
(torchvision ``TwoMLPHead``, ``FastRCNNPredictor`` and ``RoIHeads``)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.detection.box_coder import BoxCoder
from rskeras.models.detection.box_ops import box_iou, clip_boxes_to_image, large_enough
from rskeras.models.detection.losses import smooth_l1
from rskeras.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from rskeras.models.detection.nms import batched_nms
from rskeras.models.detection.roi_align import multi_scale_roi_align
from rskeras.models.detection.sampler import BalancedPositiveNegativeSampler
from rskeras.models.shapes import flatten_dims
from rskeras.models.step_graph import in_trainer_step
from rskeras.weights.torch_params import TorchParam, dense_params, join


def _torch_linear_init(fan_in: int) -> dict:
    """torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    (new initializer instances at every call: give each layer its own)."""
    limit = 1.0 / float(np.sqrt(fan_in))
    uniform = keras.initializers.RandomUniform(-limit, limit)
    return {"kernel_initializer": uniform, "bias_initializer": keras.initializers.RandomUniform(-limit, limit)}


def fc6_from_torch(num_channels: int, resolution: int):
    """Reorders the rows of fc6's kernel from torch's (C, H, W) flattening of the pooled
    features to rskeras' NHWC (H, W, C) flattening."""

    def transform(kernel: np.ndarray) -> np.ndarray:
        out = kernel.shape[1]
        k = kernel.reshape(num_channels, resolution, resolution, out).transpose(1, 2, 0, 3)
        return k.reshape(resolution * resolution * num_channels, out)

    return transform


class TwoMLPHead(keras.layers.Layer):
    """Flatten then ``Dense(representation_size) + ReLU`` twice (fc6, fc7).

    The pooled RoI features ``[R, P, P, C]`` are flattened in (H, W, C) order; weights
    from torch (which flattens (C, H, W)) are reordered in :meth:`torch_params`.

    Args:
        num_channels: int, C.
        resolution: int, P (7).
        representation_size: int (1024).

    Call: ``[R, P, P, C]`` -> ``[R, representation_size]``.
    """

    def __init__(self, num_channels: int, resolution: int = 7, representation_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        if min(num_channels, resolution, representation_size) <= 0:
            raise ValueError(
                f"TwoMLPHead: num_channels ({num_channels}), resolution ({resolution}) and "
                f"representation_size ({representation_size}) must be > 0"
            )
        self.num_channels = num_channels
        self.resolution = resolution
        self.representation_size = representation_size
        in_features = num_channels * resolution * resolution
        self.fc6 = keras.layers.Dense(representation_size, activation="relu", name="fc6", **_torch_linear_init(in_features))
        self.fc7 = keras.layers.Dense(
            representation_size, activation="relu", name="fc7", **_torch_linear_init(representation_size)
        )
        self.fc6.build((None, in_features))
        self.fc7.build((None, representation_size))

    def call(self, x):
        x = tf.reshape(x, [-1, self.num_channels * self.resolution * self.resolution])
        return self.fc7(self.fc6(x))

    def torch_params(self, prefix: str) -> list[TorchParam]:
        fc6 = dense_params(self.fc6, join(prefix, "fc6"))
        fc6[0].transform = fc6_from_torch(self.num_channels, self.resolution)
        return fc6 + dense_params(self.fc7, join(prefix, "fc7"))

    def get_config(self):
        return {
            **super().get_config(),
            "num_channels": self.num_channels,
            "resolution": self.resolution,
            "representation_size": self.representation_size,
        }


class FastRCNNPredictor(keras.layers.Layer):
    """Class logits and class-specific box deltas.

    Args:
        in_channels: int, input features (1024).
        num_classes: int, including the background class 0.

    Call: ``[R, in_channels]`` -> ``(logits [R, num_classes], deltas [R, 4 * num_classes])``;
    delta columns are class-major (``4c .. 4c+3`` = dx, dy, dw, dh of class c).
    """

    def __init__(self, in_channels: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if in_channels <= 0 or num_classes < 2:
            raise ValueError(
                f"FastRCNNPredictor: in_channels ({in_channels}) must be > 0 and num_classes ({num_classes}) >= 2"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.cls_score = keras.layers.Dense(num_classes, name="cls_score", **_torch_linear_init(in_channels))
        self.bbox_pred = keras.layers.Dense(4 * num_classes, name="bbox_pred", **_torch_linear_init(in_channels))
        self.cls_score.build((None, in_channels))
        self.bbox_pred.build((None, in_channels))

    def call(self, x):
        return self.cls_score(x), self.bbox_pred(x)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return dense_params(self.cls_score, join(prefix, "cls_score")) + dense_params(self.bbox_pred, join(prefix, "bbox_pred"))

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "num_classes": self.num_classes}


class RoIHeads(keras.layers.Layer):
    """Classifies and refines proposals; computes the Fast R-CNN losses and detections.

    Features of each proposal are pooled with multi-scale RoIAlign (``roi_output_size``
    square, ``sampling_ratio``), passed through :class:`TwoMLPHead` and
    :class:`FastRCNNPredictor`.

    Training samples: the ground-truth boxes are appended to the proposals, matched by
    IoU (>= ``fg_iou_thresh`` foreground with the matched box's label, <
    ``bg_iou_thresh`` background), and ``batch_size_per_image`` are sampled per image
    with ``positive_fraction`` positives. ``loss_classifier`` is the cross-entropy mean
    over the samples, ``loss_box_reg`` the smooth-L1 (beta 1/9) of the true class's
    deltas (box coder weights ``bbox_reg_weights``) over positives, summed and divided by
    the number of samples.

    Detections: softmax scores, class-specific boxes decoded and clipped to the image,
    background dropped, ``score > score_thresh``, sides ``>= min_size``, NMS per class
    at ``nms_thresh``, best ``detections_per_img`` by score.

    Args:
        num_channels: int, channels of the feature maps.
        num_classes: int, including background 0.
        representation_size: int (1024). roi_output_size: int (7). sampling_ratio: int (2).
        fg_iou_thresh: float (0.5). bg_iou_thresh: float (0.5).
        batch_size_per_image: int (512). positive_fraction: float (0.25).
        bbox_reg_weights: 4 floats (10, 10, 5, 5).
        score_thresh: float (0.05). nms_thresh: float (0.5). detections_per_img: int (100).
        min_size: float (1e-2), minimum side of a detection.
    """

    def __init__(
        self,
        num_channels: int,
        num_classes: int,
        representation_size: int = 1024,
        roi_output_size: int = 7,
        sampling_ratio: int = 2,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if detections_per_img <= 0:
            raise ValueError(f"RoIHeads: detections_per_img must be > 0, got {detections_per_img}")
        if sampling_ratio <= 0:
            raise ValueError(f"RoIHeads: sampling_ratio must be > 0, got {sampling_ratio}")
        self.num_channels = num_channels
        self.num_classes = num_classes
        self.representation_size = representation_size
        self.roi_output_size = roi_output_size
        self.sampling_ratio = sampling_ratio
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.bbox_reg_weights = tuple(float(w) for w in bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        self.box_head = TwoMLPHead(num_channels, roi_output_size, representation_size, name="box_head")
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes, name="box_predictor")
        self.box_coder = BoxCoder(self.bbox_reg_weights)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.supports_jit = False

    # ---- shared ----------------------------------------------------------------------

    def pool(self, features: list, boxes: tf.Tensor, image_size) -> tf.Tensor:
        """Multi-scale RoIAlign: ``[B, R, 4]`` -> ``[B, R, P, P, C]``."""
        return multi_scale_roi_align(features, boxes, image_size, self.roi_output_size, self.sampling_ratio)

    def predict(self, features: list, boxes: tf.Tensor, image_size) -> tuple[tf.Tensor, tf.Tensor]:
        """Class logits ``[B, R, num_classes]`` and deltas ``[B, R, 4 * num_classes]``."""
        pooled = self.pool(features, boxes, image_size)
        shape = tf.shape(boxes)
        logits, deltas = self.box_predictor(self.box_head(pooled))
        logits = tf.reshape(tf.cast(logits, tf.float32), tf.stack([shape[0], shape[1], self.num_classes]))
        deltas = tf.reshape(tf.cast(deltas, tf.float32), tf.stack([shape[0], shape[1], 4 * self.num_classes]))
        return logits, deltas

    # ---- training --------------------------------------------------------------------

    def select_training_samples(self, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, seed=None) -> dict:
        """Appends the ground truth to the proposals, matches and samples them.

        Returns a dict of ``[B, S]`` tensors (S = ``batch_size_per_image`` or fewer
        candidates): ``boxes`` ``[B, S, 4]``, ``labels`` (int32, class of the sample,
        0 background), ``valid`` (bool, the slot holds a sample) and
        ``regression_targets`` ``[B, S, 4]``.
        """
        boxes = tf.concat([proposals, gt_boxes], axis=1)
        valid = tf.concat([tf.cast(proposal_valid, tf.bool), gt_valid], axis=1)
        quality = box_iou(gt_boxes, boxes)
        matches = self.matcher(quality, gt_valid)
        matched_idx = tf.maximum(matches, 0)
        labels = tf.gather(tf.cast(gt_labels, tf.int32), matched_idx, batch_dims=1)
        labels = tf.where(tf.equal(matches, BELOW_LOW_THRESHOLD), 0, labels)
        labels = tf.where(tf.equal(matches, BETWEEN_THRESHOLDS), -1, labels)
        labels = tf.where(valid, labels, -1)
        pos, neg = self.sampler(labels, seed=seed)
        selected = pos | neg

        n = boxes.shape[1]
        k = min(self.batch_size_per_image, n) if n is not None else tf.minimum(self.batch_size_per_image, tf.shape(boxes)[1])
        # Selected candidates first, in index order (torch.nonzero order).
        index = tf.cast(tf.range(tf.shape(boxes)[1]), tf.float32)[None, :]
        count = tf.cast(tf.shape(boxes)[1], tf.float32)
        order_key = tf.where(selected, -index, -2.0 * count - index)
        _, slot = tf.math.top_k(order_key, k=k, sorted=True)
        slot_valid = tf.gather(selected, slot, batch_dims=1)
        slot_boxes = tf.gather(boxes, slot, batch_dims=1)
        slot_labels = tf.where(slot_valid, tf.gather(labels, slot, batch_dims=1), 0)
        slot_matched = tf.gather(gt_boxes, tf.gather(matched_idx, slot, batch_dims=1), batch_dims=1)
        positive = slot_valid & (slot_labels > 0)
        # Encode only positives (the others may be empty padding boxes: 0/0 would put
        # NaN into the gradient of the masked loss).
        unit = tf.constant([0.0, 0.0, 1.0, 1.0])
        targets = self.box_coder.encode(
            tf.where(positive[..., None], slot_matched, unit), tf.where(positive[..., None], slot_boxes, unit)
        )
        return {"boxes": slot_boxes, "labels": slot_labels, "valid": slot_valid, "regression_targets": targets}

    def losses(self, features, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, image_size, seed=None) -> dict:
        """``loss_classifier`` and ``loss_box_reg`` (see the class docstring)."""
        samples = self.select_training_samples(
            tf.stop_gradient(proposals), proposal_valid, gt_boxes, gt_labels, gt_valid, seed=seed
        )
        logits, deltas = self.predict(features, tf.stop_gradient(samples["boxes"]), image_size)
        return self.loss_from_predictions(logits, deltas, samples)

    def loss_from_predictions(self, logits, deltas, samples) -> dict:
        labels = samples["labels"]
        valid = tf.cast(samples["valid"], tf.float32)
        num_samples = tf.maximum(tf.reduce_sum(valid), 1.0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        loss_classifier = tf.reduce_sum(ce * valid) / num_samples
        shape = tf.shape(deltas)
        per_class = tf.reshape(deltas, tf.stack([shape[0], shape[1], self.num_classes, 4]))
        true_class = tf.gather(per_class, labels, batch_dims=2)
        box = tf.reduce_sum(smooth_l1(true_class - samples["regression_targets"], 1.0 / 9.0), axis=-1)
        positive = samples["valid"] & (labels > 0)
        loss_box_reg = tf.reduce_sum(tf.where(positive, box, 0.0)) / num_samples
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    # ---- inference -------------------------------------------------------------------

    def detect(self, features, proposals, proposal_valid, image_size) -> dict:
        """Detections of every image, padded to ``detections_per_img`` (K).

        Returns ``boxes`` ``[B, K, 4]``, ``scores`` ``[B, K]``, ``labels`` ``[B, K]``
        int32 and ``num_detections`` ``[B]`` int32; sorted by descending score, zeros
        beyond ``num_detections``.
        """
        if in_trainer_step():
            logits, deltas = self.predict_image_by_image(features, proposals, image_size)
        else:
            logits, deltas = self.predict(features, proposals, image_size)
        return self.postprocess_detections(logits, deltas, proposals, proposal_valid, image_size)

    def predict_image_by_image(self, features: list, boxes: tf.Tensor, image_size) -> tuple[tf.Tensor, tf.Tensor]:
        """:meth:`predict`, one image after the other (a ``tf.while_loop``): the pooled
        ``[R, P, P, C]`` features and the box head's activations of one image at a time
        instead of the batch's (8 x 1020 RoIs of 7 x 7 x 128 are 205 MB per tensor, and
        pooling holds two or three). Used by the trainer's traced steps (evaluation and
        prediction, where every proposal goes through the head); exports keep the batched
        :meth:`predict`, which converts to TFLite without a WHILE op."""
        c = self.num_classes

        def one_image(b):
            logits, deltas = self.predict([f[b : b + 1] for f in features], boxes[b : b + 1], image_size)
            return logits[0], deltas[0]

        return tf.map_fn(
            one_image,
            tf.range(tf.shape(boxes)[0]),
            fn_output_signature=(tf.TensorSpec([None, c], tf.float32), tf.TensorSpec([None, 4 * c], tf.float32)),
            parallel_iterations=1,
        )

    def postprocess_detections(self, logits, deltas, proposals, proposal_valid, image_size) -> dict:
        c = self.num_classes
        batch = tf.shape(logits)[0]
        num = tf.shape(logits)[1]
        per_class = tf.reshape(deltas, tf.stack([batch, num, c, 4]))
        boxes = self.box_coder.decode(per_class, proposals[:, :, None, :])
        boxes = clip_boxes_to_image(boxes, image_size[0], image_size[1])
        scores = tf.nn.softmax(logits, axis=-1)
        # Drop the background column; candidates are proposal-major, class-minor.
        boxes = flatten_dims(boxes[:, :, 1:, :], 1, 3)
        scores = flatten_dims(scores[:, :, 1:], 1, 3)
        labels = flatten_dims(tf.broadcast_to(tf.range(1, c, dtype=tf.int32)[None, None, :], tf.stack([batch, num, c - 1])), 1, 3)
        valid = flatten_dims(tf.broadcast_to(tf.cast(proposal_valid, tf.bool)[:, :, None], tf.stack([batch, num, c - 1])), 1, 3)
        valid = valid & (scores > self.score_thresh) & large_enough(boxes, self.min_size)
        k = self.detections_per_img
        keep, count = batched_nms(boxes, scores, labels, valid, self.nms_thresh, k)
        kept = tf.range(k)[None, :] < count[:, None]
        return {
            "boxes": tf.where(kept[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0),
            "scores": tf.where(kept, tf.gather(scores, keep, batch_dims=1), 0.0),
            "labels": tf.where(kept, tf.gather(labels, keep, batch_dims=1), 0),
            "num_detections": count,
        }

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return self.box_head.torch_params(join(prefix, "box_head")) + self.box_predictor.torch_params(
            join(prefix, "box_predictor")
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_channels": self.num_channels,
            "num_classes": self.num_classes,
            "representation_size": self.representation_size,
            "roi_output_size": self.roi_output_size,
            "sampling_ratio": self.sampling_ratio,
            "fg_iou_thresh": self.fg_iou_thresh,
            "bg_iou_thresh": self.bg_iou_thresh,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "bbox_reg_weights": list(self.bbox_reg_weights),
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "detections_per_img": self.detections_per_img,
            "min_size": self.min_size,
        }
