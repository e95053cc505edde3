"""Faster R-CNN predictor (rslearn ``rslearn.models.faster_rcnn.FasterRCNN``).

rslearn wraps torchvision's RegionProposalNetwork and RoIHeads; rskeras reimplements
both in TensorFlow (``rskeras.models.detection``) with batched, fixed-size tensors so that
the model runs in graph mode, under tf.distribute, and exports to TFLite builtins.
"""

from __future__ import annotations

import tensorflow as tf

from rskeras.models.component import Predictor, model_output, require_feature_maps
from rskeras.models.detection.roi_heads import RoIHeads
from rskeras.models.detection.rpn import RegionProposalNetwork
from rskeras.models.shapes import dim
from rskeras.weights.torch_params import TorchParam, join

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")



def padded_image_size(image: tf.Tensor, size_divisible: int = 32) -> tuple:
    """``(height, width)`` of the image batch rounded up to a multiple of
    ``size_divisible`` (rslearn pads the batch so and uses that size for every image).

    ``image`` is ``[B, T, H, W, C]`` (or ``[B, H, W, C]``); ints when static."""
    if len(image.shape) not in (4, 5):
        raise ValueError(f"FasterRCNN: input 'image' must be [B, T, H, W, C], got shape {tuple(image.shape)}")
    axis = len(image.shape) - 3
    sizes = []
    for a in (axis, axis + 1):
        s = dim(image, a)
        sizes.append((s + size_divisible - 1) // size_divisible * size_divisible)
    return tuple(sizes)


class FasterRCNN(Predictor):
    """Two-stage detector head on multi-scale features (Faster R-CNN with FPN-style
    level assignment; Ren et al. 2015, Lin et al. 2017), torchvision semantics.

    Args:
        downsample_factors: list of ints, one per input feature map (only the count is
            used, as in rslearn).
        num_channels: int, channels of every feature map.
        num_classes: int, number of classes **including** the background class 0.
        anchor_sizes: list (one per feature map) of lists of anchor sizes in pixels,
            e.g. ``[[32], [64], [128], [256]]``; aspect ratios are (0.5, 1, 2).
        instance_segmentation: bool (False); Mask R-CNN is not implemented in rskeras.
        box_score_thresh: float (0.05); detections need a score strictly above it.
        max_detections: int (100), detections per image (K, the padded output size).
        rpn_pre_nms_top_n: int (2000), proposal candidates per level.
        rpn_post_nms_top_n: int (2000), proposals per image.
        rpn_nms_thresh: float (0.7). box_nms_thresh: float (0.5).
        rpn_batch_size_per_image: int (256). box_batch_size_per_image: int (512).
        size_divisible: int (32), the image padding multiple.
        eval_losses: bool (True): with targets and ``training=False`` also compute the
            four losses (rslearn returns none in evaluation, so its val_loss is 0); the
            samplers then use a fixed seed so validation losses are reproducible.
        eval_sample_seed: int (0), that seed.
        detections_in_training: bool (False): with ``training=True`` the outputs are
            all-zero placeholders (torchvision returns no detections in training);
            True runs the detection post-processing as well.

    Call: ``intermediates`` FeatureMaps (list of ``[B, H_l, W_l, C]``, as many as
    ``anchor_sizes``), ``context["image"]`` ``[B, T, H, W, C]`` (only its size is used),
    ``targets`` optional dict ``{"boxes": [B, N, 4] float32 xyxy pixels, "labels": [B, N]
    int (-1 = padding)}``. Returns ``{"outputs": {"boxes": [B, K, 4], "scores": [B, K],
    "labels": [B, K] int32, "num_detections": [B] int32}, "loss_dict": {...}}``;
    detections are sorted by descending score and zero beyond ``num_detections``.
    """

    # The train step's proposal sampling, NMS and RoIAlign gathers are long serial
    # stretches: trainer.intra_op_threads "auto" keeps TensorFlow's pools for this model
    # (rskeras.train.cpu_threads).
    serial_train_step = True

    def __init__(
        self,
        downsample_factors: list[int],
        num_channels: int,
        num_classes: int,
        anchor_sizes: list[list[int]],
        instance_segmentation: bool = False,
        box_score_thresh: float = 0.05,
        max_detections: int = 100,
        rpn_pre_nms_top_n: int = 2000,
        rpn_post_nms_top_n: int = 2000,
        rpn_nms_thresh: float = 0.7,
        box_nms_thresh: float = 0.5,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        size_divisible: int = 32,
        eval_losses: bool = True,
        eval_sample_seed: int = 0,
        detections_in_training: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if instance_segmentation:
            raise NotImplementedError(
                "FasterRCNN: instance_segmentation=True (Mask R-CNN) is not implemented in rskeras; "
                "use instance_segmentation=False"
            )
        if len(downsample_factors) != len(anchor_sizes):
            raise ValueError(
                f"FasterRCNN: {len(downsample_factors)} downsample_factors but {len(anchor_sizes)} anchor_sizes; "
                "give one anchor size list per feature map"
            )
        if num_classes < 2:
            raise ValueError(f"FasterRCNN: num_classes ({num_classes}) must count the background class 0 and at least one class")
        if num_channels <= 0:
            raise ValueError(f"FasterRCNN: num_channels must be > 0, got {num_channels}")
        if size_divisible <= 0:
            raise ValueError(f"FasterRCNN: size_divisible must be > 0, got {size_divisible}")
        self.downsample_factors = list(downsample_factors)
        self.num_channels = num_channels
        self.num_classes = num_classes
        self.anchor_sizes = [list(s) for s in anchor_sizes]
        self.instance_segmentation = instance_segmentation
        self.box_score_thresh = box_score_thresh
        self.max_detections = max_detections
        self.rpn_pre_nms_top_n = rpn_pre_nms_top_n
        self.rpn_post_nms_top_n = rpn_post_nms_top_n
        self.rpn_nms_thresh = rpn_nms_thresh
        self.box_nms_thresh = box_nms_thresh
        self.rpn_batch_size_per_image = rpn_batch_size_per_image
        self.box_batch_size_per_image = box_batch_size_per_image
        self.size_divisible = size_divisible
        self.eval_losses = eval_losses
        self.eval_sample_seed = eval_sample_seed
        self.detections_in_training = detections_in_training
        self.rpn = RegionProposalNetwork(
            num_channels,
            self.anchor_sizes,
            batch_size_per_image=rpn_batch_size_per_image,
            pre_nms_top_n=rpn_pre_nms_top_n,
            post_nms_top_n=rpn_post_nms_top_n,
            nms_thresh=rpn_nms_thresh,
            name="rpn",
        )
        self.roi_heads = RoIHeads(
            num_channels,
            num_classes,
            batch_size_per_image=box_batch_size_per_image,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=max_detections,
            name="roi_heads",
        )
        # NMS and the samplers' top-k/scatter are not XLA-compilable.
        self.supports_jit = False
        self.built = True  # every sub-layer is built above (weights exist before a call)

    def loss_names(self) -> list[str]:
        return list(LOSS_NAMES)

    def call(self, intermediates, context=None, targets=None, training=None):
        features = require_feature_maps(intermediates, "FasterRCNN")
        if len(features) != len(self.anchor_sizes):
            raise ValueError(
                f"FasterRCNN: got {len(features)} feature maps but anchor_sizes has {len(self.anchor_sizes)} levels"
            )
        if context is None or "image" not in context:
            raise ValueError("FasterRCNN: the context must contain the input 'image' (its size sets anchors and clipping)")
        features = [tf.cast(f, tf.float32) for f in features]
        image_size = padded_image_size(context["image"], self.size_divisible)
        training = bool(training)

        head = self.rpn.head_outputs(features, image_size)
        proposals, _, proposal_valid = self.rpn.propose(head, image_size)

        losses = {}
        if targets is not None and (training or self.eval_losses):
            gt_boxes, gt_labels, gt_valid = self._ground_truth(targets)
            seed = None if training else tf.constant([self.eval_sample_seed, 0], tf.int32)
            roi_seed = None if seed is None else seed + tf.constant([0, 1], tf.int32)
            losses.update(self.rpn.losses(head, gt_boxes, gt_valid, seed=seed))
            losses.update(
                self.roi_heads.losses(features, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, image_size, seed=roi_seed)
            )

        if training and not self.detections_in_training:
            outputs = self._empty_detections(tf.shape(features[0])[0])
        else:
            outputs = self.roi_heads.detect(features, proposals, proposal_valid, image_size)
        return model_output(outputs, losses)

    @staticmethod
    def _ground_truth(targets: dict):
        """Padded ground truth ``(boxes [B, G, 4], labels [B, G], valid [B, G])`` with one
        extra padding slot, so that a batch without any box (N = 0) still has a
        ground-truth axis."""
        boxes = tf.cast(targets["boxes"], tf.float32)
        labels = tf.cast(targets["labels"], tf.int32)
        # Explicit sizes (no -1): a replica may receive an empty batch under tf.distribute.
        batch = tf.shape(labels)[0]
        count = tf.shape(labels)[1]
        boxes = tf.concat([tf.reshape(boxes, tf.stack([batch, count, 4])), tf.zeros(tf.stack([batch, 1, 4]))], axis=1)
        labels = tf.concat([labels, -tf.ones(tf.stack([batch, 1]), tf.int32)], axis=1)
        # Boxes without area cannot be regressed to (log 0); torchvision would return
        # non-finite losses, rskeras ignores them like padding.
        has_area = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return boxes, labels, (labels >= 0) & has_area

    def _empty_detections(self, batch) -> dict:
        k = self.max_detections
        return {
            "boxes": tf.zeros(tf.stack([batch, k, 4])),
            "scores": tf.zeros(tf.stack([batch, k])),
            "labels": tf.zeros(tf.stack([batch, k]), tf.int32),
            "num_detections": tf.zeros(tf.stack([batch]), tf.int32),
        }

    def torch_params(self, prefix: str) -> list[TorchParam]:
        """Keys of rslearn's FasterRCNN module (``rpn.head.*``, ``roi_heads.box_head.*``,
        ``roi_heads.box_predictor.*``; ``noop_transform`` has no tensors). fc6's kernel is
        reordered from torch's (C, H, W) flattening to NHWC's (H, W, C)."""
        return self.rpn.torch_params(join(prefix, "rpn")) + self.roi_heads.torch_params(join(prefix, "roi_heads"))

    def get_config(self):
        return {
            **super().get_config(),
            "downsample_factors": self.downsample_factors,
            "num_channels": self.num_channels,
            "num_classes": self.num_classes,
            "anchor_sizes": self.anchor_sizes,
            "instance_segmentation": self.instance_segmentation,
            "box_score_thresh": self.box_score_thresh,
            "max_detections": self.max_detections,
            "rpn_pre_nms_top_n": self.rpn_pre_nms_top_n,
            "rpn_post_nms_top_n": self.rpn_post_nms_top_n,
            "rpn_nms_thresh": self.rpn_nms_thresh,
            "box_nms_thresh": self.box_nms_thresh,
            "rpn_batch_size_per_image": self.rpn_batch_size_per_image,
            "box_batch_size_per_image": self.box_batch_size_per_image,
            "size_divisible": self.size_divisible,
            "eval_losses": self.eval_losses,
            "eval_sample_seed": self.eval_sample_seed,
            "detections_in_training": self.detections_in_training,
        }
