"""Fault tolerance: a fit killed with SIGKILL in the middle of an epoch resumes when the
same command is run again, ends at the same epoch count, and leaves intact files."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py

from rskeras.train.callbacks.checkpointing import read_training_state
from tests.training_scripts.tiny_config import write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(path, timeout, process):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(f"training exited early with code {process.returncode}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def test_killed_fit_resumes_with_the_same_command(sample_dataset, tmp_path):
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "cfg.yaml",
        sample_dataset,
        max_epochs=2,
        default_root_dir=str(run),
        logger=False,
        callbacks=[
            {"class_path": "tests.training_scripts.slow.SlowBatches", "init_args": {"seconds": 0.25}},
            {"class_path": "rslearn.train.callbacks.checkpointing.BestLastCheckpoint", "init_args": {"dirpath": str(run / "ckpt")}},
        ],
    )
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "fit", "--config", config]
    # the slow-batch callback is the test's own class, outside the class-path allow-list
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RSKERAS_ALLOW_CLASS_PREFIX="tests.training_scripts.")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(run / "backup" / "state.weights.h5", 120, first)  # epoch 0 done and backed up
        time.sleep(0.4)  # now inside epoch 1 (each batch takes > 0.25 s)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert first.returncode == -signal.SIGKILL
    assert read_training_state(str(run / "backup" / "state.weights.h5"))["epoch"] == 0
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [0]

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "at epoch 1" in second.stdout and "resuming from" in second.stdout
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [0, 1]
    assert (run / "metrics.csv").read_text().count("\n") == 3
    assert read_training_state(str(run / "ckpt" / "last.weights.h5"))["epoch"] == 1
    for name in ("best.weights.h5", "last.weights.h5"):
        with h5py.File(run / "ckpt" / name) as f:
            assert "layers" in f and "optimizer" in f
    assert not (run / "backup").exists()  # completed: the backup is gone
    leftovers = [n for d, _, files in os.walk(run) for n in files if n.startswith(".")]
    assert leftovers == []
