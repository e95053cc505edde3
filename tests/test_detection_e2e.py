"""Detection end to end: SimpleCNN + Fpn -> FasterRCNN with DetectionTask on the sample
dataset's vessels, through tools/train.py.

One CLI fit runs in a subprocess with two logical CPU devices (MirroredStrategy); the
other tests reuse its checkpoints and SavedModel: metrics against the real predictor's
outputs (and equal to the 2-replica values), images without boxes, TFLite parity,
prediction into the dataset, and the full-size SatlasPretrain config.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import ROOT
from rskeras import lightning_cli
from rskeras.config.loader import load_config
from rskeras.run import build_run
from tests.training_scripts.tiny_config import tiny_config
from rskeras.train.mean_ap import coco_map
from rskeras.train.tasks.detection import detection_match_counts, split_detection_batch

# box_score_thresh 0 keeps every detection, so that an undertrained model still has
# detections for the metrics, the writer and TFLite to handle; 16x16 boxes (box_size 8)
# and 16-px anchors give non-zero mAP/F1 after the short fit.
CHANGES = """
seed_everything: 0
model:
  init_args:
    model:
      init_args:
        encoder:
          - class_path: rskeras.models.simple_cnn.SimpleCNN
            init_args: {in_channels: 12, channels: [8, 16], convs_per_stage: 1}
          - class_path: rslearn.models.fpn.Fpn
            init_args: {in_channels: [8, 16], out_channels: 16}
        decoder:
          - class_path: rslearn.models.faster_rcnn.FasterRCNN
            init_args:
              downsample_factors: [2, 4]
              num_channels: 16
              num_classes: 2
              anchor_sizes: [[16], [32]]
              box_score_thresh: 0.0
              max_detections: 20
              rpn_pre_nms_top_n: 100
              rpn_post_nms_top_n: 50
              box_batch_size_per_image: 64
    optimizer:
      init_args: {lr: 0.003}
data:
  init_args:
    inputs:
      targets: {data_type: vector, layers: [objects], is_target: true}
    task:
      class_path: rslearn.train.tasks.detection.DetectionTask
      init_args:
        property_name: category
        classes: [unknown, vessel]
        box_size: 8
        enable_f1_metric: true
        enable_precision_recall: true
        f1_metric_thresholds: [[0.0, 0.1, 0.5]]
    predict_config: {groups: [predict], skip_targets: true}
trainer:
  max_epochs: 3
  logger: false
  enable_model_summary: true
  num_sanity_val_steps: 2
  callbacks:
    - class_path: rslearn.train.callbacks.checkpointing.BestLastCheckpoint
      init_args: {dirpath: ROOT/checkpoints, monitor: val_loss, mode: min}
"""
OVERRIDES = {f"data.init_args.{split}_config.groups": ["default"] for split in ("train", "val", "test")}


def config_text(dataset, root):
    """The tiny config as a small Faster R-CNN on the sample dataset's objects."""
    return yaml.safe_dump(tiny_config(dataset, CHANGES.replace("ROOT", str(root)), OVERRIDES), sort_keys=False)

WRITER_CONFIG = """
trainer:
  callbacks:
    - class_path: rslearn.train.prediction_writer.RslearnWriter
      init_args: {output_layer: output_detection}
"""

FIT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from rskeras import lightning_cli
sys.exit(lightning_cli.main(["fit", "--config", {cfg!r}, "--trainer.default_root_dir", {out!r}, "--trainer.devices", "2", "--trainer.export_saved_model", "true"]))
"""

LOSSES = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"]
METRICS = ["mAP", "F1", "precision", "recall"]


@pytest.fixture(scope="module")
def fitted(sample_dataset, tmp_path_factory):
    """(run directory, config path, CLI stdout) of a 2-replica fit through the CLI."""
    root = tmp_path_factory.mktemp("det_run")
    cfg = root / "detection.yaml"
    cfg.write_text(config_text(sample_dataset, root))
    script = FIT_SCRIPT.format(root=str(ROOT), cfg=str(cfg), out=str(root))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400, env=env, cwd=str(root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MirroredStrategy" in proc.stderr, "the fit did not use two replicas"
    return root, cfg, proc.stdout


@pytest.fixture(scope="module")
def validate_run(fitted):
    """A single-device ``validate`` Run holding the fit's best weights."""
    root, cfg, _ = fitted
    config = load_config([str(cfg)], [("trainer.default_root_dir", str(root / "validate"))])
    run = build_run(config, "val")
    run.load_checkpoint(str(root / "checkpoints" / "best.weights.h5"))
    return run


