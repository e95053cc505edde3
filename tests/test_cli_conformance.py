"""Issue 14: what a new user trips over (one test per item; CLI tests run the real
command in a subprocess where the bug was in argument handling)."""

import logging
import os
import pathlib
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import yaml

from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import build
from rskeras.config.loader import load_config, load_yaml_text, parse_override_value
from rskeras.train.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "tools" / "train.py")
CLASSIFICATION = str(ROOT / "configs" / "classification.yaml")


def run(args, cwd, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=timeout, cwd=str(cwd), env=full_env)


# 1 -----------------------------------------------------------------------------------------


def test_fast_dev_run_runs_one_batch_and_writes_nothing(sample_dataset, tmp_path):
    done = run([TRAIN, "fit", "--config", CLASSIFICATION, "--trainer.fast_dev_run", "true"], tmp_path, {"DATASET_PATH": sample_dataset})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fast_dev_run: nothing written" in done.stdout
    assert not (tmp_path / "runs").exists()  # no checkpoints, logs, metrics, config or SavedModel


def test_fast_dev_run_overfit_batches_and_refused_keys():
    trainer = build(Trainer, {"fast_dev_run": 3, "max_epochs": 20}, "trainer")
    assert trainer.max_epochs == 1 and trainer.max_steps == 3 and trainer.num_sanity_val_steps == 0
    assert all(v == 3 for v in trainer.limits.values()) and trainer.logger is False and not trainer.backup_and_restore
    assert build(Trainer, {"fast_dev_run": True}, "trainer").fast_dev_run == 1
    overfit = build(Trainer, {"overfit_batches": 2}, "trainer")
    assert overfit.limits["train"] == 2 and overfit.limits["val"] == 2 and overfit.limits["test"] is None
    with pytest.raises(ConfigError, match=r"trainer\.overfit_batches"):
        build(Trainer, {"overfit_batches": 1.5}, "trainer")
    for key in ("sync_batchnorm", "detect_anomaly", "barebones"):
        with pytest.raises(ConfigError, match=rf"^trainer\.{key}: this Lightning Trainer argument is not supported"):
            build(Trainer, {key: True}, "trainer")


# 2, 3, 6 (print_config) ---------------------------------------------------------------------


def test_print_config_fills_defaults_parses_floats_and_takes_keras_callback_arguments(sample_dataset, tmp_path):
    args = [
        TRAIN, "fit", "--config", CLASSIFICATION, "--print_config",
        "--model.init_args.optimizer.init_args.lr", "1e-4",
        "--trainer.callbacks.1", "{class_path: keras.callbacks.EarlyStopping, init_args: {monitor: val_loss, patience: 3}}",
    ]
    done = run(args, tmp_path, {"DATASET_PATH": sample_dataset})
    assert done.returncode == 0, done.stderr[-3000:]
    printed = yaml.safe_load(done.stdout)
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4)
    # defaults filled in: the data module's, the task's, the trainer's
    assert printed["data"]["init_args"]["num_workers"] == 0
    assert printed["data"]["init_args"]["task"]["init_args"]["allow_invalid"] is False
    assert printed["trainer"]["max_steps"] == -1
    early = printed["trainer"]["callbacks"][1]
    assert early["class_path"] == "keras.callbacks.EarlyStopping" and early["init_args"]["patience"] == 3
    assert early["init_args"]["min_delta"] == 0  # the Keras class's own default
    assert not (tmp_path / "runs").exists()  # nothing built or written


