"""Reading DataInputs into examples through tf.data (spec dataset_format.md §4-7)."""

import datetime
import os
import random
import shutil
import time

import numpy as np
import tensorflow as tf
import pytest
from data_helpers import PROJ, RawTask, add_raster, add_vector, add_window, box, by_window, collect, make_config, point, write_json

from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, SplitConfig, random_crop_bounds
from rskeras.utils.geometry import ResolutionFactor
from rskeras.utils.vector_format import read_features_for_window

BANDS = ["R", "G"]


def module(root, inputs, task=None, **kwargs):
    return RslearnDataModule(inputs=inputs, task=task or RawTask(), path=root, **kwargs)


def ts(day):
    return datetime.datetime(2024, 1, day, tzinfo=datetime.timezone.utc).isoformat()


def test_multi_timestep_sidecar_band_order_and_timestamps(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": ["R", "G", "B"]}]}})
    c, t = 3, 2
    # File band c*T + t holds value 10*c + t everywhere.
    array = np.stack([np.full((4, 5), 10 * ci + ti, np.uint16) for ci in range(c) for ti in range(t)])
    sidecar = {"num_channels": c, "num_timesteps": t, "timestamps": [[ts(1), ts(2)], [ts(5), ts(6)]]}
    w = add_window(root, "w", [0, 0, 5, 4])
    add_raster(w, "s2", ["R", "G", "B"], array, [0, 0, 5, 4], sidecar=sidecar)
    inputs = {"image": DataInput("raster", ["s2"], bands=["B", "R"], load_timestamps=True)}
    (ex, _), = collect(module(root, inputs), "val")
    image = ex["image"]
    assert image.shape == (2, 4, 5, 2) and image.dtype == np.float32
    assert image[0, 0, 0].tolist() == [20, 0] and image[1, 0, 0].tolist() == [21, 1]
    day = 86400.0
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    np.testing.assert_array_equal(ex["image_timestamps"], [[start, start + day], [start + 4 * day, start + 5 * day]])


def test_multi_timestep_without_timestamps_is_an_error(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": ["R"]}]}})
    w = add_window(root, "w", [0, 0, 2, 2])
    add_raster(w, "s2", ["R"], np.zeros((2, 2, 2), np.uint16), [0, 0, 2, 2], sidecar={"num_channels": 1, "num_timesteps": 2, "timestamps": None})
    md = module(root, {"image": DataInput("raster", ["s2"], bands=["R"])}).model_dataset("val")
    with pytest.raises(ValueError, match="window default/w, input image, layer s2: multi-timestep raster"):
        md.host_unit(0, 0)


@pytest.fixture
def groups_dataset(tmp_path):
    """Window with item groups 0, 1, 3 of 's2' (values 0, 1, 3) and a 'b' band set."""
    root = str(tmp_path)
    make_config(
        root,
        {"s2": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["R", "G"]}, {"dtype": "int16", "bands": ["G", "N"]}]}},
    )
    w = add_window(root, "w", [0, 0, 3, 3])
    for g in (0, 1, 3):
        add_raster(w, "s2", ["R", "G"], np.stack([np.full((3, 3), g, np.uint8), np.full((3, 3), 100 + g, np.uint8)]), [0, 0, 3, 3], group_idx=g)
        add_raster(w, "s2", ["G", "N"], np.stack([np.full((3, 3), -7, np.int16), np.full((3, 3), -g - 50, np.int16)]), [0, 0, 3, 3], group_idx=g)
    return root


def test_item_groups_concatenated_along_time(groups_dataset):
    inputs = {"image": DataInput("raster", ["s2"], bands=["N", "G", "R"], load_all_item_groups=True, load_all_layers=True, dtype="INT32")}
    (ex, _), = collect(module(groups_dataset, inputs), "val")
    image = ex["image"]
    assert image.dtype == np.int32 and image.shape == (3, 3, 3, 3)
    # G comes from the first band set listing it (uint8 100+g), N from the second.
    assert image[:, 0, 0].tolist() == [[-50, 100, 0], [-51, 101, 1], [-53, 103, 3]]
    inputs = {"image": DataInput("raster", ["s2.3", "s2"], bands=["R"], load_all_layers=True)}
    (ex, _), = collect(module(groups_dataset, inputs), "val")
    assert ex["image"][:, 0, 0, 0].tolist() == [3, 0]  # in the order listed


