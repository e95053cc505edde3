"""RslearnWriter / mergers / run_predict round trips and test-time visualisations."""

import json
import os
import types

import numpy as np
import pytest
import rasterio
import shapely
from data_helpers import RawTask, add_raster, add_window, make_config, write_json

from rskeras.config.instantiate import instantiate
from rskeras.dataset.window import Window
from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, SplitConfig
from rskeras.train.prediction_writer import PendingCropOutput, RasterMerger, RslearnWriter, run_predict
from rskeras.train.visualize import write_visualizations
from rskeras.utils.feature import Feature
from rskeras.utils.geometry import Projection
from rskeras.utils.vector_format import read_features_for_window

PROJ = Projection("EPSG:32610", 10.0, -10.0)


def layer(dtype="uint8", bands=("class",)):
    from rskeras.config.dataset import _parse_layer

    return _parse_layer("out", {"type": "raster", "band_sets": [{"dtype": dtype, "bands": list(bands)}]}, "test")


def fake_window(bounds):
    return Window("/nowhere", "g", "w", PROJ, tuple(bounds))


def test_raster_merger_overlap_trimming_hand_computed():
    window = fake_window((10, 20, 25, 28))  # 15 x 8; crops of 8 with overlap 2: x 10, 16, 17
    crops = [PendingCropOutput((x, 20, x + 8, 28), np.full((1, 8, 8), v, np.float32)) for x, v in ((17, 3.9), (10, 1.2), (16, 2.5))]
    merged = RasterMerger(overlap_pixels=2).merge(window, crops, layer())
    assert merged.dtype == np.uint8 and merged.shape == (1, 8, 15)
    # Sorted by x: A(10) cols 0-7; B(16) trims 1 col -> cols 7-14; C(17) trims 1 -> cols 8-14.
    np.testing.assert_array_equal(merged[0], np.tile([1] * 7 + [2] + [3] * 7, (8, 1)))
    merged = RasterMerger().merge(window, crops, layer())
    np.testing.assert_array_equal(merged[0, 0], [1] * 6 + [2] + [3] * 8)
    # Vertical trimming only for crops not at the window top; x before y ordering.
    window = fake_window((0, 0, 8, 14))
    crops = [PendingCropOutput((0, y, 8, y + 8), np.full((1, 8, 8), v, np.float32)) for y, v in ((0, 1), (6, 2))]
    merged = RasterMerger(overlap_pixels=4).merge(window, crops, layer())
    np.testing.assert_array_equal(merged[0, :, 0], [1] * 8 + [2] * 6)
    with pytest.warns(FutureWarning):
        assert RasterMerger(padding=3).overlap_pixels == 6


def test_raster_merger_downsample_factor_and_georeference(tmp_path):
    root = str(tmp_path)
    make_config(root, {"out": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["a", "b"]}]}})
    add_window(root, "w", [10, 20, 26, 28])
    writer = RslearnWriter("out", merger=RasterMerger(downsample_factor=2))
    writer.setup(root)
    win = Window.load(os.path.join(root, "windows/default/w"))
    out = np.stack([np.full((4, 8), 0.5, np.float32), np.arange(32, dtype=np.float32).reshape(4, 8)])
    writer.process_output(win, 0, 1, win.bounds, out)
    with rasterio.open(os.path.join(root, "windows/default/w/layers/out/a_b/geotiff.tif")) as src:
        assert src.dtypes == ("float32", "float32") and src.nodata is None
        # Same extent at half resolution: 20 m pixels, origin (10*10, 20*-10).
        assert tuple(src.transform)[:6] == (20.0, 0.0, 100.0, 0.0, -20.0, -200.0)
        np.testing.assert_array_equal(src.read(), out)
    assert os.path.exists(os.path.join(root, "windows/default/w/layers/out/completed"))


