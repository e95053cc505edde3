"""tools/export.py end to end on the sample dataset: SavedModel (checked with
saved_model_cli), int8 TFLite calibrated on the train split, and the --check report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from rskeras.config.loader import load_config
from rskeras.export import cli
from rskeras.run import build_run
from tests.training_scripts.tiny_config import tiny_config

# The tiny config as a segmentation model with a predict split written by RslearnWriter.
CHANGES = """
model:
  init_args:
    optimizer: null
    model:
      init_args:
        decoder:
          - class_path: rslearn.models.unet.UNetDecoder
            init_args: {in_channels: [[2, 8], [4, 16]], out_channels: 4}
          - class_path: rslearn.train.tasks.segmentation.SegmentationHead
data:
  init_args:
    batch_size: 4
    inputs:
      targets: {data_type: raster, layers: [landcover], bands: [class], dtype: INT32, is_target: true}
    task:
      class_path: rslearn.train.tasks.segmentation.SegmentationTask
      init_args: {num_classes: 4, nodata_value: 255, class_names: [water, vegetation, bare, urban]}
    default_config:
      transforms:
        - class_path: rslearn.train.transforms.normalize.Normalize
          init_args: {mean: 0, std: 3000, valid_range: [0, 2]}
    predict_config: {groups: [predict], skip_targets: true, load_all_crops: true, crop_size: 32, overlap_pixels: 8}
trainer:
  logger: false
  callbacks:
    - class_path: rslearn.train.prediction_writer.RslearnWriter
      init_args:
        output_layer: output_segmentation
        output_path: OUT
        merger: {class_path: rslearn.train.prediction_writer.RasterMerger, init_args: {overlap_pixels: 8}}