def test_random_item_group_choice_is_seeded_per_example(groups_dataset):
    inputs = {"image": DataInput("raster", ["s2", "s2.1", "s2.2", "s2.3"], bands=["R"])}
    (ex, _), = collect(module(groups_dataset, inputs), "val")
    # Candidates are the completed groups (s2.2 is missing); random.Random(index 0).
    expected = [0, 1, 3][random.Random(0).choice(range(3))]
    assert ex["image"][0, 0, 0, 0] == expected
    dm = module(groups_dataset, inputs, use_in_memory_dataset=True)
    assert collect(dm, "val")[0][0]["image"][0, 0, 0, 0] == expected
    seen = {int(ex["image"][0, 0, 0, 0]) for ex, _ in collect(dm, "train", epochs=12)}
    assert seen <= {0, 1, 3} and len(seen) > 1  # train: random every epoch (from the cache)


def test_zoom_offset_band_sets_are_warped_from_their_own_georeference(tmp_path):
    root = str(tmp_path)
    make_config(
        root,
        {
            "fine": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["F"], "zoom_offset": 1}]},
            "coarse": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["C"], "zoom_offset": -1}]},
        },
    )
    bounds = [10, 20, 14, 24]
    expected = np.arange(16, dtype=np.uint8).reshape(4, 4)
    w = add_window(root, "w", bounds)
    # zoom_offset 1: stored at 2x the window resolution (5 m), bounds doubled; 2x2 blocks.
    fine = np.kron(expected, np.ones((2, 2), np.uint8))[None]
    add_raster(w, "fine", ["F"], fine, [20, 40, 28, 48], x_res=5.0, y_res=-5.0)
    # zoom_offset -1: stored at 20 m, bounds halved; each pixel covers 2x2 window pixels.
    coarse = np.asarray([[1, 2], [3, 4]], np.uint8)[None]
    add_raster(w, "coarse", ["C"], coarse, [5, 10, 7, 12], x_res=20.0, y_res=-20.0)
    inputs = {"f": DataInput("raster", ["fine"], bands=["F"]), "c": DataInput("raster", ["coarse"], bands=["C"])}
    (ex, _), = collect(module(root, inputs), "val")
    np.testing.assert_array_equal(ex["f"][0, :, :, 0], expected)
    np.testing.assert_array_equal(ex["c"][0, :, :, 0], np.kron([[1, 2], [3, 4]], np.ones((2, 2))))
    # resolution_factor 1/2 reads the fine band set at 20 m: 2x2 output.
    inputs = {"f": DataInput("raster", ["fine"], bands=["F"], resolution_factor=ResolutionFactor(denominator=2))}
    (ex, _), = collect(module(root, inputs), "val")
    assert ex["f"].shape == (1, 2, 2, 1)
    inputs = {"c": DataInput("raster", ["coarse"], bands=["C"], resolution_factor=ResolutionFactor(numerator=2))}
    (ex, _), = collect(module(root, inputs), "val")
    np.testing.assert_array_equal(ex["c"][0, :, :, 0], np.kron([[1, 2], [3, 4]], np.ones((4, 4))))


