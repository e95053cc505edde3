"""A tiny classification config on the sample dataset, for the training tests."""

CONFIG = """
model:
  class_path: rslearn.train.lightning_module.RslearnLightningModule
  init_args:
    model:
      class_path: rslearn.models.singletask.SingleTaskModel
      init_args:
        encoder:
          - class_path: rskeras.models.simple_cnn.SimpleCNN
            init_args: {in_channels: 12, channels: [4, 8], convs_per_stage: 1}
        decoder:
          - class_path: rslearn.models.pooling_decoder.PoolingDecoder
            init_args: {in_channels: 8, out_channels: 4}
          - class_path: rslearn.train.tasks.classification.ClassificationHead
    optimizer:
      class_path: rslearn.train.optimizer.AdamW
      init_args: {lr: 0.01}
data:
  class_path: rslearn.train.data_module.RslearnDataModule
  init_args:
    path: DATASET
    batch_size: 8
    inputs:
      image:
        data_type: raster
        layers: [sentinel2]
        bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12]
        passthrough: true
      targets: {data_type: vector, layers: [label], is_target: true}
    task:
      class_path: rslearn.train.tasks.classification.ClassificationTask
      init_args: {property_name: category, classes: [water, vegetation, bare, urban]}
    default_config:
      transforms:
        - class_path: rslearn.train.transforms.normalize.Normalize
          init_args: {mean: 0, std: 3000}
    train_config: {tags: {split: train}}
    val_config: {tags: {split: val}}
    test_config: {tags: {split: test}}
trainer:
  max_epochs: 2
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
"""


def write_config(path, dataset, **trainer):
    """Writes the config with the dataset path and extra trainer keys; returns the path."""
    import yaml

    config = yaml.safe_load(CONFIG.replace("DATASET", str(dataset)))
    config["trainer"].update(trainer)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)
