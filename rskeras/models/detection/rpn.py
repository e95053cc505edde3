"""Region proposal network (torchvision ``RPNHead`` + ``RegionProposalNetwork``)."""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.detection.anchors import AnchorGenerator
from rskeras.models.detection.box_coder import BoxCoder
from rskeras.models.detection.box_ops import box_iou, clip_boxes_to_image, large_enough
from rskeras.models.detection.losses import smooth_l1
from rskeras.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from rskeras.models.detection.nms import batched_nms
from rskeras.models.detection.sampler import BalancedPositiveNegativeSampler
from rskeras.models.shapes import dim, flatten_dims, split_last
from rskeras.weights.torch_params import TorchParam, conv_params, join


class RPNHead(keras.layers.Layer):
    """Objectness logits and box deltas of every anchor, shared across levels.

    ``Conv3x3(C -> C) + ReLU`` then two 1x1 convolutions: ``C -> A`` objectness logits
    and ``C -> 4A`` deltas (channel ``4a + k`` is delta k of anchor a). Initialised
    normal(0, 0.01) with zero biases, as torchvision does.

    Args:
        num_channels: int, channels of every input map.
        num_anchors: int, anchors per location (A).

    Call: list of ``[B, H_l, W_l, C]`` -> ``(objectness, deltas)``, two lists of
    ``[B, H_l, W_l, A]`` and ``[B, H_l, W_l, 4A]``.
    """

    def __init__(self, num_channels: int, num_anchors: int, **kwargs):
        super().__init__(**kwargs)
        if num_channels <= 0 or num_anchors <= 0:
            raise ValueError(f"RPNHead: num_channels ({num_channels}) and num_anchors ({num_anchors}) must be > 0")
        self.num_channels = num_channels
        self.num_anchors = num_anchors
        init = dict(kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), bias_initializer="zeros")
        self.conv = keras.layers.Conv2D(num_channels, 3, padding="same", activation="relu", name="conv", **init)
        self.cls_logits = keras.layers.Conv2D(num_anchors, 1, name="cls_logits", **init)
        self.bbox_pred = keras.layers.Conv2D(4 * num_anchors, 1, name="bbox_pred", **init)
        self.conv.build((None, None, None, num_channels))
        self.cls_logits.build((None, None, None, num_channels))
        self.bbox_pred.build((None, None, None, num_channels))

    def call(self, features):
        objectness, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return (
            conv_params(self.conv, join(prefix, "conv.0.0"))
            + conv_params(self.cls_logits, join(prefix, "cls_logits"))
            + conv_params(self.bbox_pred, join(prefix, "bbox_pred"))
        )

    def get_config(self):
        return {**super().get_config(), "num_channels": self.num_channels, "num_anchors": self.num_anchors}