def test_nodata_fill_outside_the_stored_raster(tmp_path):
    root = str(tmp_path)
    make_config(root, {"a": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["x"]}]}, "b": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["y"]}]}})
    w = add_window(root, "w", [0, 0, 4, 4])
    add_raster(w, "a", ["x"], np.full((1, 2, 4), 9, np.uint8), [0, 0, 4, 2], nodata=7)  # top half only
    add_raster(w, "b", ["y"], np.full((1, 2, 4), 9, np.uint8), [0, 2, 4, 4])  # bottom half, no nodata
    inputs = {"a": DataInput("raster", ["a"], bands=["x"]), "b": DataInput("raster", ["b"], bands=["y"])}
    (ex, _), = collect(module(root, inputs), "val")
    np.testing.assert_array_equal(ex["a"][0, :, :, 0], [[9] * 4, [9] * 4, [7] * 4, [7] * 4])
    np.testing.assert_array_equal(ex["b"][0, :, :, 0], [[0] * 4, [0] * 4, [9] * 4, [9] * 4])
    # A different CRS goes through the warped path; same rule for the fill.
    md = module(root, inputs).model_dataset("val")
    unit = md.read_unit(0, (-2, -2, 2, 2), [0, 0])
    np.testing.assert_array_equal(unit["inputs"]["a"]["image"][0, :, :, 0], [[7, 7, 7, 7], [7, 7, 7, 7], [7, 7, 9, 9], [7, 7, 9, 9]])


@pytest.fixture
def crops_dataset(tmp_path):
    """Two 12x10 windows with pixel value = 1000*window + 100*row + col (outside: nodata 5),
    stored on a larger raster, and box labels."""
    root = str(tmp_path)
    make_config(root, {"img": {"type": "raster", "band_sets": [{"dtype": "int16", "bands": ["v"]}]}, "lbl": {"type": "vector"}})
    for i, (x0, y0) in enumerate([(100, 200), (-50, 30)]):
        w = add_window(root, f"w{i}", [x0, y0, x0 + 12, y0 + 10], options={"split": "val"})
        rows, cols = np.mgrid[-4:14, -4:16]
        arr = (1000 * i + 100 * rows + cols).astype(np.int16)
        arr[(rows < 0) | (rows >= 10) | (cols < 0) | (cols >= 12)] = 5
        add_raster(w, "img", ["v"], arr[None], [x0 - 4, y0 - 4, x0 + 16, y0 + 14], nodata=5)
        add_vector(w, "lbl", [box(x0 + 1, y0 + 1, x0 + 3, y0 + 3, k="tl"), point(x0 + 10.5, y0 + 8.5, k="br")])
    return root


INPUTS = {"image": DataInput("raster", ["img"], bands=["v"], dtype="INT32", passthrough=True), "lbl": DataInput("vector", ["lbl"])}


def expected_crop(window, crop, nodata=5, zero_outside=False):
    """Pixel values of ``crop`` (absolute bounds) of window ``window``."""
    wx0, wy0 = [(100, 200), (-50, 30)][window]
    rows, cols = np.mgrid[crop[1] - wy0 : crop[3] - wy0, crop[0] - wx0 : crop[2] - wx0]
    out = 1000 * window + 100 * rows + cols
    inside = (rows >= 0) & (rows < 10) & (cols >= 0) & (cols < 12)
    fill = 0 if zero_outside else nodata
    # The stored raster extends 4 px around the window with the nodata value.
    return np.where(inside, out, fill)


@pytest.mark.parametrize("crop", [6, 14])
def test_random_crops_deterministic_and_identical_across_cache_modes(crops_dataset, tmp_path, crop):
    results = {}
    for mode, kwargs in {"disk": {}, "cache": {"cache_dir": str(tmp_path / "cache")}, "memory": {"use_in_memory_dataset": True}}.items():
        dm = module(crops_dataset, INPUTS, task=RawTask(["k"]), val_config=SplitConfig(crop_size=crop), **kwargs)
        results[mode] = collect(dm, "val")
    md = dm.model_dataset("val")
    for i, (ex, meta) in enumerate(results["disk"]):
        w = md.windows[i]
        expected_bounds = random_crop_bounds(w.bounds, (crop, crop), random.Random(i))
        assert tuple(meta["crop_bounds"]) == expected_bounds
        wi = int(w.name[1])
        np.testing.assert_array_equal(ex["image"][0, :, :, 0], expected_crop(wi, expected_bounds))
        # Vector features are read for the whole window, not the crop (quirk 1).
        assert ex["lbl_k"].tolist() == [b"tl", b"br"]
        for other in ("cache", "memory"):
            ex2, meta2 = results[other][i]
            np.testing.assert_array_equal(ex2["image"], ex["image"])
            np.testing.assert_array_equal(meta2["crop_bounds"], meta["crop_bounds"])
            np.testing.assert_array_equal(ex2["lbl_bounds"], ex["lbl_bounds"])


