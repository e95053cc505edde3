"""Window selection and split options (spec dataset_format.md §3.3, §6, §7) — host side."""

import hashlib
import json
import logging
import random

import numpy as np
import pytest
from data_helpers import add_raster, add_vector, add_window, make_config, mark_completed, point

from rskeras.config.dataset import band_set_dir_name
from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import instantiate
from rskeras.dataset.dataset import Dataset
from rskeras.train.dataset import (
    DataInput,
    ModelDataset,
    RandomSamplerFactory,
    SplitConfig,
    WeightedRandomSamplerFactory,
    all_crop_bounds,
    crop_origins,
    random_crop_bounds,
    select_windows,
)

S2 = {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": ["B1"]}]}


def test_band_set_dir_names():
    assert band_set_dir_name(["B04", "B03", "B02"]) == "B04_B03_B02"
    # An underscore in any band: SHA-256 of the Python-style JSON list.
    assert band_set_dir_name(["B_1", "B2"]) == hashlib.sha256(b'["B_1", "B2"]').hexdigest()
    assert band_set_dir_name(["é_x"]) == hashlib.sha256(b'["\\u00e9_x"]').hexdigest()
    # Joined name longer than 64 characters: SHA-256 of the joined string itself.
    long = [f"BAND{i:02d}" for i in range(12)]
    joined = "_".join(long)
    assert len(joined) > 64
    assert band_set_dir_name(long) == hashlib.sha256(joined.encode()).hexdigest()
    exactly = ["A" * 64]
    assert band_set_dir_name(exactly) == "A" * 64


def test_crop_origins_spec_examples():
    assert crop_origins(0, 15, 8, 2) == [0, 6, 7]
    assert crop_origins(0, 16, 8, 0) == [0, 8]
    assert crop_origins(0, 5, 8, 0) == [0]
    assert crop_origins(10, 14, 8, 2) == [10]
    assert crop_origins(-20, 8, 8, 0) == [-20, -12, -4, 0]
    # Column-major: for each column origin, every row origin.
    assert all_crop_bounds((0, 0, 15, 16), (8, 8), 2) == [
        (0, 0, 8, 8), (0, 6, 8, 14), (0, 8, 8, 16),
        (6, 0, 14, 8), (6, 6, 14, 14), (6, 8, 14, 16),
        (7, 0, 15, 8), (7, 6, 15, 14), (7, 8, 15, 16),
    ]  # fmt: skip


def test_random_crop_bounds_match_python_random():
    rng = random.Random(3)
    expected_rng = random.Random(3)
    b = random_crop_bounds((100, 200, 164, 232), (16, 48), rng)
    ox = expected_rng.randint(0, 48)  # 64 - 16
    oy = expected_rng.randint(-16, 0)  # crop taller than the window overhangs it
    assert b == (100 + ox, 200 + oy, 116 + ox, 248 + oy)


@pytest.fixture
def tagged(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": S2, "out": {"type": "vector"}})
    opts = {"a": {"split": "train"}, "b": {"split": ""}, "c": {"split": 0}, "d": {}, "e": {"split": False}, "f": {"split": "val"}}
    for name, o in opts.items():
        w = add_window(root, name, [0, 0, 4, 4], options=o)
        add_raster(w, "s2", ["B1"], np.zeros((1, 4, 4), np.uint16), [0, 0, 4, 4])
    add_window(root, "p", [0, 0, 4, 4], group="other", options={"split": "train"})
    return root


@pytest.mark.parametrize("value", ["", 0, False, None])
def test_tags_falsy_value_means_key_exists(tagged, value):
    ds = Dataset(tagged)
    windows = select_windows(ds, {}, SplitConfig(groups=["default"], tags={"split": value}))
    assert sorted(w.name for w in windows) == ["a", "b", "c", "e", "f"]


def test_tags_truthy_value_must_match_and_groups_names(tagged):
    ds = Dataset(tagged)
    windows = select_windows(ds, {}, SplitConfig(tags={"split": "train"}))
    assert sorted(w.label for w in windows) == ["default/a", "other/p"]
    windows = select_windows(ds, {}, SplitConfig(groups=["default"], names=["a", "b", "zz"]))
    assert sorted(w.name for w in windows) == ["a", "b"]


def test_missing_group_is_skipped_with_a_warning(tagged, caplog):
    with caplog.at_level(logging.WARNING):
        windows = select_windows(Dataset(tagged), {}, SplitConfig(groups=["default", "nope"]))
    assert len(windows) == 6 and "nope" in caplog.text


def test_sha256_order_and_num_samples(tagged):
    ds = Dataset(tagged)
    windows = select_windows(ds, {}, SplitConfig(groups=["default"]))
    names = [w.name for w in windows]
    assert names == sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    first = select_windows(ds, {}, SplitConfig(groups=["default"], num_samples=2))
    assert [w.name for w in first] == names[:2]


def test_item_group_availability_rules(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": S2})
    one = np.zeros((1, 4, 4), np.uint16)
    w0 = add_window(root, "only_g1", [0, 0, 4, 4])  # group 1 completed, group 0 absent
    add_raster(w0, "s2", ["B1"], one, [0, 0, 4, 4], group_idx=1)
    w1 = add_window(root, "g0_g2", [0, 0, 4, 4])
    add_raster(w1, "s2", ["B1"], one, [0, 0, 4, 4], group_idx=0)
    add_raster(w1, "s2", ["B1"], one, [0, 0, 4, 4], group_idx=2)
    add_raster(add_window(root, "uncompleted", [0, 0, 4, 4]), "s2", ["B1"], one, [0, 0, 4, 4], completed=False)
    ds = Dataset(root)

    def names(di):
        return sorted(w.name for w in select_windows(ds, {"x": di}, SplitConfig()))

    # load_all_item_groups checks group 0 only, even though only_g1 has a completed group.
    assert names(DataInput("raster", ["s2"], bands=["B1"], load_all_item_groups=True)) == ["g0_g2"]
    assert names(DataInput("raster", ["s2.1"], bands=["B1"])) == ["only_g1"]
    assert names(DataInput("raster", ["s2", "s2.1"], bands=["B1"])) == ["g0_g2", "only_g1"]
    assert names(DataInput("raster", ["s2", "s2.2"], bands=["B1"], load_all_layers=True)) == ["g0_g2"]
    assert names(DataInput("raster", ["s2"], bands=["B1"], required=False)) == ["g0_g2", "only_g1", "uncompleted"]
    # Candidates: all completed groups of the layer, ascending.
    md = ModelDataset(ds, {"x": DataInput("raster", ["s2"], bands=["B1"], load_all_item_groups=True, load_all_layers=True)}, SplitConfig(), [], True)
    assert md.num_candidates(0) == [2]


def test_output_layer_skip_inference_if_exists(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": S2, "out": {"type": "vector"}})
    for name in ("done", "todo"):
        add_raster(add_window(root, name, [0, 0, 4, 4]), "s2", ["B1"], np.zeros((1, 4, 4), np.uint16), [0, 0, 4, 4])
    mark_completed(str(tmp_path / "windows/default/done"), "out")
    windows = select_windows(Dataset(root), {}, SplitConfig(output_layer_name_skip_inference_if_exists="out"))
    assert [w.name for w in windows] == ["todo"]


def test_split_config_merge_rules():
    t1, t2 = object(), object()
    default = SplitConfig(groups=["a"], tags={"split": "x"}, transforms=[t1], skip_targets=True, crop_size=8, num_samples=5)
    merged = SplitConfig.merge_and_validate([default, SplitConfig(groups=[], transforms=[t2], skip_targets=False)])
    assert merged.groups == ["a"]  # an empty list does not override
    assert merged.transforms == [t2]  # replaces, never appends
    assert merged.get_skip_targets() is False  # non-null override
    assert merged.tags == {"split": "x"} and merged.num_samples == 5 and merged.get_crop_size() == (8, 8)
    merged = SplitConfig.merge_and_validate([default, SplitConfig(num_samples=0, crop_size=[4, 6])])
    assert merged.num_samples == 5 and merged.get_crop_size() == (4, 6)


def test_split_config_deprecated_spellings():
    with pytest.warns(FutureWarning):
        cfg = SplitConfig.merge_and_validate([SplitConfig(patch_size=10, overlap_ratio=0.25, load_all_patches=True)])
    assert cfg.get_crop_size() == (10, 10) and cfg.get_overlap_pixels() == 2 and cfg.get_load_all_crops()
    # Old in the default, new in the stage: both present after merging -> error.
    with pytest.raises(ValueError, match="both crop_size and patch_size"), pytest.warns(FutureWarning):
        SplitConfig.merge_and_validate([SplitConfig(patch_size=10), SplitConfig(crop_size=8)])
    with pytest.raises(ValueError, match="both load_all_crops and load_all_patches"), pytest.warns(FutureWarning):
        SplitConfig.merge_and_validate([SplitConfig(crop_size=8, load_all_patches=True, load_all_crops=True)])
    with pytest.raises(ValueError, match="requires load_all_crops"):
        SplitConfig.merge_and_validate([SplitConfig(crop_size=8, overlap_pixels=2)])
    with pytest.raises(ValueError, match="non-negative"):
        SplitConfig.merge_and_validate([SplitConfig(crop_size=8, overlap_pixels=-1, load_all_crops=True)])
    with pytest.raises(ValueError, match="requires crop_size"):
        SplitConfig.merge_and_validate([SplitConfig(load_all_crops=True)])


def test_data_input_validation_and_config_forms():
    with pytest.raises(ValueError, match="FLOAT32 or INT32"):
        DataInput("raster", ["s2"], bands=["B1"], dtype="UINT8")
    with pytest.raises(ValueError, match="only one of"):
        DataInput("raster", ["s2"], bands=["B1"], use_all_bands_in_order_of_band_set_idx=0)
    with pytest.raises(ValueError, match="one of bands"):
        DataInput("raster", ["s2"])
    node = {
        "class_path": "rslearn.train.dataset.DataInput",
        "init_args": {
            "data_type": "raster",
            "layers": ["s2"],
            "bands": ["B1"],
            "dtype": "INT32",
            "resolution_factor": {"class_path": "rslearn.utils.geometry.ResolutionFactor", "init_args": {"denominator": 2}},
        },
    }
    di = instantiate(node, "data.init_args.inputs.image")
    assert di.dtype.name == "INT32" and di.resolution_factor.denominator == 2
    node["init_args"]["resolution_factor"] = {"numerator": 3}
    assert instantiate(node, "x").resolution_factor.numerator == 3
    node["init_args"]["dtype"] = "UINT16"
    with pytest.raises(ConfigError, match="FLOAT32 or INT32"):
        instantiate(node, "x")


def test_use_all_bands_in_order_of_band_set_idx(tmp_path):
    root = str(tmp_path)
    make_config(root, {"emb": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["x"]}, {"dtype": "float32", "num_bands": 3}]}})
    ds = Dataset(root)
    assert DataInput("raster", ["emb"], use_all_bands_in_order_of_band_set_idx=1).resolve_bands(ds) == ["B0", "B1", "B2"]
    with pytest.raises(ValueError, match="use_all_bands_in_order_of_band_set_idx=2"):
        DataInput("raster", ["emb"], use_all_bands_in_order_of_band_set_idx=2).resolve_bands(ds)


def test_samplers(tmp_path):
    root = str(tmp_path)
    make_config(root, {"s2": S2})
    for i, weight in enumerate([0.0, 1.0, 3.0]):
        w = add_window(root, f"w{i}", [0, 0, 4, 4], options={"weight": weight})
        add_raster(w, "s2", ["B1"], np.zeros((1, 4, 4), np.uint16), [0, 0, 4, 4])
    md = ModelDataset(Dataset(root), {}, SplitConfig(), [], False)
    sampler = WeightedRandomSamplerFactory("weight", num_samples=400)
    weights = sampler.example_weights(md)
    draws = sampler.draw(len(md), np.random.default_rng(0), weights)
    names = np.asarray([md.windows[i].name for i in draws])
    assert len(draws) == 400 and "w0" not in names
    assert 0.65 < (names == "w2").mean() < 0.85  # 3:1
    perm = RandomSamplerFactory().draw(3, np.random.default_rng(0))
    assert sorted(perm.tolist()) == [0, 1, 2]
    assert len(RandomSamplerFactory(num_samples=7).draw(3, np.random.default_rng(0))) == 7
    with pytest.raises(ValueError, match="no option 'nope'"):
        WeightedRandomSamplerFactory("nope", 3).example_weights(md)


def test_vector_window_needs_completed_marker(tmp_path):
    root = str(tmp_path)
    make_config(root, {"lbl": {"type": "vector"}})
    add_vector(add_window(root, "a", [0, 0, 4, 4]), "lbl", [point(1, 1)])
    w = add_window(root, "b", [0, 0, 4, 4])
    (tmp_path / "windows/default/b/layers/lbl").mkdir(parents=True)
    (tmp_path / "windows/default/b/layers/lbl/data.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    windows = select_windows(Dataset(root), {"t": DataInput("vector", ["lbl"])}, SplitConfig())
    assert [x.name for x in windows] == ["a"] and w
