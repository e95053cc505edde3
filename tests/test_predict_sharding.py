"""Sharded prediction through the real command: workers started with ``--shard i/N`` or
``TF_CONFIG`` write disjoint windows whose union is a single-process run bit for bit; a
worker killed mid-run and started again finishes only what is missing."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from rskeras.config.errors import ConfigError
from rskeras.train.sharding import Shard, parse_shard, resolve_shard, shard_from_tf_config
from tools.tiny_models import TINY_SEGMENTATION_MODEL

CONFIG = "seed_everything: 0\n" + TINY_SEGMENTATION_MODEL + """\
data:
  class_path: rslearn.train.data_module.RslearnDataModule
  init_args:
    path: ${DATASET_PATH}
    batch_size: BATCH
    inputs:
      image:
        data_type: raster
        layers: [sentinel2]
        bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12]
        dtype: FLOAT32
        passthrough: true
    task:
      class_path: rslearn.train.tasks.segmentation.SegmentationTask
      init_args: {num_classes: 4}
    default_config:
      transforms:
        - class_path: rslearn.train.transforms.normalize.Normalize
          init_args: {mean: 1500, std: 1000}
    predict_config:
      groups: [default, predict]
      skip_targets: true
      load_all_crops: true
      crop_size: 16
      overlap_pixels: 4
trainer:
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: rslearn.train.prediction_writer.RslearnWriter
      init_args:
        output_layer: output_segmentation
        merger: {class_path: rslearn.train.prediction_writer.RasterMerger, init_args: {overlap_pixels: 4}}
"""
LAYER = "output_segmentation"


def test_shard_parsing_and_tf_config():
    assert parse_shard("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    cluster = {"chief": ["h:1"], "worker": ["h:2", "h:3"]}
    env = lambda task: {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}  # noqa: E731
    assert shard_from_tf_config(env({"type": "chief", "index": 0})) == Shard(0, 3)
    assert shard_from_tf_config(env({"type": "worker", "index": 1})) == Shard(2, 3)
    assert shard_from_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}})}) is None
    with pytest.raises(ConfigError, match="not in the cluster"):
        shard_from_tf_config(env({"type": "worker", "index": 2}))
    # Every window is in exactly one shard.
    names = [f"w{i}" for i in range(200)]
    owners = [[i for i in range(3) if Shard(i, 3).contains("g", n)] for n in names]
    assert all(len(o) == 1 for o in owners) and all(40 < sum(o == [i] for o in owners) < 95 for i in range(3))


def test_shard_flag_must_agree_with_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}))
    assert resolve_shard(None) == Shard(1, 2) == resolve_shard("1/2")
    with pytest.raises(ConfigError, match="disagrees with TF_CONFIG"):
        resolve_shard("0/2")


def start(config, dataset, *args, env_extra=None, log=None):
    env = dict(os.environ, DATASET_PATH=dataset, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(env_extra or {})
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "predict", "--config", str(config), *args]
    return subprocess.Popen(command, cwd=os.path.dirname(config), env=env, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=600):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out or "")[-3000:]
    return out


def written(out):
    """Windows a run says it wrote."""
    line = [x for x in out.splitlines() if x.startswith("predicted")][-1]
    return int(line.rsplit(" for ", 1)[1].split()[0])


def outputs(dataset):
    """{relative path: (sha256, inode)} of every file of the output layer."""
    out = {}
    for group in sorted(os.listdir(os.path.join(dataset, "windows"))):
        for name in sorted(os.listdir(os.path.join(dataset, "windows", group))):
            layer = os.path.join(dataset, "windows", group, name, "layers", LAYER)
            for d, _, files in os.walk(layer):
                for f in files:
                    p = os.path.join(d, f)
                    try:
                        out[os.path.relpath(p, dataset)] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_ino)
                    except FileNotFoundError:  # a writer's temporary file, renamed meanwhile
                        continue
    return out


def markers(dataset):
    return {p for p in outputs(dataset) if p.endswith("/completed")}


def copy(sample_dataset, path):
    shutil.copytree(sample_dataset, path)
    return str(path)


def test_workers_equal_one_process_and_a_killed_worker_finishes_what_is_missing(sample_dataset, tmp_path):
    """One process; at the same time two workers (``TF_CONFIG`` worker 0 of 2, and
    ``--shard 1/2``), the second killed (SIGKILL) mid-run and started again. The rerun
    writes only the missing windows, rewrites nothing, and the union of the two workers is
    the single-process run bit for bit."""
    config = tmp_path / "predict.yaml"
    config.write_text(CONFIG.replace("BATCH", "4"))
    single, sharded = copy(sample_dataset, tmp_path / "single"), copy(sample_dataset, tmp_path / "sharded")
    tf_config = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}})}
    one, w0 = start(config, single), start(config, sharded, env_extra=tf_config)
    log = open(tmp_path / "killed.log", "w")
    w1 = start(config, sharded, "--shard", "1/2", log=log)
    theirs = lambda: {m for m in markers(sharded) if Shard(1, 2).contains(*m.split("/")[1:3])}  # noqa: E731
    deadline = time.time() + 600
    while len(theirs()) < 2 and w1.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    w1.send_signal(signal.SIGKILL)
    w1.wait()
    log.close()
    done_before = theirs()
    one_log, w0_log = finish(one), finish(w0)
    total = written(one_log)
    reference = outputs(single)
    assert total == 42 and len(markers(single)) == 42
    assert "(shard 0/2)" in w0_log
    mine = markers(sharded) - done_before
    assert len(mine) == written(w0_log) > 0
    expected = total - len(mine)
    assert 2 <= len(done_before) < expected, f"the worker was not killed mid-run ({len(done_before)} of {expected})"
    before = outputs(sharded)
    rerun = finish(start(config, sharded, "--shard", "1/2"))
    assert "(shard 1/2)" in rerun
    # Only the missing windows were predicted: the counts add up, no window twice.
    assert written(rerun) == expected - len(done_before)
    after = outputs(sharded)
    # Nothing completed before was written again (same files, same inodes) ...
    completed_dirs = {m[: -len("completed")] for m in mine | done_before}
    kept = [p for p in before if any(p.startswith(d) for d in completed_dirs)]
    assert len(kept) == 2 * len(completed_dirs)
    assert all(after[p] == before[p] for p in kept)
    # ... no temporary file is left, and the union is the single-process run bit for bit.
    assert sorted(after) == sorted(reference)
    assert {p: h for p, (h, _) in after.items()} == {p: h for p, (h, _) in reference.items()}