def test_train_random_crops_change_every_epoch_with_cache(crops_dataset, tmp_path):
    dm = module(crops_dataset, INPUTS, train_config=SplitConfig(crop_size=4), cache_dir=str(tmp_path / "c"))
    seen = set()
    for ex, meta in collect(dm, "train", epochs=4):
        seen.add(tuple(meta["crop_bounds"]))
        wi = 0 if meta["window_bounds"][0] == 100 else 1
        np.testing.assert_array_equal(ex["image"][0, :, :, 0], expected_crop(wi, tuple(meta["crop_bounds"])))
    assert len(seen) > 4


def test_all_crops_iterable_zero_pads_and_filters_vectors(crops_dataset, tmp_path):
    cfg = SplitConfig(crop_size=8, overlap_pixels=2, load_all_crops=True)
    out = {}
    for mode, kwargs in {"disk": {}, "cache": {"cache_dir": str(tmp_path / "c")}}.items():
        out[mode] = collect(module(crops_dataset, INPUTS, task=RawTask(["k"]), predict_config=cfg, **kwargs), "predict")
    examples = out["disk"]
    # 12x10 window, k=8, o=2: x origins 0, 4 (last); y origins 0, 2 (last) -> 4 crops each.
    assert len(examples) == 8
    first = [e for e in examples if e[1]["window_name"] == b"w0"]
    x0, y0 = 100, 200
    assert [tuple(m["crop_bounds"]) for _, m in first] == [
        (x0, y0, x0 + 8, y0 + 8), (x0, y0 + 2, x0 + 8, y0 + 10), (x0 + 4, y0, x0 + 12, y0 + 8), (x0 + 4, y0 + 2, x0 + 12, y0 + 10)
    ]  # fmt: skip
    assert [int(m["crop_idx"]) for _, m in first] == [0, 1, 2, 3] and all(m["num_crops_in_window"] == 4 for _, m in first)
    for ex, m in first:
        np.testing.assert_array_equal(ex["image"][0, :, :, 0], expected_crop(0, tuple(m["crop_bounds"])))
    # Features: only those intersecting the crop (the tl box at rows/cols 1-3, the br
    # point at col 10.5, row 8.5).
    assert [e["lbl_k"].tolist() for e, _ in first] == [[b"tl"], [b"tl"], [], [b"br"]]
    for (a, ma), (b, mb) in zip(out["disk"], out["cache"]):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["lbl_k"].tolist() == b["lbl_k"].tolist()


def test_all_crops_overhanging_window_zero_padded_vs_map_style(crops_dataset):
    cfg = SplitConfig(crop_size=16, load_all_crops=True)
    (ex, m), = by_window(collect(module(crops_dataset, INPUTS, predict_config=cfg), "predict"), "w0")
    assert tuple(m["crop_bounds"]) == (100, 200, 116, 216)
    np.testing.assert_array_equal(ex["image"][0, :, :, 0], expected_crop(0, (100, 200, 116, 216), zero_outside=True))
    (ex, m), = by_window(collect(module(crops_dataset, INPUTS, predict_config=cfg, use_map_all_crops_dataset=True), "predict"), "w0")
    np.testing.assert_array_equal(ex["image"][0, :, :, 0], expected_crop(0, (100, 200, 116, 216)))