class RegionProposalNetwork(keras.layers.Layer):
    """Proposes object boxes from multi-level features and computes the RPN losses.

    Proposals (per image): decode the deltas of the ``pre_nms_top_n`` highest-objectness
    anchors of each level (box coder weights 1, 1, 1, 1), clip them to the image, drop
    boxes smaller than ``min_size`` and those whose sigmoid score is below
    ``score_thresh``, suppress per level with IoU ``nms_thresh`` and keep the
    ``post_nms_top_n`` best, sorted by score.

    Losses: anchors are matched to ground truth (IoU >= ``fg_iou_thresh`` positive,
    < ``bg_iou_thresh`` negative, low-quality matches allowed); ``batch_size_per_image``
    anchors per image are sampled with ``positive_fraction`` positives;
    ``loss_objectness`` is the binary cross-entropy mean over the sampled anchors and
    ``loss_rpn_box_reg`` the smooth-L1 (beta 1/9) of positive deltas, summed, divided by
    the number of sampled anchors.

    Args:
        num_channels: int, channels of the feature maps.
        anchor_sizes: list (one per level) of lists of anchor sizes.
        aspect_ratios: list (one per level) of aspect ratios; default (0.5, 1, 2).
        fg_iou_thresh: float (0.7). bg_iou_thresh: float (0.3).
        batch_size_per_image: int (256). positive_fraction: float (0.5).
        pre_nms_top_n: int (2000), candidates per level. post_nms_top_n: int (2000).
        nms_thresh: float (0.7). score_thresh: float (0.0). min_size: float (1e-3).
    """

    def __init__(
        self,
        num_channels: int,
        anchor_sizes: list,
        aspect_ratios: list | None = None,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: int = 2000,
        post_nms_top_n: int = 2000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pre_nms_top_n <= 0 or post_nms_top_n <= 0:
            raise ValueError(
                f"RegionProposalNetwork: pre_nms_top_n ({pre_nms_top_n}) and post_nms_top_n ({post_nms_top_n}) must be > 0"
            )
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        per_location = self.anchor_generator.num_anchors_per_location()
        if len(set(per_location)) != 1:
            raise ValueError(
                f"RegionProposalNetwork: every level needs the same number of anchors per location, got {per_location}"
            )
        self.num_channels = num_channels
        self.anchor_sizes = self.anchor_generator.sizes
        self.aspect_ratios = self.anchor_generator.aspect_ratios
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.head = RPNHead(num_channels, per_location[0], name="head")
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.supports_jit = False

    # ---- forward ---------------------------------------------------------------------

    def head_outputs(self, features: list, image_size) -> dict:
        """Runs the head and builds the anchors.

        Returns a dict with ``objectness`` (list of ``[B, H_l * W_l * A]`` logits),
        ``deltas`` (list of ``[B, H_l * W_l * A, 4]``) and ``anchors`` (list of
        ``[H_l * W_l * A, 4]``), each level flattened in (H, W, A) order.
        """
        objectness, deltas = self.head(features)
        sizes = [(dim(f, 1), dim(f, 2)) for f in features]
        anchors = self.anchor_generator(sizes, image_size)
        return {
            "objectness": [flatten_dims(tf.cast(o, tf.float32), 1, 4) for o in objectness],
            "deltas": [flatten_dims(split_last(tf.cast(d, tf.float32), 4), 1, 4) for d in deltas],
            "anchors": anchors,
        }

    def propose(self, head: dict, image_size) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Proposals from the head outputs.

        Returns ``boxes`` ``[B, P, 4]``, ``scores`` ``[B, P]`` (sigmoid objectness) and
        ``valid`` ``[B, P]`` bool, sorted by descending score with the valid ones first.
        P is ``post_nms_top_n``, or the number of candidates when that is smaller and
        known statically.
        """
        boxes, logits, levels = [], [], []
        for level, (ob, de, an) in enumerate(zip(head["objectness"], head["deltas"], head["anchors"])):
            ob = tf.stop_gradient(ob)
            n = ob.shape[1]
            k = min(self.pre_nms_top_n, n) if n is not None else tf.minimum(self.pre_nms_top_n, tf.shape(ob)[1])
            top_logits, top_idx = tf.math.top_k(ob, k=k, sorted=True)
            top_deltas = tf.gather(tf.stop_gradient(de), top_idx, batch_dims=1)
            top_anchors = tf.gather(an, top_idx)
            boxes.append(self.box_coder.decode(top_deltas, top_anchors))
            logits.append(top_logits)
            levels.append(tf.fill(tf.shape(top_idx), level))
        boxes = tf.concat(boxes, axis=1)
        logits = tf.concat(logits, axis=1)
        levels = tf.concat(levels, axis=1)

        scores = tf.sigmoid(logits)
        boxes = clip_boxes_to_image(boxes, image_size[0], image_size[1])
        valid = large_enough(boxes, self.min_size) & (scores >= self.score_thresh)
        num_candidates = boxes.shape[1]
        out = self.post_nms_top_n if num_candidates is None else min(self.post_nms_top_n, num_candidates)
        keep, count = batched_nms(boxes, scores, levels, valid, self.nms_thresh, out)
        proposals = tf.gather(boxes, keep, batch_dims=1)
        proposal_scores = tf.gather(scores, keep, batch_dims=1)
        proposal_valid = tf.range(out)[None, :] < count[:, None]
        proposals = tf.where(proposal_valid[..., None], proposals, 0.0)
        proposal_scores = tf.where(proposal_valid, proposal_scores, 0.0)
        return proposals, proposal_scores, proposal_valid

    # ---- training --------------------------------------------------------------------

    def losses(self, head: dict, gt_boxes: tf.Tensor, gt_valid: tf.Tensor, seed=None) -> dict:
        """``loss_objectness`` and ``loss_rpn_box_reg``.

        Args:
            head: output of :meth:`head_outputs`.
            gt_boxes: ``[B, G, 4]`` ground-truth boxes (padded).
            gt_valid: ``[B, G]`` bool.
            seed: None (stateful sampling) or a shape-[2] int seed (stateless).
        """
        anchors = tf.concat(head["anchors"], axis=0)
        objectness = tf.concat(head["objectness"], axis=1)
        deltas = tf.concat(head["deltas"], axis=1)

        quality = box_iou(gt_boxes, anchors[None])
        matches = self.matcher(quality, gt_valid)
        labels = tf.where(matches >= 0, 1, 0)
        labels = tf.where(tf.equal(matches, BETWEEN_THRESHOLDS), -1, labels)
        labels = tf.where(tf.equal(matches, BELOW_LOW_THRESHOLD), 0, labels)
        matched = tf.gather(gt_boxes, tf.maximum(matches, 0), batch_dims=1)
        pos, neg = self.sampler(labels, seed=seed)
        targets = self.box_coder.encode(tf.where(pos[..., None], matched, anchors[None]), anchors[None])

        sampled = tf.cast(pos | neg, tf.float32)
        num_sampled = tf.maximum(tf.reduce_sum(sampled), 1.0)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels > 0, tf.float32), logits=objectness)
        loss_objectness = tf.reduce_sum(bce * sampled) / num_sampled
        box = tf.reduce_sum(smooth_l1(deltas - targets, 1.0 / 9.0), axis=-1)
        loss_box = tf.reduce_sum(tf.where(pos, box, 0.0)) / num_sampled
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return self.head.torch_params(join(prefix, "head"))

    def get_config(self):
        return {
            **super().get_config(),
            "num_channels": self.num_channels,
            "anchor_sizes": self.anchor_sizes,
            "aspect_ratios": self.aspect_ratios,
            "fg_iou_thresh": self.fg_iou_thresh,
            "bg_iou_thresh": self.bg_iou_thresh,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "pre_nms_top_n": self.pre_nms_top_n,
            "post_nms_top_n": self.post_nms_top_n,
            "nms_thresh": self.nms_thresh,
            "score_thresh": self.score_thresh,
            "min_size": self.min_size,
        }