def best_row(root):
    rows = json.loads((root / "metrics.json").read_text())
    return rows, min(rows, key=lambda r: r["val_loss"])


def test_fit_through_cli_logs_losses_and_metrics(fitted):
    root, _, stdout = fitted
    rows, _ = best_row(root)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    expected = {"train_loss", "val_loss"} | {f"train_{k}" for k in LOSSES} | {f"val_{k}" for k in LOSSES}
    expected |= {f"val_{m}" for m in METRICS}
    assert expected <= set(rows[-1]), sorted(rows[-1])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # rskeras computes the detector's losses in evaluation too (rslearn logs 0).
    assert all(r["val_loss"] > 0 for r in rows)
    assert all(np.isfinite(r[k]) for r in rows for k in expected)
    for name in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "saved_model/saved_model.pb"):
        assert (root / name).exists(), name
    assert "val_mAP:" in stdout and "val_F1:" in stdout


def test_metrics_from_real_outputs_match_two_replicas(fitted, validate_run):
    """Single-device evaluation of the best weights reproduces the metrics logged by the
    2-replica fit, and the task metrics equal a direct computation on the predictor's
    padded outputs (num_detections cut, -1 labels dropped)."""
    root, _, _ = fitted
    run = validate_run
    _, best = best_row(root)
    logs = run.trainer.evaluate(run.lm, run.data, "val")
    for name in METRICS:
        assert logs[f"val_{name}"] == pytest.approx(best[f"val_{name}"], abs=1e-5), name
    arrays, images = [], []
    infer = tf.function(lambda x: run.lm.model(x, training=False)["outputs"])
    for inputs, targets in run.data.tf_dataset("val"):
        outputs = infer(inputs)
        nums = outputs["num_detections"].numpy()
        assert (nums > 0).all() and (nums <= 20).all()
        batch = [outputs["boxes"], outputs["scores"], outputs["labels"], outputs["num_detections"]]
        batch += [targets["boxes"], targets["labels"], targets["valid"]]
        arrays.append([np.asarray(t) for t in batch])
        images.extend(split_detection_batch(arrays[-1]))
    assert sum(len(im.gt_boxes) for im in images) > 0
    assert logs["val_mAP"] > 0 and logs["val_recall"] > 0, "vacuous metrics: nothing was detected"
    assert all(len(im.pred_boxes) == n for im, n in zip(images, np.concatenate([a[3] for a in arrays])))
    assert all(set(im.pred_labels.tolist()) <= {1} for im in images)
    assert logs["val_mAP"] == pytest.approx(coco_map(images), abs=1e-6)
    counts = detection_match_counts(images, 2, [0.0, 0.1, 0.5], "iou", 0.5)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    # mean over both classes, the background class 0 included (rslearn's quirk)
    assert logs["val_precision"] == pytest.approx(np.mean(precision.max(axis=1)), abs=1e-6)
    assert logs["val_recall"] == pytest.approx(np.mean(recall.max(axis=1)), abs=1e-6)


def test_batches_without_boxes(validate_run):
    """Images without boxes, and batches without any box (N = 0), train and evaluate."""
    run = validate_run
    inputs, targets = next(iter(run.data.tf_dataset("val")))
    labels = targets["labels"].numpy()
    assert (labels < 0).all(axis=1).any(), "the batch should mix images with and without boxes"
    empty = dict(targets, boxes=tf.zeros([labels.shape[0], 0, 4]), labels=tf.zeros([labels.shape[0], 0], tf.int32))
    for batch_targets in (targets, empty):
        with tf.GradientTape() as tape:
            out = run.lm.model(inputs, targets=batch_targets, training=True)
            loss = run.lm.total_loss(out["loss_dict"])
        grads = tape.gradient(loss, run.lm.trainable_variables)
        assert sorted(out["loss_dict"]) == sorted(LOSSES)
        assert np.isfinite(float(loss)) and all(np.isfinite(g.numpy()).all() for g in grads if g is not None)
        evaluated = run.lm.model(inputs, targets=batch_targets, training=False)
        assert all(np.isfinite(float(v)) for v in evaluated["loss_dict"].values())
    # without boxes there is nothing to regress
    assert float(out["loss_dict"]["loss_box_reg"]) == 0.0 and float(out["loss_dict"]["loss_rpn_box_reg"]) == 0.0
    metrics = run.lm.task.get_metrics()
    for metric in metrics.values():
        metric.update_state(evaluated["outputs"], empty)
    # no ground truth at all: torchmetrics' mAP is -1, every prediction is a false positive
    assert float(metrics["mAP"].result()) == -1.0
    assert float(metrics["precision"].result()) == 0.0


