"""trainer.intra_op_threads / inter_op_threads: what "auto" picks, explicit values, the
environment variables, bad values, and the pools reaching TensorFlow in a real fit."""

import os
import subprocess
import sys

import pytest

from rskeras.config.errors import ConfigError
from rskeras.train.cpu_threads import has_serial_step, resolve, schedulable_cores
from rskeras.train.trainer import Trainer
from tests.training_scripts.tiny_config import write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTH = {"intra_op_threads": 1, "inter_op_threads": 2}


@pytest.fixture(autouse=True)
def no_thread_env(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)


def test_auto_is_one_thread_per_op_two_ops_when_training_on_two_cpu_cores():
    assert resolve("auto", "auto", training=True, cores=2, gpu=False) == BOTH
    assert resolve("auto", "auto", training=False, cores=2, gpu=False) == {}  # forward-only: wall time
    assert resolve("auto", "auto", training=True, cores=16, gpu=False) == {}  # not measured: TF's defaults
    assert resolve("auto", "auto", training=True, cores=1, gpu=False) == {}
    assert resolve("auto", "auto", training=True, cores=2, gpu=True) == {}
    assert resolve("auto", "auto", training=True, serial_step=True, cores=2, gpu=False) == {}  # Faster R-CNN


def test_faster_rcnn_models_have_a_serial_step():
    detection = {"class_path": "rslearn.models.singletask.SingleTaskModel", "init_args": {"decoder": [
        {"class_path": "rslearn.models.fpn.Fpn"}, {"class_path": "rslearn.models.faster_rcnn.FasterRCNN"}]}}
    assert has_serial_step(detection)
    assert has_serial_step({"init_args": {"model": detection}})
    assert not has_serial_step({"class_path": "rslearn.models.singletask.SingleTaskModel", "init_args": {"decoder": [
        {"class_path": "rslearn.models.unet.UNetDecoder"}]}})
    assert not has_serial_step(None)


def test_cores_are_the_schedulable_ones():
    if hasattr(os, "sched_getaffinity"):
        assert schedulable_cores() == len(os.sched_getaffinity(0))
    assert schedulable_cores() >= 1


def test_explicit_values_and_the_environment(monkeypatch):
    assert resolve(4, 0, training=False, cores=16, gpu=True) == {"intra_op_threads": 4}  # 0: TF's default
    assert resolve("auto", 3, training=True, cores=2, gpu=False) == {"intra_op_threads": 1, "inter_op_threads": 3}
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    assert resolve("auto", "auto", training=True, cores=2, gpu=False) == {"inter_op_threads": 2}  # env wins over auto
    assert resolve(1, "auto", training=True, cores=2, gpu=False) == BOTH  # an explicit key wins over env


@pytest.mark.parametrize("value", ["many", -1, 1.5, True])
def test_bad_values_name_the_key(value, tmp_path):
    with pytest.raises(ConfigError, match="trainer.inter_op_threads must be 'auto' or an int >= 0"):
        Trainer(default_root_dir=str(tmp_path), inter_op_threads=value)


def test_a_fit_sets_the_pools_before_tensorflow_starts(sample_dataset, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", sample_dataset, max_epochs=1, default_root_dir=str(tmp_path / "run"), logger=False)
    command = [
        sys.executable, os.path.join(ROOT, "tools", "train.py"), "fit", "--config", config,
        "--trainer.intra_op_threads", "1", "--trainer.inter_op_threads", "2",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false",
    ]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "CPU thread pools: intra_op 1, inter_op 2" in out
    assert "not applied" not in out
