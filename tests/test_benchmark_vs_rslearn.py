"""Plumbing of ``tools/benchmark.py vs-rslearn`` / ``step`` / ``inference`` (no rslearn, no timing).

The real comparison needs a torch venv and hours of CPU; these tests run the tool's own
parts: argument errors through the real command, the anchor dataset generator, the six
benchmark configs through rskeras' config loader, the Keras measurement callback, and the
orchestration (run, store, reuse, table) with a stand-in for the two training commands.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import vs_rslearn  # noqa: E402
from make_anchor_dataset import BANDS, make_anchor_dataset  # noqa: E402

BENCHMARK = [sys.executable, str(ROOT / "tools" / "benchmark.py")]


def run_tool(*args):
    return subprocess.run(BENCHMARK + list(args), capture_output=True, text=True, timeout=120, cwd=str(ROOT))


def test_missing_rslearn_python_is_one_clear_line():
    out = run_tool("vs-rslearn")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and "--rslearn-python is required" in errors[0] and "Traceback" not in out.stderr


def test_bad_rslearn_python_and_config_name(tmp_path):
    out = run_tool("vs-rslearn", "--rslearn-python", str(tmp_path / "nope" / "python"))
    assert out.returncode == 2 and "no such executable" in out.stderr and "Traceback" not in out.stderr
    out = run_tool("vs-rslearn", "--rslearn-python", sys.executable, "--configs", "classfication")
    assert out.returncode == 2 and "--configs classfication: unknown config" in out.stderr
    # a Python without rslearn is refused before any run
    out = run_tool("vs-rslearn", "--rslearn-python", sys.executable, "--configs", "classification", "--work", str(tmp_path / "w"))
    assert out.returncode == 2 and "not importable" in out.stderr
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def anchor_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchor") / "dataset"
    stats = make_anchor_dataset(str(root), size=32, n_train=6, n_val=3, seed=0)
    return root, stats


def test_anchor_dataset_layout_and_labels(anchor_dataset):
    root, stats = anchor_dataset
    assert stats["train"]["windows"] == 6 and stats["val"]["windows"] == 3
    config = json.loads((root / "config.json").read_text())
    assert set(config["layers"]) >= {"sentinel2", "label", "segment_label", "regress_label", "output_segmentation"}
    band_dir = "_".join(BANDS)
    for index, group in [(0, "train"), (7, "val")]:
        wdir = root / "windows" / group / f"w{index:05d}"
        meta = json.loads((wdir / "metadata.json").read_text())
        assert meta["options"] == {"split": group} and meta["bounds"][2] - meta["bounds"][0] == 32
        for layer in ("sentinel2", "label", "segment_label", "regress_label"):
            assert (wdir / "layers" / layer / "completed").exists()
        with rasterio.open(wdir / "layers" / "sentinel2" / band_dir / "geotiff.tif") as f:
            image = f.read().astype(np.float64)
            assert f.count == 12 and f.transform.a == 10 and f.transform.c == meta["bounds"][0] * 10
        with rasterio.open(wdir / "layers" / "segment_label" / "label" / "geotiff.tif") as f:
            segment = f.read(1)
            assert f.nodata == 255
        with rasterio.open(wdir / "layers" / "regress_label" / "label" / "geotiff.tif") as f:
            regress = f.read(1)
        features = json.loads((wdir / "layers" / "label" / "data.geojson").read_text())["features"]
        scene = features[0]["properties"]
        # the scene class's band carries the largest window-wide offset
        offsets = {c: image[BANDS.index(b)].mean() - base for c, b, base in [("water", "B02", 1000), ("vegetation", "B08", 1000), ("bare_soil", "B11", 1000)]}
        assert max(offsets, key=offsets.get) == scene["category"]
        assert 10 <= scene["length"] <= 100
        # B04 carries the segmentation field, B06 the regression field
        valid = segment != 255
        b04 = image[BANDS.index("B04")]
        assert b04[valid & (segment == 2)].mean() > b04[valid & (segment == 0)].mean() + 900
        assert np.corrcoef(image[BANDS.index("B06")].ravel(), regress.ravel())[0, 1] > 0.9
        for point in features[1:]:
            assert point["properties"]["category"] in ("ship", "platform") and point["geometry"]["type"] == "Point"


def test_anchor_dataset_is_deterministic(anchor_dataset, tmp_path):
    root, _ = anchor_dataset
    again = tmp_path / "again"
    make_anchor_dataset(str(again), size=32, n_train=6, n_val=3, seed=0)
    name = "train/w00003/layers/sentinel2/" + "_".join(BANDS) + "/geotiff.tif"
    with rasterio.open(root / "windows" / name) as a, rasterio.open(again / "windows" / name) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert (root / "windows/train/w00003/layers/label/data.geojson").read_text() == (again / "windows/train/w00003/layers/label/data.geojson").read_text()


def test_benchmark_configs_load_in_rskeras(anchor_dataset, monkeypatch):
    """The six configs resolve in rskeras with class paths untouched; the measurement
    callback they name is the Keras one from benchmarks/rslearn/rskeras_side."""
    from rskeras.config.instantiate import instantiate
    from rskeras.config.loader import load_config

    root, _ = anchor_dataset
    monkeypatch.setenv("RSLEARN_ANCHOR", str(root.parent))
    monkeypatch.syspath_prepend(vs_rslearn.RSKERAS_SIDE)
    monkeypatch.setenv("RSKERAS_ALLOW_CLASS_PREFIX", "anchor_callbacks.")  # as vs_rslearn's runs do
    for name in vs_rslearn.CONFIGS:
        cfg = load_config([vs_rslearn.config_path(name)], [])
        assert cfg["model"]["class_path"] == "rslearn.train.lightning_module.RslearnLightningModule"
        callbacks = [instantiate(c, f"trainer.callbacks.{i}") for i, c in enumerate(cfg["trainer"]["callbacks"])]
        assert any(type(c).__name__ == "EpochStats" and type(c).__module__ == "anchor_callbacks" for c in callbacks)
    dm = instantiate(load_config([vs_rslearn.config_path("classification")], [])["data"], "data")
    inputs, targets = next(iter(dm.tf_dataset("val", shuffle=False)))
    assert inputs["image"].shape[1:] == (1, 32, 32, 12) and float(inputs["image"].numpy().max()) < 3.0  # Normalize(std=3000)
    assert set(np.unique(targets["class"].numpy())) <= {0, 1, 2}


def test_keras_epoch_stats_callback(tmp_path, monkeypatch):
    import keras

    monkeypatch.syspath_prepend(vs_rslearn.RSKERAS_SIDE)
    import anchor_callbacks

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.train_trackers = {"train_loss": keras.metrics.Mean(name="train_loss")}

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            x, y = data
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(x) - y))
            self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
            self.train_trackers["train_loss"].update_state(loss, sample_weight=tf.cast(tf.shape(x)[0], tf.float32))
            return {"train_loss": self.train_trackers["train_loss"].result()}

        @property
        def metrics(self):
            return list(self.train_trackers.values())

    model = Tiny()
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.rand(10, 3).astype("float32"), np.random.rand(10, 1).astype("float32")
    out = tmp_path / "stats.jsonl"
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), verbose=0, callbacks=[anchor_callbacks.EpochStats(str(out))])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch_end"]
    assert [r["epoch"] for r in epochs] == [0, 1] and records[-1]["event"] == "fit_end"
    for r in epochs:
        assert r["train_samples"] == 10  # the batch-size-weighted count, short last batch included
        assert r["train_cpu_s_tree"] >= 0 and r["train_s"] > 0 and r["val_s"] is not None and r["peak_tree_rss_mb"] > 10
        assert "train_loss" in r["metrics"] and any(k.startswith("val_") for k in r["metrics"])


FAKE_FIT = r"""
import json, os, sys
system, name, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = os.path.join(os.environ["RSLEARN_ANCHOR"], "runs", name)
os.makedirs(root, exist_ok=True)
cpu = {"rslearn": 100.0, "rskeras": 40.0}[system]
with open(os.path.join(root, "epoch_stats.jsonl"), "w") as f:
    for e in range(epochs):
        acc = 0.5 + 0.1 * e if system == "rslearn" else 0.6 + 0.1 * e
        f.write(json.dumps({"event": "epoch_end", "epoch": e, "train_samples": 16, "train_s": 2.0, "train_samples_per_s": 8.0,
                            "train_cpu_s_tree": cpu * (2 if e == 0 else 1), "peak_tree_rss_mb": {"rslearn": 4000, "rskeras": 2000}[system],
                            "metrics": {"val_accuracy": acc, "val_loss": 1.0 - acc}}) + "\n")
    f.write(json.dumps({"event": "fit_end", "fit_wall_s": 1.0, "peak_tree_rss_mb": 1000}) + "\n")
