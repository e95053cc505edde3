"""The input pipeline on a tf.data service: a dispatcher and two workers started with
tools/data_service.py on loopback give the examples of the local pipeline (the same
multiset per epoch)."""

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from conftest import ROOT
from rskeras.train.data_service import DataServiceConfig

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def test_config_validation():
    config = DataServiceConfig.parse({"address": "127.0.0.1:5050", "stages": ["train", "val"]})
    assert config.address == "grpc://127.0.0.1:5050" and config.processing_mode == "distributed_epoch"
    for bad, match in (({"address": ""}, "address"), ({"address": "a:1", "processing_mode": "x"}, "processing_mode"), ({"address": "a:1", "stages": ["fit"]}, "stages"), ({"adress": "a:1"}, "unknown key")):
        with pytest.raises(ValueError, match=match):
            DataServiceConfig.parse(bad)


def data_module(path, **kwargs):
    from rskeras.train.data_module import RslearnDataModule
    from rskeras.train.dataset import DataInput, SplitConfig
    from rskeras.train.tasks.classification import ClassificationTask
    from rskeras.train.transforms.normalize import Normalize

    inputs = {
        "image": DataInput("raster", ["sentinel2"], bands=BANDS, passthrough=True, dtype="FLOAT32"),
        "targets": DataInput("vector", ["label"], is_target=True),
    }
    task = ClassificationTask(property_name="category", classes=["water", "vegetation", "bare", "urban"])
    return RslearnDataModule(
        inputs,
        task,
        path,
        batch_size=4,
        default_config=SplitConfig(transforms=[Normalize(mean=1000, std=500)]),
        train_config=SplitConfig(tags={"split": "train"}),
        val_config=SplitConfig(tags={"split": "val"}),
        **kwargs,
    )


def examples(dm, stage):
    """The multiset of (window, pixels, target) of one pass over a stage."""
    out = Counter()
    for inputs, targets, metadata in dm.tf_dataset(stage, with_metadata=True):
        image = inputs["image"].numpy()
        classes = targets["class"].numpy().reshape(len(image), -1)[:, 0]
        for i, name in enumerate(metadata["window_name"].numpy()):
            out[(name.decode(), hashlib.sha256(np.ascontiguousarray(image[i]).tobytes()).hexdigest(), int(classes[i]))] += 1
    return out


def start(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "data_service.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def address_of(process, pattern, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    raise AssertionError(f"no address from {process.args}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dispatcher_and_two_workers_give_the_local_examples(sample_dataset, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="needs cache_dir"):
        data_module(sample_dataset, data_service={"address": "127.0.0.1:1"})
    # The servers start (TensorFlow imports) while the local pipeline runs.
    port = free_port()
    processes = [start("dispatcher", "--port", str(port))] + [start("worker", "--dispatcher", f"127.0.0.1:{port}") for _ in range(2)]
    try:
        local = data_module(sample_dataset, cache_dir=cache)
        expected = {stage: examples(local, stage) for stage in ("train", "val")}
        assert sum(expected["train"].values()) == len(local.model_dataset("train").windows) > 0
        dispatcher = address_of(processes[0], r"dispatcher serving at (grpc://\S+)")
        assert dispatcher == f"grpc://127.0.0.1:{port}"
        for worker in processes[1:]:
            address_of(worker, r"worker serving at (127\.0\.0\.1:\d+)")
        served = data_module(sample_dataset, cache_dir=cache, data_service={"address": dispatcher, "stages": ["train", "val"]})
        for stage in ("train", "val"):
            for _ in range(2):  # every epoch, the local multiset
                assert examples(served, stage) == expected[stage], stage
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    assert all(p.returncode == 0 for p in processes), [p.returncode for p in processes]