class EchoTask(RawTask):
    """process_output returns the model output (the input pixels) as [C, H, W]; the
    vector variant one point per crop."""

    def __init__(self, vector=False, selector_key=None):
        super().__init__()
        self.vector = vector
        self.selector_key = selector_key

    def process_output(self, raw_output, metadata):
        if self.vector:
            x0, y0 = metadata.crop_bounds[:2]
            return [Feature(shapely.Point(x0 + 0.5, y0 + 1.5), {"crop": metadata.crop_idx, "score": float(raw_output[0, 0, 0])})]
        out = np.transpose(np.asarray(raw_output), (2, 0, 1))
        return {self.selector_key: out} if self.selector_key else out

    def visualize(self, input_dict, target_dict, output):
        img = np.asarray(input_dict["image"])[0, :, :, :1].astype(np.uint8)
        return {"image": np.repeat(img, 3, axis=-1), "pred": np.zeros((2, 3, 3), np.uint8)}


def make_predict_parts(root, task, writers, predict_config, **dm_kwargs):
    """(trainer, lm, data) stand-ins for run_predict."""
    dm = RslearnDataModule(
        {"image": DataInput("raster", ["img"], bands=["v"], passthrough=True)}, task, root, batch_size=3, predict_config=predict_config, test_config=predict_config, **dm_kwargs
    )
    model = lambda inputs, training=False: {"outputs": inputs["image"][:, 0]}  # noqa: E731
    lm = types.SimpleNamespace(model=model, task=task)
    trainer = types.SimpleNamespace(callbacks=writers, steps=lambda dm, stage: None)
    return trainer, lm, dm


@pytest.fixture
def predict_dataset(tmp_path):
    root = str(tmp_path / "ds")
    make_config(
        root,
        {
            "img": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["v"]}]},
            "seg": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["class"]}, {"dtype": "float32", "bands": ["x"]}]},
            "det": {"type": "vector"},
            "det_crs": {"type": "vector", "vector_format": {"class_path": "rslearn.utils.vector_format.GeojsonVectorFormat", "init_args": {"coordinate_mode": "crs"}}},
        },
    )
    rng = np.random.default_rng(0)
    images = {}
    for name, bounds in (("a", [100, -50, 115, -40]), ("b", [-7, 3, 9, 11])):
        w = add_window(root, name, bounds, group="pred")
        arr = rng.integers(0, 250, size=(1, bounds[3] - bounds[1], bounds[2] - bounds[0])).astype(np.uint8)
        add_raster(w, "img", ["v"], arr, bounds)
        images[name] = (bounds, arr)
    return root, images


CROPS = SplitConfig(groups=["pred"], load_all_crops=True, crop_size=8, overlap_pixels=2)


@pytest.mark.parametrize("cache", [False, True])
def test_predict_raster_round_trip(predict_dataset, tmp_path, cache):
    root, images = predict_dataset
    writer = instantiate(
        {
            "class_path": "rslearn.train.prediction_writer.RslearnWriter",
            "init_args": {"output_layer": "seg", "selector": ["segment"], "merger": {"class_path": "rslearn.train.prediction_writer.RasterMerger", "init_args": {"overlap_pixels": 2}}},
        },
        "trainer.callbacks.0",
    )
    kwargs = {"cache_dir": str(tmp_path / "cache")} if cache else {}
    run_predict(*make_predict_parts(root, EchoTask(selector_key="segment"), [writer], CROPS, **kwargs))
    for name, (bounds, arr) in images.items():
        layer_dir = os.path.join(root, "windows/pred", name, "layers/seg")
        assert sorted(os.listdir(layer_dir)) == ["class", "completed"]  # first band set's directory
        assert os.listdir(os.path.join(layer_dir, "class")) == ["geotiff.tif"]  # no temporary files left
        with rasterio.open(os.path.join(layer_dir, "class/geotiff.tif")) as src:
            assert src.dtypes == ("uint8",) and src.crs.to_string() == "EPSG:32610"
            assert tuple(src.transform)[:6] == (10.0, 0.0, bounds[0] * 10.0, 0.0, -10.0, bounds[1] * -10.0)
            assert (src.width, src.height) == (bounds[2] - bounds[0], bounds[3] - bounds[1])
            # Every crop echoes its pixels, so the merged raster is the input raster.
            np.testing.assert_array_equal(src.read(), arr)
        # The output reads back as a layer of the dataset.
        win = Window.load(os.path.join(root, "windows/pred", name))
        assert ("seg", 0) in win.completed_layers()
    assert sorted(writer.windows_written) == ["pred/a", "pred/b"]


