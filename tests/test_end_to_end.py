"""End to end: fit through the CLI, export a SavedModel, reload it and predict."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

from rskeras import lightning_cli
from rskeras.config.loader import load_config
from rskeras.run import build_run
from tests.training_scripts.tiny_config import tiny_config

# The tiny config, wider, on the default group, keeping its best checkpoint.
CHANGES = """
trainer:
  logger: false
  enable_model_summary: true
  num_sanity_val_steps: 2
  callbacks:
    - class_path: rslearn.train.callbacks.checkpointing.BestLastCheckpoint
      init_args: {dirpath: ROOT/checkpoints, monitor: val_accuracy, mode: max}
"""
OVERRIDES = {
    "model.init_args.model.init_args.encoder.0.init_args.channels": [8, 16],
    "model.init_args.model.init_args.decoder.0.init_args.in_channels": 16,
    **{f"data.init_args.{split}_config.groups": ["default"] for split in ("train", "val", "test")},
}


def config_text(dataset, root, **overrides):
    return yaml.safe_dump(tiny_config(dataset, CHANGES.replace("ROOT", str(root)), {**OVERRIDES, **overrides}), sort_keys=False)


@pytest.fixture(scope="module")
def trained_run(sample_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = root / "cfg.yaml"
    cfg.write_text(config_text(sample_dataset, root))
    code = lightning_cli.main(["fit", "--config", str(cfg), "--trainer.default_root_dir", str(root), "--trainer.export_saved_model", "true"])
    assert code == 0
    return root, cfg


def test_fit_writes_checkpoints_metrics_and_saved_model(trained_run):
    root, _ = trained_run
    for name in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "metrics.csv", "metrics.json", "config.yaml", "saved_model/saved_model.pb"):
        assert os.path.exists(root / name), name
    rows = yaml.safe_load((root / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"train_loss", "train_cls", "val_loss", "val_cls", "val_accuracy"} <= set(rows[-1])


def test_fit_writes_its_time_by_phase(trained_run):
    """timings.json: every phase of this fit (2 epochs, a sanity check, a best checkpoint,
    an export) with wall and CPU seconds; the first train step (the trace) is timed apart
    from the others, and the train steps cover both epochs."""
    root, _ = trained_run
    timings = json.loads((root / "timings.json").read_text())
    phases = timings["phases"]
    assert list(phases) == [
        "startup",
        "setup",
        "sanity_validation",
        "train_first_step",
        "train_other_steps",
        "validation_first",
        "validation_other",
        "epoch_end",
        "after_fit",
        "best_checkpoint",
        "export",
    ]
    for name, entry in phases.items():
        assert entry["wall_s"] >= 0 and entry["cpu_s"] >= 0, name
    assert phases["startup"]["wall_s"] > 0 and phases["export"]["wall_s"] > 0
    assert timings["total"]["wall_s"] == pytest.approx(sum(e["wall_s"] for e in phases.values()), abs=0.01)


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


def test_best_epoch_logged_metrics_are_those_of_the_best_checkpoint(trained_run):
    """fit prints the val metrics it logged for the best checkpoint's epoch instead of
    validating again: a fresh validation of that checkpoint gives the same numbers."""
    root, cfg = trained_run
    config = load_config([str(cfg)], [("trainer.default_root_dir", str(root / "revalidate"))])
    run = build_run(config, "val")
    best = str(root / "checkpoints" / "best.weights.h5")
    run.load_checkpoint(best)
    fresh = run.trainer.evaluate(run.lm, run.data, "val")
    from rskeras.train.callbacks.checkpointing import read_training_state

    epoch = read_training_state(best)["epoch"]
    row = next(r for r in yaml.safe_load((root / "metrics.json").read_text()) if r["epoch"] == epoch)
    logged = {k: v for k, v in row.items() if k.startswith("val_")}
    assert set(logged) == set(fresh)
    for key in fresh:
        assert abs(logged[key] - fresh[key]) <= 1e-6 * max(1.0, abs(fresh[key])), key


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
    cfg.write_text(config_text(tmp_path, tmp_path, **{"data.init_args.task.class_path": "rslearn.train.tasks.classification.ClasificationTask"}))
    assert lightning_cli.main(["fit", "--config", str(cfg)]) == 2
    assert "data.init_args.task.class_path: unknown class" in capsys.readouterr().err
