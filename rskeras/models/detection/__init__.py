"""Building blocks of the two-stage detector (rskeras.models.faster_rcnn.FasterRCNN).

One concept per module, mirroring torchvision's detection package:

* ``box_ops``: box area, pairwise IoU, clipping and small-box filtering.
* ``box_coder``: encoding/decoding boxes as (dx, dy, dw, dh) deltas.
* ``anchors``: the anchor grid of every feature level.
* ``matcher``: assigning ground-truth boxes to anchors/proposals by IoU.
* ``sampler``: balanced positive/negative sampling for the losses.
* ``nms``: per-image, per-group non-maximum suppression with fixed-size outputs.
* ``roi_align``: multi-scale RoIAlign written with gathers (TFLite builtins only).
* ``rpn``: the region proposal network (head, proposal filtering, losses).
* ``roi_heads``: the box head, box predictor, RoI sampling, losses and detections.
* ``losses``: smooth-L1 (static-or-dynamic sizes: ``rskeras.models.shapes``).

All functions work on batched, fixed-size tensors: per-image variable-length sets
(ground truth, proposals, detections) are padded and carry a boolean validity mask.
"""
