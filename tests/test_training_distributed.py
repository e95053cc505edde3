"""Data-parallel training: MirroredStrategy over 2 logical CPU devices equals one replica,
and two MultiWorkerMirroredStrategy workers on loopback ports end with identical weights."""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np

from tests.training_scripts.tiny_config import write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def test_mirrored_two_replicas_match_one_replica():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "training_scripts", "mirrored_parity.py")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # Reduction order differs (one batch of 8 vs two of 4), and Adam's first steps amplify
    # rounding in near-zero gradients; clipping per replica instead would differ by ~3e-2.
    for policy, tolerance in (("float32", 1e-4), ("mixed_float16", 5e-4)):
        result = results[policy]
        assert result["replicas"] == 2
        assert result["max_update"] > 1e-3  # the weights did move (and gradients were clipped)
        assert result["max_weight_diff"] < tolerance, (policy, result)
        assert abs(result["loss_single"] - result["loss_mirrored"]) < 1e-5
    # Dynamic loss scaling engaged and evolved identically.
    assert results["mixed_float16"]["loss_scale_single"] == results["mixed_float16"]["loss_scale_mirrored"] > 1


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def read_weights(path):
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_workers_on_loopback_end_with_identical_weights(sample_dataset, tmp_path):
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "cfg.yaml", sample_dataset, max_epochs=1, default_root_dir=str(run), logger=False,
        limit_train_batches=2, limit_val_batches=0,
    )
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w")
        command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "fit", "--config", config, "--trainer.num_nodes", "2", "--trainer.export_saved_model", "true"]
        workers.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=240) for p, _ in workers]
    finally:
        for p, log in workers:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MultiWorkerMirroredStrategy" in logs[0]
    name = "epoch=0-step=2.weights.h5"  # Lightning's default ModelCheckpoint
    chief = read_weights(run / "checkpoints" / name)
    other = read_weights(run / "worker_1" / "checkpoints" / name)  # non-chief workers write in worker_<i>/
    assert set(chief) == set(other) and any(k.startswith("optimizer/") for k in chief)
    for key in chief:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [0] and rows == json.loads((run / "worker_1" / "metrics.json").read_text())
    assert os.path.exists(run / "saved_model") and not os.path.exists(run / "worker_1" / "saved_model")