"""
OVERRIDES = {
    "model.init_args.model.init_args.encoder.0.init_args.channels": [8, 16],
    **{f"data.init_args.{split}_config.groups": ["default"] for split in ("train", "val", "test")},
}


def config_text(dataset, out):
    return yaml.safe_dump(tiny_config(dataset, CHANGES.replace("OUT", str(out)), OVERRIDES), sort_keys=False)


@pytest.fixture(scope="module")
def setup(sample_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_cli")
    cfg = root / "seg.yaml"
    cfg.write_text(config_text(sample_dataset, root / "predicted"))
    run = build_run(load_config([str(cfg)], [("trainer.default_root_dir", str(root / "run"))]), "predict")
    ckpt = root / "seg.weights.h5"
    from rskeras.train.callbacks.checkpointing import save_training_checkpoint

    save_training_checkpoint(run.lm, str(ckpt))  # (Keras' own save_weights warns once per variable)
    return root, cfg, ckpt


def test_help_without_tensorflow():
    script = (
        "import runpy, sys\n"
        "sys.argv = ['export.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'tools' / 'export.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--quantize {none,float16,dynamic,int8,int8-mixed}" in done.stdout and "--check N" in done.stdout


def test_saved_model_export_and_saved_model_cli(setup, capsys):
    root, cfg, ckpt = setup
    out = root / "models" / "seg" / "1"
    args = ["--config", str(cfg), "--checkpoint", str(ckpt), "--format", "saved_model", "--output", str(out), "--trainer.default_root_dir", str(root / "run")]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "image: float32 [B, H, W, 12] bands B01, B02" in printed and "Normalize (data.init_args.default_config.transforms[0])" in printed
    shown = subprocess.run(["saved_model_cli", "show", "--dir", str(out), "--all"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "signature_def['serving_default']" in text and "signature_def['raw_outputs']" in text
    for expected in ("inputs['image']", "shape: (-1, -1, -1, 12)", "outputs['class_ids']", "outputs['probabilities']", "DT_INT32"):
        assert expected in text, expected
    with open(out / "assets.extra" / "rskeras_export.json") as f:
        description = json.load(f)
    assert description["task"]["class_names"] == ["water", "vegetation", "bare", "urban"]
    assert description["inputs"][0]["bands"][0] == "B01"


def test_int8_tflite_export_with_parity_report(setup, capsys):
    root, cfg, ckpt = setup
    out = root / "seg_int8.tflite"
    report = root / "report.json"
    args = [
        "--config", str(cfg), "--checkpoint", str(ckpt), "--format", "tflite", "--quantize", "int8", "--output", str(out),
        "--check", "3", "--check-variants", "none", "int8", "--calibration-examples", "4", "--report-json", str(report),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "TFLite model written to" in printed and "[1, 32, 32, 12]" in printed  # the predict crop size
    assert "parity on 3 examples" in printed and "tflite_int8" in printed
    rows = {r["name"]: r for r in json.loads(report.read_text())["results"]}
    assert list(rows) == ["keras", "saved_model", "tflite_none", "tflite_int8"]
    assert rows["saved_model"]["max_abs_diff"] <= 1e-5 and rows["saved_model"]["ok"]
    assert rows["tflite_none"]["max_abs_diff"] <= 1e-4 and rows["tflite_none"]["ok"]
    assert rows["tflite_int8"]["size_bytes"] == os.path.getsize(out)
    assert rows["tflite_int8"]["size_ratio"] < 1  # tiny model: flatbuffer overhead dominates
    description = json.loads((root / "seg_int8.tflite.json").read_text())
    assert description["quantize"] == "int8" and description["input_size"] == [32, 32]


def test_errors_exit_with_a_message(setup, capsys):
    root, cfg, ckpt = setup
    assert cli.main(["--config", str(cfg), "--checkpoint", str(root / "missing.weights.h5")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_a_converter_crash_is_one_line_and_writes_nothing(setup, capsys, monkeypatch):
    """The converter runs in a child process: one that aborts (as TFLite's C++ quantizer can)
    leaves the command alive to report it in one line, exit 2, with no output file."""
    from rskeras.export import tflite_worker

    monkeypatch.setattr(tflite_worker, "WORKER_COMMAND", [sys.executable, "-c", "import os; print('Check failed: scale'); os.abort()"])
    root, cfg, ckpt = setup
    out = root / "crash.tflite"
    args = ["--config", str(cfg), "--checkpoint", str(ckpt), "--format", "tflite", "--quantize", "int8", "--output", str(out), "--calibration-examples", "2"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TFLite converter crashed (SIGABRT)" in err[0] and "Check failed: scale" in err[0], err
    assert not out.exists() and not os.path.exists(str(out) + ".json")


def test_edge_prediction_equals_train_py_predict(setup, sample_dataset):
    """tools/predict_tflite.py's path (fp32 TFLite, sliding windows, RasterMerger) writes the
    class maps that train.py predict + RslearnWriter write, with the same georeference."""
    import rasterio

    from rskeras import lightning_cli
    from rskeras.config.dataset import band_set_dir_name
    from rskeras.export.litert import LiteRTModel
    from rskeras.export.sliding_window import predict_scene, read_scene

    root, cfg, ckpt = setup
    assert lightning_cli.main(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(root / "run")]) == 0
    model_path = root / "seg.tflite"
    args = ["--config", str(cfg), "--checkpoint", str(ckpt), "--format", "tflite", "--output", str(model_path), "--trainer.default_root_dir", str(root / "run")]
    assert cli.main(args) == 0
    model = LiteRTModel(str(model_path))
    bands = band_set_dir_name(model.description["inputs"][0]["bands"])
    windows = sorted(os.listdir(os.path.join(sample_dataset, "windows", "predict")))
    assert windows
    for name in windows:
        scene = read_scene({"image": os.path.join(sample_dataset, "windows", "predict", name, "layers", "sentinel2", bands, "geotiff.tif")})
        edge = predict_scene(model, scene, overlap_pixels=8)[""]
        written = root / "predicted" / "windows" / "predict" / name / "layers" / "output_segmentation" / "class" / "geotiff.tif"
        with rasterio.open(written) as src:
            np.testing.assert_array_equal(edge.raster, src.read(), err_msg=name)
            assert edge.transform == src.transform and scene.crs == src.crs
