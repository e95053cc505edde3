"""YAML of the tiny segmentation model (SimpleCNN + UNetDecoder) whose predictions the scale
benchmarks (tools/benchmark.py) and the prediction tests (sharding, bounded memory) write."""

TINY_SEGMENTATION_MODEL = """\
model:
  class_path: rslearn.train.lightning_module.RslearnLightningModule
  init_args:
    model:
      class_path: rslearn.models.singletask.SingleTaskModel
      init_args:
        encoder:
          - class_path: rskeras.models.simple_cnn.SimpleCNN
            init_args: {in_channels: 12, channels: [8, 16], convs_per_stage: 1}
        decoder:
          - class_path: rslearn.models.unet.UNetDecoder
            init_args: {in_channels: [[2, 8], [4, 16]], out_channels: 4}
          - class_path: rslearn.train.tasks.segmentation.SegmentationHead
"""