def test_predict_vector_round_trip_and_output_path(predict_dataset, tmp_path):
    root, images = predict_dataset
    out_root = str(tmp_path / "elsewhere")
    writers = [RslearnWriter("det"), RslearnWriter("det_crs", output_path=out_root)]
    run_predict(*make_predict_parts(root, EchoTask(vector=True), writers, CROPS))
    bounds, arr = images["a"]
    path = os.path.join(root, "windows/pred/a/layers/det/data.geojson")
    fc = json.load(open(path))
    assert fc["properties"] == {"crs": "EPSG:32610", "x_resolution": 10.0, "y_resolution": -10.0}
    # 15x10 window, crop 8 overlap 2: x origins 100, 106, 107; y origins -50, -48 -> 6 points.
    coords = [f["geometry"]["coordinates"] for f in fc["features"]]
    assert coords == [[x + 0.5, y + 1.5] for x in (100, 106, 107) for y in (-50, -48)]
    assert [f["properties"]["crop"] for f in fc["features"]] == list(range(6))
    assert fc["features"][0]["properties"]["score"] == float(arr[0, 0, 0])
    # CRS mode, written under output_path: CRS units; reads back to the same pixels.
    crs_path = os.path.join(out_root, "windows/pred/a/layers/det_crs/data.geojson")
    fc2 = json.load(open(crs_path))
    assert "crs" in fc2 and fc2["features"][0]["geometry"]["coordinates"] == [1005.0, 485.0]
    feats = read_features_for_window(crs_path, PROJ, bounds)
    assert [(f.geometry.x, f.geometry.y) for f in feats] == [tuple(c) for c in coords]
    assert os.path.exists(os.path.join(out_root, "windows/pred/a/layers/det_crs/completed"))
    assert not os.path.exists(os.path.join(root, "windows/pred/a/layers/det_crs"))


def test_writer_errors(predict_dataset):
    root, _ = predict_dataset
    with pytest.raises(KeyError, match="Output layer 'nope' not found"):
        RslearnWriter("nope").setup(root)
    writer = RslearnWriter("nope", layer_config={"type": "raster", "band_sets": [{"dtype": "int16", "bands": ["q"]}]})
    writer.setup(root)
    assert writer.layer_config.band_sets[0].dtype == "int16" and isinstance(writer.merger, RasterMerger)


def test_visualize_dir_names(predict_dataset, tmp_path):
    root, images = predict_dataset
    _, lm, data = make_predict_parts(root, EchoTask(), [], SplitConfig(groups=["pred"], crop_size=8, load_all_crops=True))
    out = str(tmp_path / "vis")
    n = write_visualizations(lm, data, out, "test")
    files = sorted(os.listdir(out))
    assert n == len(files) == 2 * (2 * 2 + 2 * 1)  # a: 2x2 crops, b: 2x1 crops; 2 images each
    assert "a_100_-50_image.png" in files and "a_107_-48_pred.png" in files and "b_-7_3_image.png" in files
    import tensorflow as tf

    png = tf.io.decode_png(open(os.path.join(out, "a_100_-50_image.png"), "rb").read()).numpy()
    np.testing.assert_array_equal(png[:, :, 0], images["a"][1][0, :8, :8])
    write_json(os.path.join(out, "x.json"), {})
