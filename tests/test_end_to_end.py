"""End to end: fit through the CLI, export a SavedModel, reload it and predict."""

import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

from rskeras import lightning_cli
from rskeras.config.loader import load_config
from rskeras.run import build_run

CONFIG = """
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
          - class_path: rslearn.models.pooling_decoder.PoolingDecoder
            init_args: {in_channels: 16, out_channels: 4}
          - class_path: rslearn.train.tasks.classification.ClassificationHead
    optimizer:
      class_path: rslearn.train.optimizer.AdamW
      init_args: {lr: 0.01}
data:
  class_path: rslearn.train.data_module.RslearnDataModule
  init_args:
    path: PATH
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
    train_config: {groups: [default], tags: {split: train}}
    val_config: {groups: [default], tags: {split: val}}
    test_config: {groups: [default], tags: {split: test}}
trainer:
  max_epochs: 2
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: rslearn.train.callbacks.checkpointing.BestLastCheckpoint
      init_args: {dirpath: ROOT/checkpoints, monitor: val_accuracy, mode: max}
"""


@pytest.fixture(scope="module")
def trained_run(sample_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = root / "cfg.yaml"
    cfg.write_text(CONFIG.replace("PATH", sample_dataset).replace("ROOT", str(root)))
    code = lightning_cli.main(["fit", "--config", str(cfg), "--trainer.default_root_dir", str(root)])
    assert code == 0
    return root, cfg


def test_fit_writes_checkpoints_metrics_and_saved_model(trained_run):
    root, _ = trained_run
    for name in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "metrics.csv", "metrics.json", "config.yaml", "saved_model/saved_model.pb"):
        assert os.path.exists(root / name), name
    rows = yaml.safe_load((root / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"train_loss", "train_cls", "val_loss", "val_cls", "val_accuracy"} <= set(rows[-1])


def test_saved_model_matches_keras(trained_run, sample_dataset):
    root, cfg = trained_run
    config = load_config([str(cfg)], [("trainer.default_root_dir", str(root / "reload"))])
    run = build_run(config, "test")
    run.lm.load_weights(str(root / "checkpoints" / "best.weights.h5"))
    inputs, _ = next(iter(run.data.tf_dataset("test")))
    keras_out = run.lm.inference_model(run.input_specs)(inputs)
    served = tf.saved_model.load(str(root / "saved_model")).signatures["serving_default"]
    # The exported model takes the raw bands (NHWC) and normalizes them itself.
    from rskeras.export.examples import raw_examples
    from rskeras.export.preprocessing import RawInput

    raw = [e["image"][0] for e in raw_examples(run.data, "test", [RawInput("image", ())], limit=len(inputs["image"]))]
    out = served(image=tf.constant(np.stack(raw)))
    assert set(out) == {"probabilities", "class_ids"}
    np.testing.assert_allclose(out["probabilities"].numpy(), keras_out["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), np.argmax(keras_out["probabilities"].numpy(), -1))


def test_validate_and_test_subcommands(trained_run, capsys):
    root, cfg = trained_run
    metrics_file = root / "test_metrics.json"
    code = lightning_cli.main(
        ["test", "--config", str(cfg), "--ckpt_path", str(root / "checkpoints" / "best.weights.h5"),
         "--model.init_args.metrics_file", str(metrics_file), "--trainer.default_root_dir", str(root / "t")]
    )
    assert code == 0
    content = yaml.safe_load(metrics_file.read_text())
    assert "test_accuracy" in content and content["_checkpoint_path"].endswith("best.weights.h5")
    assert "test_accuracy" in capsys.readouterr().out


def test_config_error_exit_code(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CONFIG.replace("PATH", str(tmp_path)).replace("ClassificationTask", "ClasificationTask"))
    assert lightning_cli.main(["fit", "--config", str(cfg)]) == 2
    assert "data.init_args.task.class_path: unknown class" in capsys.readouterr().err