def test_optional_input_missing_gives_empty_value(crops_dataset):
    inputs = dict(INPUTS, extra=DataInput("raster", ["missing"], bands=["v"], required=False), more=DataInput("vector", ["none"], required=False))
    ex, _ = collect(module(crops_dataset, inputs), "val")[0]
    assert ex["extra"].shape == (0, 10, 12, 1) and ex["more_bounds"].shape == (0, 4)


def test_skip_targets_drops_target_inputs(crops_dataset):
    inputs = dict(INPUTS, lbl=DataInput("vector", ["lbl"], is_target=True))
    dm = module(crops_dataset, inputs, predict_config=SplitConfig(skip_targets=True))
    assert list(dm.model_dataset("predict").inputs) == ["image"] and list(dm.model_dataset("val").inputs) == ["image", "lbl"]


def test_cache_invalidation(crops_dataset, tmp_path):
    cache = str(tmp_path / "cache")
    dm = module(crops_dataset, INPUTS, cache_dir=cache)
    before = collect(dm, "val")
    units = sorted(os.listdir(os.path.join(cache, os.listdir(cache)[0])))
    assert len([u for u in units if u.endswith(".unit")]) == 2
    # Rewrite one window's raster: only that window is decoded again, with the new values.
    path = os.path.join(crops_dataset, "windows/default/w0/layers/img/v/geotiff.tif")
    import rasterio

    with rasterio.open(path) as src:
        arr, profile = src.read(), src.profile
    time.sleep(0.01)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr + 1)
    after = collect(module(crops_dataset, INPUTS, cache_dir=cache), "val")
    names = [m["window_name"] for _, m in after]
    i0 = names.index(b"w0")
    np.testing.assert_array_equal(after[i0][0]["image"], before[i0][0]["image"] + 1)
    units2 = sorted(u for u in os.listdir(os.path.join(cache, os.listdir(cache)[0])) if u.endswith(".unit"))
    assert len(units2) == 2 and len(set(units2) & set(units)) == 1  # stale unit pruned
    # Another inputs config uses another key directory.
    collect(module(crops_dataset, {"image": DataInput("raster", ["img"], bands=["v"])}, cache_dir=cache), "val")
    assert len(os.listdir(cache)) == 2
    shutil.rmtree(cache)


@pytest.mark.parametrize("mode", ["pixel", "crs", "wgs84"])
def test_vector_coordinate_modes(tmp_path, mode):
    from rskeras.utils.geometry import Projection
    from rskeras.utils.vector_format import features_to_geojson
    from rskeras.utils.feature import Feature
    import shapely

    projection = Projection.from_json(PROJ)
    feats = [Feature(shapely.Point(54010.5, -520020.25), {"a": 1}), Feature(shapely.box(54000, -520064, 54010, -520050), {"a": 2})]
    fc = features_to_geojson(feats, projection, mode)
    if mode == "pixel":
        assert fc["properties"] == PROJ and list(fc["features"][0]["geometry"]["coordinates"]) == [54010.5, -520020.25]
    elif mode == "crs":
        assert "crs" in fc and list(fc["features"][0]["geometry"]["coordinates"]) == [540105.0, 5200202.5]
    else:
        lon, lat = fc["features"][0]["geometry"]["coordinates"]
        assert -124 < lon < -122 and 46 < lat < 48  # UTM 10N near x=540 km, y=5200 km
    path = str(tmp_path / "data.geojson")
    write_json(path, fc)
    got = read_features_for_window(path, projection, (54000, -520064, 54064, -520000))
    assert [f.properties["a"] for f in got] == [1, 2]
    tol = 1e-6 if mode != "wgs84" else 1e-3
    assert abs(got[0].geometry.x - 54010.5) < tol and abs(got[0].geometry.y + 520020.25) < tol
    np.testing.assert_allclose(got[1].geometry.bounds, (54000, -520064, 54010, -520050), atol=tol * 10)
    # Only features intersecting the bounds are returned.
    assert [f.properties["a"] for f in read_features_for_window(path, projection, (54005, -520060, 54009, -520055))] == [2]