def test_print_config_validates_a_misspelled_key(tmp_path):
    done = run([TRAIN, "fit", "--config", CLASSIFICATION, "--print_config", "--data.init_args.batch_sise", "4"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "train.py: error: data.init_args.batch_sise: unknown argument for rskeras.train.data_module.RslearnDataModule "
        "(did you mean 'batch_size'?)"
    ]
    assert done.stdout == ""


def test_keras_callback_init_args_and_float_strings_in_process():
    import keras

    trainer = build(
        Trainer,
        {"callbacks": [{"class_path": "keras.callbacks.EarlyStopping", "init_args": {"monitor": "val_accuracy", "patience": 2}}]},
        "trainer",
    )
    (early,) = trainer.callbacks
    assert isinstance(early, keras.callbacks.EarlyStopping) and early.monitor == "val_accuracy" and early.patience == 2
    assert parse_override_value("1e-4") == pytest.approx(1e-4) and isinstance(parse_override_value("1e-4"), float)
    # YAML 1.1 quirks do not decide numbers: 1:20 is not 80, 010 is 10, yes is a string
    assert load_yaml_text("a: 1e-4\nb: 1:20\nc: 010\nd: yes\n") == {"a": 1e-4, "b": "1:20", "c": 10, "d": "yes"}
    from rskeras.train.optimizer import AdamW

    assert build(AdamW, {"lr": "3e-4"}, "model.init_args.optimizer.init_args").lr == pytest.approx(3e-4)


# 4 ------------------------------------------------------------------------------------------


def test_checkpoint_dirs_follow_the_root_dir_and_overwrites_are_announced(tmp_path, caplog):
    for path in (ROOT / "configs").glob("*.yaml"):
        assert "dirpath: runs/" not in path.read_text(), path.name
    from rskeras.train.callbacks.checkpointing import BestLastCheckpoint

    trainer = build(
        Trainer,
        {"default_root_dir": str(tmp_path / "run2"), "callbacks": [{"class_path": "rslearn.train.callbacks.checkpointing.BestLastCheckpoint"}]},
        "trainer",
    )
    trainer._prepare_callbacks()
    (callback,) = [c for c in trainer.callbacks if isinstance(c, BestLastCheckpoint)]
    assert callback.dirpath == str(tmp_path / "run2" / "checkpoints")
    os.makedirs(callback.dirpath)
    open(os.path.join(callback.dirpath, "best.weights.h5"), "w").close()
    with caplog.at_level(logging.WARNING):
        assert trainer.warn_about_existing_checkpoints(None) == [os.path.join(callback.dirpath, "best.weights.h5")]
    assert "already holds best.weights.h5" in caplog.text and "will overwrite" in caplog.text
    # resuming from a checkpoint of that directory continues the same run: no warning
    assert trainer.warn_about_existing_checkpoints(os.path.join(callback.dirpath, "best.weights.h5")) == []


# 5 ------------------------------------------------------------------------------------------


def test_console_entry_point_and_python_m(tmp_path):
    setup = (ROOT / "setup.py").read_text()
    assert '"rskeras = rskeras.commands:main"' in setup
    done = run(["-m", "rskeras", "--help"], tmp_path)
    assert done.returncode == 0
    for command in ("fit", "validate", "test", "predict", "export", "predict-tflite", "convert-weights", "benchmark"):
        assert command in done.stdout
    done = run(["-m", "rskeras", "fitt"], tmp_path)
    assert done.returncode == 2 and "did you mean 'fit'" in done.stderr
    done = run(["-m", "rskeras", "convert-weights", str(tmp_path / "missing.pth"), str(tmp_path / "out.npz")], tmp_path)
    assert done.returncode == 2 and "missing.pth" in done.stderr


# 6 (help) -----------------------------------------------------------------------------------


def test_subcommand_help_and_per_class_help(tmp_path):
    done = run([TRAIN, "predict", "--help"], tmp_path)
    assert done.returncode == 0 and "predict: Run a checkpoint" in done.stdout and "--model.help CLASS" in done.stdout
    done = run([TRAIN, "fit", "--config", CLASSIFICATION, "--model.init_args.model.init_args.encoder.0.help", "rslearn.models.swin.Swin"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rslearn.models.swin.Swin (rskeras: rskeras.models.swin.Swin)" in done.stdout
    assert re.search(r"--model\.init_args\.model\.init_args\.encoder\.0\.init_args\.output_layers list\[int\] \| None\s+\(default: null\)", done.stdout)


# 7 ------------------------------------------------------------------------------------------


def test_export_refuses_quantize_for_saved_model(tmp_path):
    done = run([str(ROOT / "tools" / "export.py"), "--config", CLASSIFICATION, "--checkpoint", "x.weights.h5", "--format", "saved_model", "--quantize", "int8"], tmp_path)
    assert done.returncode == 2
    assert "--quantize int8: quantization applies to --format tflite only" in done.stderr


# 8 ------------------------------------------------------------------------------------------


def test_written_files_get_the_umask_mode(tmp_path):
    from rskeras.utils.fileio import atomic_write_bytes, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "config.yaml"), "a: 1\n")
        atomic_write_bytes(str(tmp_path / "m.tflite"), b"x")
    finally:
        os.umask(old)
    for name in ("config.yaml", "m.tflite"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# 9 ------------------------------------------------------------------------------------------


def test_missing_dataset_path_is_one_line_rc2(tmp_path):
    done = run([TRAIN, "fit", "--config", CLASSIFICATION, "--data.init_args.path", str(tmp_path / "nowhere")], tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1 and "nowhere" in lines[0] and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_graph_data_check_is_one_line_rc2(capsys, tmp_path):
    import tensorflow as tf

    from rskeras.errors import note_run_dir, report_user_errors

    def failing(argv):
        note_run_dir(str(tmp_path / "run"))

        @tf.function
        def check(x):
            tf.debugging.Assert(x > 0, ["DetectionTask: value of 'category' is not one of ['unknown', 'vessel'] (set skip_unknown_categories to skip it), window", tf.constant("train/w_03")])
            return x

        check(tf.constant(-1))
        return 0

    assert report_user_errors(failing, [], "train.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: DetectionTask: value of 'category' is not one of")
    assert "window train/w_03" in err[0] and (tmp_path / "run" / "error.log").exists()
    assert "InvalidArgumentError" in (tmp_path / "run" / "error.log").read_text()


# 10 -----------------------------------------------------------------------------------------


def test_swin_feature_mode_has_no_variables_without_gradients():
    import tensorflow as tf

    from rskeras.models.swin import Swin

    swin = Swin(arch="swin_v2_t", input_channels=4, output_layers=[1, 3, 5, 7], embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=[4, 4])
    trainable = {id(v) for v in swin.trainable_variables}
    unused = swin.model.norm.weights + swin.model.head.weights
    assert unused and not any(id(v) in trainable for v in unused)
    x = tf.random.normal([1, 32, 32, 4])
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(f) for f in swin({"image": x}))
    grads = tape.gradient(loss, swin.trainable_variables)
    assert all(g is not None for g in grads)
    assert len(swin.weights) == len(Swin(arch="swin_v2_t", input_channels=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=[4, 4]).weights)


# 11 -----------------------------------------------------------------------------------------


def test_quickstart_config_writes_predictions():
    config = load_config([CLASSIFICATION])
    writers = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("prediction_writer.RslearnWriter")]
    assert writers and writers[0]["init_args"]["output_layer"] == "output_classification"


# 13 -----------------------------------------------------------------------------------------


def test_predict_tflite_names_a_saved_model_directory(tmp_path):
    saved = tmp_path / "saved_model"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    done = run([str(ROOT / "tools" / "predict_tflite.py"), "--model", str(saved), "--input", "x.tif", "--output", "y.tif"], tmp_path)
    assert done.returncode == 2
    assert "is a SavedModel directory, not a .tflite file" in done.stderr and "Mmap" not in done.stderr


# 14 -----------------------------------------------------------------------------------------


def test_tensorboard_tags_are_the_logged_names(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rskeras.train.loggers import TensorBoardLogger

    trainer = Trainer(default_root_dir=str(tmp_path))
    (writer,) = TensorBoardLogger(save_dir=str(tmp_path)).callbacks(trainer)
    writer.on_train_begin()
    writer.on_epoch_end(0, {"train_loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.7, "lr": 0.002})
    writer.on_train_end()
    events = EventAccumulator(writer.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert set(events.Tags()["tensors"]) == {"train_loss", "val_loss", "val_accuracy", "lr", "epoch"}
    assert not (pathlib.Path(writer.log_dir) / "validation").exists()


# 15 -----------------------------------------------------------------------------------------


def test_no_progress_bar_into_a_log_and_native_notice_once(monkeypatch):
    import io

    from rskeras.utils.tf_import import dedupe_native_log

    trainer = Trainer()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert trainer.progress_bar() is False
    notice = "port.cc:153] oneDNN custom operations are on."
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        f"I0000 00:00:1.1 11 {notice}\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        f"I0000 00:00:2.2 11 {notice}\n"
    )
    assert dedupe_native_log(text) == f"I0000 00:00:1.1 11 {notice}\n"
    assert dedupe_native_log(text, min_level=2) == ""  # TF_CPP_MIN_LOG_LEVEL=2, as the commands set it


def test_weights_files_and_scene_transforms_raise_no_deprecation_warnings(tmp_path):
    import warnings

    import keras
    from affine import Affine

    from rskeras.keras_compat import save_weights_file

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_weights_file(model, str(tmp_path / "m.weights.h5"))
        _ = Affine.translation(1, 2) @ Affine.scale(2)
    source = (ROOT / "rskeras" / "export" / "sliding_window.py").read_text()
    assert "transform * Affine" not in source


# 16 -----------------------------------------------------------------------------------------


def test_docs_quote_the_example_config_values():
    config = load_config([CLASSIFICATION])
    lr = config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    epochs = config["trainer"]["max_epochs"]
    text = (ROOT / "docs" / "deployment.md").read_text()
    quoted = re.search(r"example config's `lr ([0-9.]+)` / (\d+) epochs", text)
    assert quoted and float(quoted.group(1)) == lr and int(quoted.group(2)) == epochs
    readme = (ROOT / "README.md").read_text()
    assert "load average" in readme  # README times say how and where they were measured


def test_after_the_error_line_other_threads_log_nothing(capsys):
    """A warning another thread (an input pipeline still reading) logs after a command's
    error is dropped, so the error stays the last line; the next command logs as before."""
    import logging
    import threading

    from rskeras.config.errors import ConfigError
    from rskeras.errors import report_user_errors

    handler = logging.StreamHandler()  # writes to the captured stderr
    root = logging.getLogger()
    root.addHandler(handler)
    log = logging.getLogger("rskeras.test_thread")

    def warn_from_thread(text):
        t = threading.Thread(target=lambda: log.warning(text))
        t.start()
        t.join()

    def failing(argv):
        raise ConfigError("bad key model.x")

    try:
        assert report_user_errors(failing, [], "train.py") == 2
        warn_from_thread("late warning of the failed command")
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == "train.py: error: bad key model.x"
        assert report_user_errors(lambda argv: warn_from_thread("next command's warning") or 0, [], "train.py") == 0
        assert "next command's warning" in capsys.readouterr().err
    finally:
        root.removeHandler(handler)
