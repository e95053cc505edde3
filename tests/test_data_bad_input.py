"""Bad input: clear errors naming window and layer, or skipped windows on request."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import RawTask, add_raster, add_vector, add_window, collect, make_config, point

from rskeras.dataset.window import WindowError
from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, DataReadError, SplitConfig

LAYERS = {
    "img": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["a"]}, {"dtype": "float32", "bands": ["b"]}]},
    "lbl": {"type": "vector"},
}
INPUTS = {"image": DataInput("raster", ["img"], bands=["a", "b"]), "lbl": DataInput("vector", ["lbl"])}


def good_window(root, name):
    w = add_window(root, name, [0, 0, 8, 8])
    add_raster(w, "img", ["a"], np.ones((1, 8, 8), np.float32), [0, 0, 8, 8])
    add_raster(w, "img", ["b"], np.ones((1, 8, 8), np.float32), [0, 0, 8, 8])
    add_vector(w, "lbl", [point(1, 1)])
    return w


def corrupt_geotiff(root, w):
    path = add_raster(w, "img", ["a"], np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32), [0, 0, 8, 8])
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 6 // 10])  # truncated pixel data


def missing_band_set(root, w):
    import shutil

    shutil.rmtree(f"{w}/layers/img/b")


def invalid_geometry(root, w):
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]}
    open(f"{w}/layers/lbl/data.geojson", "w").write(json.dumps(fc))


def nan_pixels(root, w):
    arr = np.ones((1, 8, 8), np.float32)
    arr[0, 3, 4] = np.nan
    add_raster(w, "img", ["a"], arr, [0, 0, 8, 8])


CASES = {
    "corrupt_geotiff": (corrupt_geotiff, r"window default/bad, input image, layer img: cannot read raster .*geotiff\.tif"),
    "missing_band_set": (missing_band_set, r"window default/bad, input image, layer img: cannot read raster .*/layers/img/b/geotiff\.tif"),
    "invalid_geometry": (invalid_geometry, r"window default/bad, input lbl, layer lbl: .*data\.geojson: feature 0: invalid geometry"),
    "nan_pixels": (nan_pixels, r"window default/bad, input image, layer img: 1 NaN pixel values"),
}


@pytest.fixture
def bad_dataset(tmp_path, request):
    root = str(tmp_path / "ds")
    make_config(root, LAYERS)
    for name in ("g1", "g2"):
        good_window(root, name)
    w = good_window(root, "bad")
    CASES[request.param][0](root, w)
    return root, CASES[request.param][1]


@pytest.mark.parametrize("bad_dataset", list(CASES), indirect=True)
def test_bad_input_error_names_window_and_layer(bad_dataset):
    root, pattern = bad_dataset
    dm = RslearnDataModule(INPUTS, RawTask(), root, check_nan=True)
    md = dm.model_dataset("val")
    index = [w.name for w in md.windows].index("bad")
    with pytest.raises(DataReadError, match=pattern):
        md.guarded(index, lambda: md.host_unit(index, index))
    # Inside tf.data (py_function) the message still reaches the user.
    with pytest.raises(tf.errors.OpError, match=pattern):
        collect(dm, "val")


@pytest.mark.parametrize("bad_dataset", list(CASES), indirect=True)
@pytest.mark.parametrize("cache", [False, True])
def test_bad_input_skipped_on_request(bad_dataset, tmp_path, caplog, cache):
    root, pattern = bad_dataset
    kwargs = {"cache_dir": str(tmp_path / "cache")} if cache else {}
    dm = RslearnDataModule(INPUTS, RawTask(), root, check_nan=True, skip_bad_windows=True, **kwargs)
    with caplog.at_level(logging.WARNING):
        examples = collect(dm, "val")
    assert sorted(m["window_name"] for _, m in examples) == [b"g1", b"g2"]
    assert [w for w, _ in dm.bad_windows] == ["default/bad"]
    assert "skipping bad window (1 skipped so far)" in caplog.text or "1 bad windows skipped" in caplog.text


def test_malformed_window_metadata(tmp_path, caplog):
    root = str(tmp_path)
    make_config(root, LAYERS)
    good_window(root, "g1")
    w = good_window(root, "broken")
    open(f"{w}/metadata.json", "w").write('{"projection": {"crs": "EPSG:32610", "x_resolution": 10')
    w2 = good_window(root, "badbounds")
    meta = json.load(open(f"{w2}/metadata.json"))
    meta["bounds"] = [0, 0, 8]
    json.dump(meta, open(f"{w2}/metadata.json", "w"))
    with pytest.raises(WindowError, match=r"window default/(broken|badbounds): (malformed metadata.json|metadata.json: 'bounds')"):
        RslearnDataModule(INPUTS, RawTask(), root).model_dataset("val")
    dm = RslearnDataModule(INPUTS, RawTask(), root, skip_bad_windows=True)
    with caplog.at_level(logging.WARNING):
        assert [w.name for w in dm.model_dataset("val").windows] == ["g1"]
    assert sorted(w for w, _ in dm.bad_windows) == ["default/badbounds", "default/broken"]
    assert "skipping window default/broken" in caplog.text


def test_bad_layer_directory_name_and_missing_layer(tmp_path):
    root = str(tmp_path)
    make_config(root, LAYERS)
    w = good_window(root, "w")
    (tmp_path / "windows/default/w/layers/img.1.2").mkdir()
    with pytest.raises(WindowError, match="window default/w: invalid layer directory name 'img.1.2'"):
        RslearnDataModule(INPUTS, RawTask(), root).model_dataset("val")
    (tmp_path / "windows/default/w/layers/img.1.2").rmdir()
    dm = RslearnDataModule({"x": DataInput("raster", ["img"], bands=["zz"])}, RawTask(), root)
    md = dm.model_dataset("val")
    with pytest.raises(DataReadError, match=r"window default/w, input x, layer img: band\(s\) \['zz'\] of layer 'img' are in no band set"):
        md.host_unit(0, 0)
    assert w


def test_crop_size_must_suit_resolution_factor(tmp_path):
    from rskeras.utils.geometry import ResolutionFactor

    root = str(tmp_path)
    make_config(root, LAYERS)
    good_window(root, "w")
    inputs = {"x": DataInput("raster", ["img"], bands=["a"], resolution_factor=ResolutionFactor(denominator=4))}
    with pytest.raises(ValueError, match="crop_size \\[6, 6\\] is not a multiple of its resolution factor denominator 4"):
        RslearnDataModule(inputs, RawTask(), root, train_config=SplitConfig(crop_size=6)).model_dataset("train")