def test_sampler_in_data_module(crops_dataset):
    from rskeras.train.dataset import RandomSamplerFactory

    dm = module(crops_dataset, INPUTS, train_config=SplitConfig(sampler=RandomSamplerFactory(replacement=True, num_samples=5)), batch_size=2)
    assert len(collect(dm, "train")) == 5 and dm.num_batches("train") == 3


def test_whole_batches_give_a_static_batch_size(crops_dataset):
    from rskeras.train.dataset import RandomSamplerFactory

    def dm(num_samples, batch_size, **kwargs):
        split = SplitConfig(sampler=RandomSamplerFactory(replacement=True, num_samples=num_samples))
        return module(crops_dataset, INPUTS, train_config=split, batch_size=batch_size, **kwargs)

    assert not dm(5, 2).whole_batches("train")  # a last batch of one
    whole = dm(4, 2)
    assert whole.whole_batches("train") and whole.num_examples("train") == 4
    # Batched with drop_remainder, it loses nothing and the batch size is static.
    ds = whole.tf_dataset("train", drop_remainder=True)
    assert all(spec.shape[0] == 2 for spec in tf.nest.flatten(ds.element_spec))
    assert sum(int(tf.nest.flatten(b)[0].shape[0]) for b in ds) == 4
    # Windows that may drop out while reading: never assumed whole.
    assert not dm(4, 2, skip_bad_windows=True).whole_batches("train")


def test_resolution_factor_crops_identical_with_and_without_cache(tmp_path):
    root = str(tmp_path / "ds")
    make_config(root, {"img": {"type": "raster", "band_sets": [{"dtype": "int16", "bands": ["v"]}]}})
    for i, origin in enumerate([(3, 5), (-9, 2)]):  # window origins not multiples of 2
        b = [origin[0], origin[1], origin[0] + 16, origin[1] + 16]
        w = add_window(root, f"w{i}", b)
        add_raster(w, "img", ["v"], np.arange(256, dtype=np.int16).reshape(1, 16, 16) + 1000 * i, b)
    inputs = {
        "half": DataInput("raster", ["img"], bands=["v"], resolution_factor=ResolutionFactor(denominator=2)),
        "double": DataInput("raster", ["img"], bands=["v"], resolution_factor=ResolutionFactor(numerator=2)),
    }
    results = [collect(module(root, inputs, val_config=SplitConfig(crop_size=8), **kw), "val") for kw in ({}, {"cache_dir": str(tmp_path / "c")})]
    for (a, ma), (b, mb) in zip(*results):
        assert a["half"].shape == (1, 4, 4, 1) and a["double"].shape == (1, 16, 16, 1)
        np.testing.assert_array_equal(a["half"], b["half"])
        np.testing.assert_array_equal(a["double"], b["double"])
        np.testing.assert_array_equal(ma["crop_bounds"], mb["crop_bounds"])
        # numerator 2: every window pixel becomes a 2x2 block of the crop.
        wb = ma["window_bounds"]
        cb = ma["crop_bounds"]
        base = 1000 * (0 if wb[0] == 3 else 1)
        crop = np.arange(256).reshape(16, 16)[cb[1] - wb[1] : cb[3] - wb[1], cb[0] - wb[0] : cb[2] - wb[0]] + base
        np.testing.assert_array_equal(a["double"][0, :, :, 0], np.kron(crop, np.ones((2, 2))))


def test_train_draws_change_every_epoch_under_a_global_tf_seed(crops_dataset, tmp_path):
    """A global TF seed set outside seed_everything (tf.random.set_seed) used to make TF's
    stateful draws repeat every epoch: the train pipeline now always draws from per-element
    seeds that change every epoch."""
    tf.random.set_seed(0)
    try:
        dm = module(crops_dataset, INPUTS, train_config=SplitConfig(crop_size=4), cache_dir=str(tmp_path / "c"))
        seen = {tuple(meta["crop_bounds"]) for _, meta in collect(dm, "train", epochs=4)}
    finally:
        tf.random.set_seed(None)
    assert len(seen) > 4
