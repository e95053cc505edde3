"""Block-by-block merging (rskeras.utils.block_merge) and predict over large windows: the
stripe plan gives the pixels of rslearn's whole-window merge, and a window read crop by crop
and written block by block equals the whole-window path bit for bit."""

import json
import os
import types

import numpy as np
import pytest
import rasterio
import shapely
from data_helpers import RawTask, add_raster, add_window, make_config

from rskeras.export.sliding_window import crop_origins, merge_rasters
from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, SplitConfig
from rskeras.train.prediction_writer import RasterMerger, RslearnWriter, run_predict
from rskeras.utils.block_merge import StripeMerger, StripePlan
from rskeras.utils.feature import Feature


def stripe_merge(outputs, height, width, overlap, factor, stripe_width, block_size):
    """merge_rasters through StripePlan/StripeMerger; also checks each pixel is written once."""
    cols = sorted({c for (c, _), _ in outputs})
    rows = sorted({r for (_, r), _ in outputs})
    size_out = outputs[0][1].shape[1:]
    trim = 0 if overlap is None else overlap // 2
    plan = StripePlan(
        [c // factor for c in cols],
        [r // factor for r in rows],
        [0 if c == 0 else trim for c in cols],
        [0 if r == 0 else trim for r in rows],
        size_out[1],
        size_out[0],
        width // factor,
        height // factor,
        stripe_width,
    )
    channels, dtype = outputs[0][1].shape[0], outputs[0][1].dtype
    got = np.full((channels, height // factor, width // factor), -1, dtype)
    writes = np.zeros(got.shape[1:], int)

    def write(array, col, row):
        assert col % stripe_width == 0 and row % block_size == 0
        got[:, row : row + array.shape[1], col : col + array.shape[2]] = array
        writes[row : row + array.shape[1], col : col + array.shape[2]] += 1

    merger = StripeMerger(plan, channels, dtype, write, block_size)
    by_origin = dict(outputs)
    for i, (stripe, kx, ky) in enumerate(plan.items()):
        assert plan.item(i) == (stripe, kx, ky)
        merger.add(stripe, kx, ky, by_origin[(cols[kx], rows[ky])])
    merger.finish()
    assert (writes == 1).all()
    return got, plan, merger


@pytest.mark.parametrize("seed", range(6))
def test_stripe_merge_equals_the_whole_raster_merge(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        factor = int(rng.choice([1, 2, 4]))
        size = int(rng.choice([8, 16, 32]))
        if size % factor:
            continue
        height, width = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        overlap = int(rng.integers(0, size - 1))
        trim = None if rng.random() < 0.2 else overlap
        cols, rows = crop_origins(width, size, overlap), crop_origins(height, size, overlap)
        outputs = [((c, r), rng.integers(0, 250, (2, size // factor, size // factor)).astype(np.float32)) for c in cols for r in rows]
        expected = merge_rasters(outputs, height, width, trim, factor, np.float32)
        got, plan, merger = stripe_merge(outputs, height, width, trim, factor, int(rng.choice([16, 32, 4096])), 16)
        np.testing.assert_array_equal(got, expected)
        # Only the rows crops still write into are held: a few block rows of one stripe.
        assert merger.max_open <= -(-size // factor // 16) + 1
        assert {kx for cols_ in plan.stripe_columns for kx in cols_} == set(range(len(cols)))


def test_stripe_plan_predicts_boundary_crops_once_per_stripe():
    # 100 columns, crops of 16 with overlap 4 (step 12): origins 0, 12, ..., 84.
    cols = crop_origins(100, 16, 4)
    plan = StripePlan(cols, [0], [0] + [2] * (len(cols) - 1), [0], 16, 16, 100, 16, stripe_width=48)
    assert plan.stripes == [(0, 48), (48, 96), (96, 100)]
    # Crop 3 (origin 36) owns columns 38..50: it is predicted in stripes 0 and 1.
    assert [j for j, c in enumerate(plan.stripe_columns) if 3 in c] == [0, 1]
    assert plan.is_first(0, 3) and not plan.is_first(1, 3)
    assert len(plan) == sum(len(c) for c in plan.stripe_columns)


class PositionTask(RawTask):
    """Outputs pixels plus a value depending on the crop's position, so that which crop a
    merged pixel comes from shows; the vector variant one point per crop."""

    def __init__(self, vector=False):
        super().__init__()
        self.vector = vector

    def process_output(self, raw_output, metadata):
        x0, y0 = metadata.crop_bounds[:2]
        if self.vector:
            return [Feature(shapely.Point(x0 + 0.5, y0 + 0.5), {"x": int(x0), "y": int(y0), "v": float(np.asarray(raw_output)[0, 0, 0])})]
        return np.transpose(np.asarray(raw_output), (2, 0, 1)) + float((x0 * 7 + y0 * 13) % 97)


@pytest.fixture
def scene_dataset(tmp_path):
    root = str(tmp_path / "ds")
    make_config(
        root,
        {
            "img": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["v"]}]},
            "out": {
                "type": "raster",
                "band_sets": [{"dtype": "float32", "bands": ["v"], "format": {"class_path": "rslearn.utils.raster_format.GeotiffRasterFormat", "init_args": {"block_size": 16}}}],
            },
            "pts": {"type": "vector"},
        },
    )
    rng = np.random.default_rng(0)
    for name, bounds in (("wide", [-30, 7, 75, 52]), ("small", [3, 3, 20, 14])):
        w = add_window(root, name, bounds, group="pred")
        arr = rng.integers(0, 250, size=(1, bounds[3] - bounds[1], bounds[2] - bounds[0])).astype(np.uint8)
        add_raster(w, "img", ["v"], arr, bounds)
    return root


def predict(root, out_root, task, writers, large_window_pixels):
    split = SplitConfig(groups=["pred"], load_all_crops=True, crop_size=16, overlap_pixels=4)
    dm = RslearnDataModule(
        {"image": DataInput("raster", ["img"], bands=["v"], passthrough=True)},
        task,
        root,
        batch_size=5,
        predict_config=split,
        large_window_pixels=large_window_pixels,
    )
    lm = types.SimpleNamespace(model=lambda inputs, training=False: {"outputs": inputs["image"][:, 0]}, task=task)
    trainer = types.SimpleNamespace(callbacks=writers, steps=lambda dm, stage: None, configure_jit=lambda lm: None)
    run_predict(trainer, lm, dm)
    return dm


def read_outputs(root):
    out = {}
    for name in ("wide", "small"):
        layer = os.path.join(root, "windows/pred", name, "layers")
        with rasterio.open(os.path.join(layer, "out/v/geotiff.tif")) as src:
            out[name] = (src.read(), src.transform, src.block_shapes)
        out[name + "_pts"] = json.load(open(os.path.join(layer, "pts/data.geojson")))
        assert os.path.exists(os.path.join(layer, "out/completed")) and os.path.exists(os.path.join(layer, "pts/completed"))
    return out


def test_large_windows_read_crop_by_crop_equal_the_whole_window_path(scene_dataset, tmp_path):
    whole, streamed = str(tmp_path / "whole"), str(tmp_path / "streamed")

    def writers(out_root):
        raster = RslearnWriter("out", output_path=out_root, merger=RasterMerger(overlap_pixels=4), stream_stripe_width=32)
        return [raster, RslearnWriter("pts", output_path=out_root)]

    dm = predict(scene_dataset, whole, PositionTask(), writers(whole)[:1], 10**9)
    assert not dm.model_dataset("predict").clip_crops
    predict(scene_dataset, whole, PositionTask(vector=True), writers(whole)[1:], 10**9)
    ws = writers(streamed)
    dm = predict(scene_dataset, streamed, PositionTask(), ws[:1], 100)
    md = dm.model_dataset("predict")
    assert md.clip_crops
    # The 105-column window: stripes of 32 columns, boundary crops predicted twice.
    wide = [e for e in md.examples if md.windows[e[0]].name == "wide"]
    assert len(wide) > len(md.window_crops[[w.name for w in md.windows].index("wide")])
    assert ws[0].windows_written and not ws[0]._streams
    predict(scene_dataset, streamed, PositionTask(vector=True), ws[1:], 100)
    a, b = read_outputs(whole), read_outputs(streamed)
    for name in ("wide", "small"):
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert a[name][1] == b[name][1]
        assert a[name + "_pts"] == b[name + "_pts"]  # same points, same order
    assert b["wide"][2] == [(16, 16)]  # tiled with the layer's block size
    # No temporary files anywhere.
    assert not [f for _, _, files in os.walk(streamed) for f in files if f.startswith(".")]


# ---- tools/predict_tflite.py's scene prediction -----------------------------------------------

BANDS4 = ["B02", "B03", "B04", "B08"]


class StubMultiTask:
    """A stand-in LiteRT model (16 x 16 crops): segmentation class ids from the pixels, an
    embedding at half resolution, one detection per crop; every output depends on the
    pixels, so that which crop a merged pixel comes from shows."""

    path = "stub.tflite"
    input_size = (16, 16)
    input_details = {"image": ((1, 16, 16, 4), np.dtype(np.float32))}
    description = {
        "inputs": [{"name": "image", "bands": BANDS4, "dtype": "float32", "num_timesteps": 1}],
        "task": {
            "kind": "multi_task",
            "tasks": {
                "seg": {"kind": "segmentation", "outputs": {"class_ids": "seg_class_ids", "probabilities": "seg_probabilities"}, "num_classes": 5},
                "emb": {"kind": "embedding", "outputs": {"embeddings": "emb_embeddings"}},
                "det": {
                    "kind": "detection",
                    "outputs": {k: f"det_{k}" for k in ("boxes", "scores", "labels", "num_detections")},
                    "property_name": "category",
                    "classes": ["bg", "boat"],
                    "score_threshold": 0.5,
                },
            },
        },
    }

    def __call__(self, image):
        x = np.asarray(image, np.float32)[0]
        total = x.sum(-1)
        seg = ((total + np.arange(16)[None, :] * 3.0) % 5).astype(np.int32)
        emb = x.reshape(8, 2, 8, 2, 4).mean((1, 3))[..., :3] + total.mean()
        cx = float(total.argmax() % 16)
        boxes = np.array([[[cx - 1, 2, cx + 1, 4]]], np.float32)
        return {
            "seg_class_ids": seg[None],
            "seg_probabilities": np.zeros((1, 16, 16, 5), np.float32),
            "emb_embeddings": emb[None],
            "det_boxes": boxes,
            "det_scores": np.array([[0.9]], np.float32),
            "det_labels": np.array([[1]], np.int32),
            "det_num_detections": np.array([1], np.int32),
        }


def test_scene_files_equal_the_in_memory_scene_prediction(tmp_path):
    from rskeras.export.sliding_window import open_scene, output_paths, predict_scene, predict_scene_to_files, read_scene, write_prediction

    rng = np.random.default_rng(3)
    scene = str(tmp_path / "scene.tif")
    height, width = 90, 1100
    pixels = rng.integers(0, 50, size=(4, height, width)).astype(np.uint16)
    with rasterio.open(scene, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint16", crs="EPSG:32610", transform=rasterio.Affine(10, 0, 500000, 0, -10, 4100000)) as dst:
        dst.write(pixels)
    model = StubMultiTask()
    expected = predict_scene(model, read_scene({"image": scene}), overlap_pixels=6)
    for name, prediction in expected.items():
        write_prediction(prediction, str(tmp_path / "ref" / (name + (".tif" if prediction.raster is not None else ".geojson"))), rasterio.open(scene).crs)
    paths = output_paths(model.description, str(tmp_path / "out"))
    done = []
    with open_scene({"image": scene}) as source:
        summary = predict_scene_to_files(model, source, paths, overlap_pixels=6, stripe_width=512, progress=lambda d, t: done.append((d, t)))
    assert summary == {"seg": "1-band raster", "emb": "3-band raster", "det": f"{len(expected['det'].features)} features"}
    # Stripes of 512 columns: the crops at stripe boundaries are predicted twice.
    assert done[-1][0] == done[-1][1] > len(expected["det"].features)
    for name in ("seg", "emb"):
        with rasterio.open(tmp_path / "ref" / f"{name}.tif") as a, rasterio.open(paths[name]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.transform == b.transform and a.dtypes == b.dtypes and a.crs == b.crs
            assert b.profile["tiled"] and b.compression is not None
    assert (tmp_path / "ref" / "det.geojson").read_text() == open(paths["det"]).read()