def test_saved_model_and_tflite_match_keras(fitted, validate_run):
    """The CLI's SavedModel (dynamic batch and size) converts to TFLite with builtin ops
    only; SavedModel and LiteRT match the Keras inference model."""
    from ai_edge_litert.interpreter import Interpreter

    root, _, _ = fitted
    run = validate_run
    inputs, _ = next(iter(run.data.tf_dataset("val")))
    image = inputs["image"].numpy()[:4]
    keras_out = run.lm.inference_model(run.input_specs)({"image": image})
    # The exported model takes the raw bands (NHWC) and normalizes them itself.
    from rskeras.export.examples import raw_examples
    from rskeras.export.preprocessing import RawInput

    raw = np.stack([e["image"][0] for e in raw_examples(run.data, "val", [RawInput("image", ())], limit=len(image))])
    served = tf.saved_model.load(str(root / "saved_model")).signatures["serving_default"]
    saved_out = served(image=tf.constant(raw))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert()).get_signature_runner("serving_default")
    lite_out = runner(image=raw)
    assert set(keras_out) == set(saved_out) == set(lite_out) == {"boxes", "scores", "labels", "num_detections"}
    for other in (saved_out, lite_out):
        np.testing.assert_array_equal(np.asarray(other["num_detections"]), keras_out["num_detections"].numpy())
        np.testing.assert_array_equal(np.asarray(other["labels"]), keras_out["labels"].numpy())
        np.testing.assert_allclose(np.asarray(other["scores"]), keras_out["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(other["boxes"]), keras_out["boxes"].numpy(), atol=1e-3)
    assert keras_out["num_detections"].numpy().min() > 0


@pytest.mark.parametrize("quantize", ["int8", "int8-mixed"])
def test_calibrated_tflite_converts_and_runs(validate_run, quantize):
    """Full-integer export of Faster R-CNN: every calibrated tensor is finite (padded
    proposals once gave log2(0) = -inf in the RoI level mapper and -inf NMS scores, and
    TFLite's quantizer crashed the process), and the int8 model runs."""
    from rskeras.export.cli import representative_dataset
    from rskeras.export.inference import exportable_from_run
    from rskeras.export.litert import LiteRTModel
    from rskeras.export.tflite import convert_tflite

    run = validate_run
    exportable = exportable_from_run(run, "predict", name="det")
    size = (16, 16)
    content = convert_tflite(exportable, size, quantize, representative_dataset(run.data, exportable, size, 2, max_tiles=4))
    lite = LiteRTModel(content=content)
    inputs = next(representative_dataset(run.data, exportable, size, 1, max_tiles=1)())
    out = lite(**inputs)
    assert set(out) == {"boxes", "scores", "labels", "num_detections"}
    assert all(np.isfinite(np.asarray(out[k])).all() for k in ("boxes", "scores"))


def test_predict_writes_vector_features(fitted, validate_run, sample_dataset, tmp_path):
    """``train.py predict`` writes ``output_detection``: box polygons in window pixel
    coordinates with ``score`` > score_threshold and the class name."""
    pytest.importorskip("rskeras.train.prediction_writer", reason="the prediction writer is not merged yet")
    import shutil

    from rskeras.config.instantiate import instantiate

    root, cfg, _ = fitted
    dataset = tmp_path / "ds"
    shutil.copytree(sample_dataset, dataset)
    # expected detections: the validate run's model (same weights) on the predict windows
    run = validate_run
    infer = tf.function(lambda x: run.lm.model(x, training=False)["outputs"])
    config = load_config([str(cfg)], [("data.init_args.path", str(dataset))])
    expected = {}
    for inputs, _, metadata in instantiate(config["data"], "data").tf_dataset("predict", with_metadata=True):
        outputs = infer(inputs)
        for i, name in enumerate(metadata["window_name"].numpy()):
            n = int(outputs["num_detections"][i])
            crop = metadata["crop_bounds"].numpy()[i]
            boxes = outputs["boxes"].numpy()[i, :n] + np.array([crop[0], crop[1], crop[0], crop[1]])
            expected[name.decode()] = (outputs["scores"].numpy()[i, :n], boxes)
    assert sorted(expected) == ["scene_00", "scene_01"]
    # a threshold that keeps some detections and drops others
    threshold = float(np.median(np.concatenate([scores for scores, _ in expected.values()])))
    writer = tmp_path / "writer.yaml"
    writer.write_text(WRITER_CONFIG)
    code = lightning_cli.main(
        ["predict", "--config", str(cfg), "--config", str(writer), "--ckpt_path", str(root / "checkpoints" / "best.weights.h5"),
         "--data.init_args.path", str(dataset), "--data.init_args.task.init_args.score_threshold", repr(threshold),
         "--trainer.default_root_dir", str(tmp_path / "predict_run")]
    )
    assert code == 0
    written = 0
    for name, (scores, boxes) in expected.items():
        path = dataset / "windows" / "predict" / name / "layers" / "output_detection"
        assert (path / "completed").exists()
        features = json.loads((path / "data.geojson").read_text())["features"]
        keep = scores > threshold
        assert len(features) == int(keep.sum())
        for feature, score, box in zip(features, scores[keep], boxes[keep]):
            assert feature["properties"]["category"] == "vessel"
            assert feature["properties"]["score"] == pytest.approx(float(score), abs=1e-6)
            assert feature["properties"]["score"] > threshold
            assert feature["geometry"]["type"] == "Polygon"
            coords = np.asarray(feature["geometry"]["coordinates"][0])
            np.testing.assert_allclose(coords.min(0), box[:2], atol=1e-3)
            np.testing.assert_allclose(coords.max(0), box[2:], atol=1e-3)
        written += len(features)
    assert 0 < written < sum(len(scores) for scores, _ in expected.values())


def test_satlas_detection_config_builds():
    """configs/detection_satlas.yaml (the doc's full-size example) builds; one 64x64
    forward gives padded detections and the four losses."""
    from rskeras.config.instantiate import instantiate
    from rskeras.models.faster_rcnn import FasterRCNN
    from rskeras.models.pick_features import PickFeatures
    from rskeras.models.satlaspretrain import SatlasPretrain

    config = load_config([str(ROOT / "configs" / "detection_satlas.yaml")])
    task = instantiate(config["data"]["init_args"]["task"], "data.init_args.task")
    lm = instantiate(config["model"], "model", extra={"task": task})
    model = lm.model
    assert isinstance(model.encoder[0], SatlasPretrain) and model.encoder[0].fpn is not None
    assert isinstance(model.decoder[0], PickFeatures) and list(model.decoder[0].indexes) == [1, 2, 3, 4]
    assert isinstance(model.decoder[1], FasterRCNN)
    image = np.zeros((1, 1, 64, 64, 9), np.float32)
    targets = {"boxes": np.array([[[10, 10, 30, 30]]], np.float32), "labels": np.array([[3]], np.int32), "valid": np.ones(1, np.int32)}
    out = model({"image": image}, targets=targets, training=False)
    assert {k: tuple(v.shape) for k, v in out["outputs"].items()} == {
        "boxes": (1, 100, 4),
        "scores": (1, 100),
        "labels": (1, 100),
        "num_detections": (1,),
    }
    assert sorted(out["loss_dict"]) == sorted(LOSSES)
    # SatlasPretrain Swin-v2-B + FPN + upsampling (89,599,456) + FasterRCNN (7,643,171),
    # the counts of rslearn's model; the Swin classification head (norm + 1000-class
    # Linear, 1,027,048) is kept for the state dict but not trainable (never used)
    assert sum(int(np.prod(v.shape)) for v in model.weights) == 89_599_456 + 7_643_171
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 89_599_456 + 7_643_171 - 1_027_048


def test_docs_config_matches_configs_detection_yaml():
    """docs/detection.md's end-to-end YAML shows configs/detection.yaml's model, task and
    trainer sections as they are."""
    import re

    from rskeras.config.loader import load_config

    block = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "detection.md").read_text(), re.S)[0]
    shown = yaml.safe_load(block.replace("${DATASET_PATH:-data/sample}", "data/sample"))
    actual = load_config([str(ROOT / "configs" / "detection.yaml")], [("data.init_args.path", "data/sample")])
    assert shown["model"] == actual["model"]
    assert shown["trainer"] == actual["trainer"]
    assert shown["data"]["init_args"]["task"] == actual["data"]["init_args"]["task"]
    assert shown["data"]["init_args"]["inputs"] == actual["data"]["init_args"]["inputs"]