"""


def test_orchestration_store_reuse_and_table(tmp_path, monkeypatch, capsys):
    """run_fit/run_vs_rslearn with a stand-in training command: results are stored,
    reused on the next call, and the table ends with the worst-ratio line."""
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    calls = []

    def fake_command(system, config, seed, epochs, rslearn_python, overrides, export=False):
        calls.append(system)
        return [sys.executable, str(script), system, os.path.splitext(os.path.basename(config))[0], str(epochs)]

    monkeypatch.setattr(vs_rslearn, "fit_command", fake_command)
    monkeypatch.setattr(vs_rslearn, "check_rslearn_python", lambda path: {"torch": "x", "rslearn": "y", "lightning": "z"})
    monkeypatch.setattr(vs_rslearn, "ensure_dataset", lambda *a: {"n_train": 16, "n_val": 8, "size": 32})
    import argparse

    parser = argparse.ArgumentParser()
    vs_rslearn.add_vs_rslearn_arguments(parser)
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "anchor_callbacks.py").write_text("")
    argv = ["--rslearn-python", "py", "--rslearn-callbacks", str(kit), "--work", str(tmp_path / "work"), "--dataset", str(tmp_path),
            "--configs", "classification", "--epochs", "3", "--seeds", "0", "1", "--settle-s", "0", "--max-load", "1000"]
    out = vs_rslearn.run_vs_rslearn(parser.parse_args(argv + ["--markdown", str(tmp_path / "tables.md")]))
    assert calls == ["rslearn", "rskeras"] * 2
    md = (tmp_path / "tables.md").read_text()
    assert "| classification | rskeras/rslearn | | 0.40× |" in md and "| classification | accuracy | 3 | 0.700 0.700 | 0.800 0.800 | ok |" in md
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == "vs-rslearn: worst CPU-s ratio 0.40 (classification), worst RSS ratio 0.50 (classification)"
    entry = out["report"]["configs"]["classification"]
    assert entry["rslearn"]["cpu_per_epoch"] == 100.0 and entry["rskeras"]["first_epoch_cpu_x"] == 2.0
    learning = out["report"]["learning"]["classification"]["accuracy"]
    assert learning[2]["verdict"] == "ok" and learning[3]["rslearn"] == [pytest.approx(0.7)] * 2
    stored = tmp_path / "work" / "results" / "classification" / "rskeras" / "seed1-e3.json"
    assert json.loads(stored.read_text())["rc"] == 0
    # a second call reuses every stored run
    calls.clear()
    vs_rslearn.run_vs_rslearn(parser.parse_args(argv))
    assert calls == [] and "stored result" in capsys.readouterr().out
    # an rskeras variant is stored under its own label and compared with the stored rslearn runs
    vs_rslearn.run_vs_rslearn(parser.parse_args(argv + ["--systems", "rskeras", "--rskeras-override", "trainer.precision=bf16-mixed", "--tag", "bf16"]))
    assert calls == ["rskeras", "rskeras"]
    assert (tmp_path / "work" / "results" / "classification" / "rskeras-bf16" / "seed0-e3.json").exists()
    assert "rskeras-bf16" in capsys.readouterr().out
