"""Reading rslearn datasets: windows, markers, band sets, vectors, split selection."""

import json
import os
import shutil

import numpy as np
import pytest

from rskeras.config.dataset import band_set_dir_name
from rskeras.dataset.dataset import Dataset
from rskeras.dataset.window import Window, WindowError
from rskeras.train.dataset import DataInput, DataReadError, ModelDataset, SplitConfig, select_windows, window_sort_key
from rskeras.utils.geometry import Projection
from rskeras.utils.raster_format import read_geotiff, write_geotiff

S2 = DataInput("raster", ["sentinel2"], bands=["B04", "B03", "B02"], passthrough=True)
LABEL = DataInput("vector", ["label"], is_target=True)


@pytest.fixture()
def dataset_copy(sample_dataset, tmp_path):
    """A private copy of the sample dataset that a test may damage."""
    dst = tmp_path / "ds"
    shutil.copytree(sample_dataset, dst)
    return str(dst)


def test_band_set_dir_names():
    assert band_set_dir_name(["B04", "B03", "B02"]) == "B04_B03_B02"
    # an underscore in a band name: SHA-256 of the Python-style JSON list
    import hashlib

    assert band_set_dir_name(["a_b", "c"]) == hashlib.sha256(b'["a_b", "c"]').hexdigest()
    long = [f"BAND{i:02d}" for i in range(20)]
    assert band_set_dir_name(long) == hashlib.sha256("_".join(long).encode()).hexdigest()


def test_read_example_shapes_and_values(sample_dataset):
    ds = Dataset(sample_dataset)
    md = ModelDataset(ds, {"image": S2, "targets": LABEL}, SplitConfig(tags={"split": "val"}), ["category"], deterministic=True)
    raw, meta = md.read_example(0)
    assert raw["image"].shape == (1, 32, 32, 3) and raw["image"].dtype == np.float32
    window = md.windows[0]
    # same values as reading the band-set GeoTIFF directly (B04, B03, B02 are bands 4, 3, 2)
    path = window.raster_path("sentinel2", ds.layers["sentinel2"].band_sets[0].bands)
    direct = read_geotiff(path, window.projection, window.bounds, [4, 3, 2])
    np.testing.assert_array_equal(raw["image"][0], direct.transpose(1, 2, 0).astype(np.float32))
    assert raw["targets"]["has_property"]["category"].tolist() == [True]
    assert meta["window_name"] == window.name and tuple(meta["crop_bounds"]) == window.bounds


def test_windows_sorted_by_sha256_and_num_samples(sample_dataset):
    ds = Dataset(sample_dataset)
    windows = select_windows(ds, {"image": S2}, SplitConfig(groups=["default"]))
    keys = [window_sort_key(w) for w in windows]
    assert keys == sorted(keys) and len(windows) == 40
    first = select_windows(ds, {"image": S2}, SplitConfig(groups=["default"], num_samples=5))
    assert [w.name for w in first] == [w.name for w in windows[:5]]


def test_tags_falsy_value_means_key_exists(sample_dataset):
    ds = Dataset(sample_dataset)
    all_default = select_windows(ds, {"image": S2}, SplitConfig(groups=["default"], tags={"split": ""}))
    assert len(all_default) == 40
    val = select_windows(ds, {"image": S2}, SplitConfig(groups=["default"], tags={"split": "val"}))
    assert 0 < len(val) < 40 and all(w.options["split"] == "val" for w in val)


def test_missing_completed_marker_skips_window(dataset_copy):
    ds = Dataset(dataset_copy)
    windows = select_windows(ds, {"image": S2, "targets": LABEL}, SplitConfig(groups=["default"]))
    victim = windows[3]
    os.remove(os.path.join(victim.path, "layers", "label", "completed"))
    after = select_windows(ds, {"image": S2, "targets": LABEL}, SplitConfig(groups=["default"]))
    assert victim.name not in [w.name for w in after] and len(after) == len(windows) - 1
    # an optional input does not drop the window; it reads as no features
    optional = DataInput("vector", ["label"], is_target=True, required=False)
    md = ModelDataset(ds, {"image": S2, "targets": optional}, SplitConfig(names=[victim.name]), ["category"], True)
    raw, _ = md.read_example(0)
    assert raw["targets"]["bounds"].shape == (0, 4)


def test_band_in_no_band_set_names_layer_and_band(sample_dataset):
    ds = Dataset(sample_dataset)
    bad = DataInput("raster", ["sentinel2"], bands=["B04", "B13"])
    md = ModelDataset(ds, {"image": bad}, SplitConfig(groups=["default"], num_samples=1), [], True)
    with pytest.raises(DataReadError, match=r"band\(s\) \['B13'\] of layer 'sentinel2' are in no band set"):
        md.read_example(0)


def test_malformed_metadata_names_window(dataset_copy):
    ds = Dataset(dataset_copy)
    path = os.path.join(dataset_copy, "windows", "default", "win_0007", "metadata.json")
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(WindowError, match=r"window default/win_0007: malformed metadata.json"):
        select_windows(ds, {"image": S2}, SplitConfig(groups=["default"]))
    with open(path, "w") as f:
        json.dump({"projection": {"crs": "EPSG:32610", "x_resolution": 10, "y_resolution": -10}, "bounds": [0, 0, 1]}, f)
    with pytest.raises(WindowError, match=r"window default/win_0007: .*'bounds' must be a list of 4 integers"):
        Window.load(os.path.dirname(path))


def test_raster_warp_to_window_grid(tmp_path):
    """A raster stored at 20 m is read onto a 10 m window grid (nearest) with nodata fill outside."""
    coarse = Projection("EPSG:32610", 20.0, -20.0)
    data = np.arange(16, dtype=np.uint16).reshape(1, 4, 4) + 1
    path = str(tmp_path / "r.tif")
    write_geotiff(path, data, coarse, (100, -204, 104, -200), nodata=0)
    fine = Projection("EPSG:32610", 10.0, -10.0)
    out = read_geotiff(path, fine, (200, -408, 210, -400))  # 10 wide (2 px beyond the raster), 8 high
    assert out.shape == (1, 8, 10)
    np.testing.assert_array_equal(out[0, :, :8], np.repeat(np.repeat(data[0], 2, 0), 2, 1))
    assert (out[0, :, 8:] == 0).all()


def test_vector_features_in_window_pixel_coordinates(sample_dataset):
    ds = Dataset(sample_dataset)
    di = DataInput("vector", ["objects"])
    windows = select_windows(ds, {"o": di}, SplitConfig(groups=["default"]))
    for w in windows:
        md = ModelDataset(ds, {"o": di}, SplitConfig(names=[w.name]), ["category"], True)
        raw, _ = md.read_example(0)
        centroids = raw["o"]["centroid"]
        if len(centroids):
            assert (centroids[:, 0] >= w.bounds[0]).all() and (centroids[:, 0] <= w.bounds[2]).all()
            assert (centroids[:, 1] >= w.bounds[1]).all() and (centroids[:, 1] <= w.bounds[3]).all()
            assert set(raw["o"]["properties"]["category"].tolist()) == {b"vessel"}
            return
    pytest.fail("the sample dataset has no vessels")
