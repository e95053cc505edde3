"""Whole scenes far larger than a memory limit: tools/predict_tflite.py and ``train.py
predict`` read and write them block by block. Each test first shows that reading the scene
whole fails under the limit, then that prediction succeeds under it. Also the hostile
scenes of the bad-input issue: a sparse GeoTIFF declaring 200000 x 200000 px and a complex64
GeoTIFF."""

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import ROOT
from tools.tiny_models import TINY_SEGMENTATION_MODEL

BANDS12 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
CRS = "EPSG:32610"
MIB = 1 << 20


def limited(kind: int, mib: int):
    def apply():
        resource.setrlimit(kind, (mib * MIB, mib * MIB))

    return apply


def env():
    out = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    out.pop("TF_CONFIG", None)
    return out


def write_tiled(path, n, count, dtype, fill=True):
    """A compressed n x n GeoTIFF written block by block (low-entropy pixels); with
    ``fill`` False nothing is written (a sparse file)."""
    yy, xx = np.mgrid[0:512, 0:512]
    profile = dict(driver="GTiff", width=n, height=n, count=count, dtype=dtype, crs=CRS, transform=Affine(10, 0, 10000, 0, -10, 20000))
    profile.update(tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER", SPARSE_OK="TRUE")
    with rasterio.open(path, "w", **profile) as dst:
        if not fill:
            return
        for y in range(0, n, 512):
            for x in range(0, n, 512):
                h, w = min(512, n - y), min(512, n - x)
                a = (1000 + ((xx + x) // 37 % 5) * 300 + ((yy + y) // 53 % 3) * 200)[:h, :w]
                dst.write(np.stack([a + 10 * i for i in range(count)]).astype(dtype), window=rasterio.windows.Window(x, y, w, h))


# ---- tools/predict_tflite.py ----------------------------------------------------------------

AS_LIMIT = 560  # MiB of address space: the tool peaks near 300 MiB on any scene


@pytest.fixture(scope="module")
def seg256(tmp_path_factory):
    from export_helpers import tiny_exportable

    from rskeras.export.tflite import convert_tflite, write_tflite

    root = tmp_path_factory.mktemp("seg256")
    exportable = tiny_exportable("segmentation")
    path = str(root / "seg.tflite")
    write_tflite(exportable, convert_tflite(exportable, (256, 256)), path, (256, 256), "none")
    return path


def run_tool(args, limit_mib=AS_LIMIT, timeout=900):
    command = [sys.executable, str(ROOT / "tools" / "predict_tflite.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(), preexec_fn=limited(resource.RLIMIT_AS, limit_mib))


def test_predict_tflite_scene_larger_than_the_memory_limit(seg256, tmp_path):
    scene = str(tmp_path / "scene.tif")
    write_tiled(scene, 4096, 4, "float64")  # 512 MiB of pixels
    read_whole = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import ai_edge_litert.interpreter
        from rskeras.export.sliding_window import read_scene
        try:
            read_scene({{"image": {scene!r}}})
        except MemoryError:
            sys.exit(7)
        """
    )
    control = subprocess.run([sys.executable, "-c", read_whole], capture_output=True, text=True, timeout=300, env=env(), preexec_fn=limited(resource.RLIMIT_AS, AS_LIMIT))
    assert control.returncode != 0, "the limit does not stop a whole-scene read"
    out = str(tmp_path / "classes.tif")
    done = run_tool(["--model", seg256, "--input", scene, "--output", out, "--overlap", "16", "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    with rasterio.open(out) as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (1, 4096, 4096, "uint8")
        assert src.block_shapes == [(512, 512)] and src.compression is not None and src.crs.to_string() == CRS
        assert int(src.read(1, window=rasterio.windows.Window(4000, 4000, 96, 96)).max()) < 3


def test_sparse_200000_px_geotiff_runs_in_bounded_memory_and_sigterm_cleans_up(seg256, tmp_path):
    """Declares 200000 x 200000 x 12 uint16 px (894 GiB): prediction starts in the memory
    limit (progress on stderr); SIGTERM stops it without leaving output or temporary files."""
    scene = str(tmp_path / "sparse.tif")
    write_tiled(scene, 200000, 12, "uint16", fill=False)
    assert os.path.getsize(scene) < 64 * MIB
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [sys.executable, str(ROOT / "tools" / "predict_tflite.py"), "--model", seg256, "--input", scene, "--output", str(out_dir / "c.tif"), "--band-indexes", "1,2,3,4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), preexec_fn=limited(resource.RLIMIT_AS, AS_LIMIT))
    deadline = time.time() + 300
    started = False
    while time.time() < deadline and process.poll() is None:
        started = any(name.startswith(".c.tif.") for name in os.listdir(out_dir))
        if started:
            break
        time.sleep(0.1)
    time.sleep(2)
    alive = process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert started and alive, err[-3000:]
    assert process.returncode == 143, err[-3000:]
    assert "MemoryError" not in err
    assert os.listdir(out_dir) == []


def test_complex_geotiff_is_refused_naming_the_file(seg256, tmp_path):
    scene = str(tmp_path / "complex.tif")
    with rasterio.open(scene, "w", driver="GTiff", width=300, height=300, count=4, dtype="complex64", crs=CRS, transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.ones((4, 300, 300), np.complex64))
    done = run_tool(["--model", seg256, "--input", scene, "--output", str(tmp_path / "c.tif")], timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [x for x in done.stderr.splitlines() if x.strip() and "XNNPACK" not in x]
    assert len(lines) == 1 and scene in lines[0] and "complex64" in lines[0], done.stderr
    assert not os.path.exists(tmp_path / "c.tif")


# ---- train.py predict -------------------------------------------------------------------------

DATA_LIMIT = 1500  # MiB of heap (RLIMIT_DATA): a streamed run stays near 900 MiB

CONFIG = "seed_everything: 0\n" + TINY_SEGMENTATION_MODEL + """\
data:
  class_path: rslearn.train.data_module.RslearnDataModule
  init_args:
    path: DATASET
    batch_size: 8
    num_workers: 2
    inputs:
      image: {data_type: raster, layers: [sentinel2], bands: BANDS, dtype: FLOAT32, passthrough: true}
    task: {class_path: rslearn.train.tasks.segmentation.SegmentationTask, init_args: {num_classes: 4}}
    default_config:
      transforms:
        - {class_path: rslearn.train.transforms.normalize.Normalize, init_args: {mean: 1500, std: 1000}}
    predict_config: {groups: [predict], skip_targets: true, load_all_crops: true, crop_size: 256, overlap_pixels: 16}
trainer:
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: rslearn.train.prediction_writer.RslearnWriter
      init_args:
        output_layer: output
        merger: {class_path: rslearn.train.prediction_writer.RasterMerger, init_args: {overlap_pixels: 16}}
"""


def scene_dataset(root, n, fill=True):
    os.makedirs(root)
    layers = {"sentinel2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": BANDS12}]}, "output": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["class"]}]}}
    json.dump({"layers": layers}, open(os.path.join(root, "config.json"), "w"))
    window = os.path.join(root, "windows", "predict", "scene")
    raster_dir = os.path.join(window, "layers", "sentinel2", "_".join(BANDS12))
    os.makedirs(raster_dir)
    metadata = {"projection": {"crs": CRS, "x_resolution": 10.0, "y_resolution": -10.0}, "bounds": [1000, -2000, 1000 + n, -2000 + n], "time_range": None, "options": {}}
    json.dump(metadata, open(os.path.join(window, "metadata.json"), "w"))
    write_tiled(os.path.join(raster_dir, "geotiff.tif"), n, 12, "uint16", fill)
    open(os.path.join(window, "layers", "sentinel2", "completed"), "w").close()
    return window


def train_predict(config, *args, limit=DATA_LIMIT, timeout=900):
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "predict", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(), cwd=os.path.dirname(config), preexec_fn=limited(resource.RLIMIT_DATA, limit))


def test_train_predict_window_larger_than_the_memory_limit(tmp_path):
    """A 3072 x 3072 x 12 window: the whole-window read (uint16 + float32: 650 MiB on top
    of TensorFlow) fails under the heap limit, crop by crop it runs."""
    root = str(tmp_path / "ds")
    window = scene_dataset(root, 3072)
    config = tmp_path / "predict.yaml"
    config.write_text(CONFIG.replace("DATASET", root).replace("BANDS", json.dumps(BANDS12)))
    control = train_predict(config, "--data.init_args.large_window_pixels", str(10**9))
    assert control.returncode != 0, "the limit does not stop a whole-window read"
    assert not os.path.exists(os.path.join(window, "layers", "output", "completed"))
    done = train_predict(config, "--data.init_args.large_window_pixels", str(10**6))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "wrote output for 1 windows" in done.stdout
    with rasterio.open(os.path.join(window, "layers", "output", "class", "geotiff.tif")) as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (1, 3072, 3072, "uint8")
        assert src.block_shapes == [(512, 512)]
        assert tuple(src.transform)[:6] == (10.0, 0.0, 10000.0, 0.0, -10.0, 20000.0)
    assert os.path.exists(os.path.join(window, "layers", "output", "completed"))


def test_train_predict_sparse_200000_px_window_without_crops_is_a_clear_error(tmp_path):
    root = str(tmp_path / "ds")
    scene_dataset(root, 200000, fill=False)
    config = tmp_path / "predict.yaml"
    text = CONFIG.replace("DATASET", root).replace("BANDS", json.dumps(BANDS12))
    config.write_text(text.replace("load_all_crops: true, crop_size: 256, overlap_pixels: 16", "load_all_crops: false"))
    done = train_predict(config, limit=4096, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "window predict/scene" in last and "200000x200000" in last and "crop_size" in last, last
