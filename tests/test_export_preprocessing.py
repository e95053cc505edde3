"""Pre-processing inside exported models: which transforms run, which are skipped, which
are refused, and that the batched form computes what the per-example pipeline computes."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from rskeras.export.errors import ExportError
from rskeras.export.preprocessing import Preprocessing, RawInput, plan_transforms
from rskeras.train.transforms.normalize import Normalize
from rskeras.train.transforms.transform import Identity, Sequential, Transform


def per_example(planned, example):
    """The data pipeline's view: each applied transform on one ``[T, H, W, C]`` example."""
    d = {k: tf.constant(v) for k, v in example.items()}
    for step in planned:
        if step.action == "apply":
            d, _ = step.transform(dict(d), {})
    return {k: v.numpy() for k, v in d.items()}


def assert_batched_equals_per_example(raws, planned, batch, atol=1e-6):
    """``batch``: name -> signature-layout array; compares every output item."""
    out = Preprocessing(raws, planned)({k: tf.constant(v) for k, v in batch.items()})
    n = next(iter(batch.values())).shape[0]
    for i in range(n):
        example = {r.name: batch[r.name][i][None] if r.num_timesteps == 1 else batch[r.name][i] for r in raws}
        expected = per_example(planned, example)
        assert set(expected) == set(out)
        for key, value in expected.items():
            np.testing.assert_allclose(out[key].numpy()[i], value, atol=atol, err_msg=key)
    return out


class Custom(Transform):
    def forward(self, input_dict, target_dict):
        return input_dict, target_dict


def test_unknown_transforms_are_refused_with_their_position():
    with pytest.raises(ExportError, match=r"cfg.transforms\[1\]: transform .*Custom cannot be exported"):
        plan_transforms([Normalize(0, 1), Custom()], "cfg.transforms")
    with pytest.raises(ExportError, match=r"cfg\[0\].transforms\[0\]: transform .*Custom"):
        plan_transforms([Sequential(Custom())], "cfg")


def test_missing_items_name_the_transform():
    planned = plan_transforms([Normalize(0, 1, selectors=["sentinel2"])], "data.init_args.default_config.transforms")
    with pytest.raises(ExportError, match=r"default_config.transforms\[0\] \(Normalize\).*sentinel2"):
        Preprocessing([RawInput("image", ("a",))], planned)({"image": tf.zeros([1, 4, 4, 1])})


def test_identity_sequential_and_target_selectors():
    planned = plan_transforms(
        [Identity(), Sequential(Normalize(10, 2, selectors=["image", "target/values"])), Normalize(0, 1, selectors=["target/values"])],
        "t",
    )
    assert [(p.where, p.name, p.action) for p in planned] == [("t[1].transforms[0]", "Normalize", "apply"), ("t[2]", "Normalize", "skip")]
    assert planned[0].transform.selectors == ["image"]
    assert "only addresses targets" in planned[1].reason
    raws = [RawInput("image", ("a", "b"))]
    x = np.random.default_rng(0).normal(10, 3, size=(3, 5, 5, 2)).astype(np.float32)
    out = assert_batched_equals_per_example(raws, planned, {"image": x})
    assert out["image"].shape == (3, 1, 5, 5, 2)


def test_normalize_with_bands_and_valid_range_on_a_multi_timestep_input():
    planned = plan_transforms([Normalize(mean=[100.0, 200.0], std=[10.0, 20.0], bands=[2, 0], valid_range=[-1, 1], selectors=["series"])], "t")
    raws = [RawInput("series", ("a", "b", "c"), "int32", num_timesteps=2)]
    assert raws[0].spec(8, 8).shape.as_list() == [None, 2, 8, 8, 3]
    x = np.random.default_rng(1).integers(50, 300, size=(2, 2, 4, 4, 3)).astype(np.int32)
    out = assert_batched_equals_per_example(raws, planned, {"series": x})
    assert out["series"].dtype == tf.float32


def test_transform_chain_with_rename_concatenation_and_skipped_augmentations(caplog):
    pytest.importorskip("rskeras.train.transforms.select_bands", reason="data-pipeline transforms not merged")
    from rskeras.train.transforms.concatenate import Concatenate
    from rskeras.train.transforms.crop import Crop
    from rskeras.train.transforms.flip import Flip
    from rskeras.train.transforms.gaussian_noise import GaussianNoise
    from rskeras.train.transforms.pad import Pad
    from rskeras.train.transforms.select_bands import SelectBands
    from rskeras.train.transforms.sentinel1 import Sentinel1ToDecibels

    transforms = [
        SelectBands([3, 1, 2], input_selector="s2", output_selector="s2"),
        Sentinel1ToDecibels(selectors=["s1"]),
        Concatenate({"s2": [], "s1": [1]}, "image", concatenate_dim="CHANNEL"),
        Concatenate({"s2": []}, "rgb"),  # a single selection renames
        Normalize(mean=[1000, 1000, 1000, -10], std=[500, 500, 500, 5], selectors=["image", "target/x"]),
        Flip(image_selectors=["image", "target/classes"]),
        GaussianNoise(0.1),
        Crop(crop_size=4),  # random offset
        Crop(crop_size=6, offset=[2, 1]),
        Pad(size=8, mode="center"),
    ]
    with caplog.at_level(logging.WARNING):
        planned = plan_transforms(transforms, "data.init_args.predict_config.transforms")
    actions = [(p.name, p.action) for p in planned]
    assert actions == [
        ("SelectBands", "apply"), ("Sentinel1ToDecibels", "apply"), ("Concatenate", "apply"), ("Concatenate", "apply"),
        ("Normalize", "apply"), ("Flip", "skip"), ("GaussianNoise", "skip"), ("Crop", "skip"), ("Crop", "apply"), ("Pad", "apply"),
    ]
    assert "predict_config.transforms[5]" in caplog.text and "random augmentation" in caplog.text
    raws = [RawInput("s2", ("B02", "B03", "B04", "B08")), RawInput("s1", ("vv", "vh"))]
    rng = np.random.default_rng(2)
    batch = {"s2": rng.uniform(0, 3000, size=(2, 7, 9, 4)).astype(np.float32), "s1": rng.uniform(0, 0.5, size=(2, 7, 9, 2)).astype(np.float32)}
    out = assert_batched_equals_per_example(raws, planned, batch, atol=1e-5)
    assert out["image"].shape == (2, 1, 8, 8, 4) and out["rgb"].shape == (2, 1, 7, 9, 3)


def test_time_concatenation_and_terrain_on_batches():
    pytest.importorskip("rskeras.train.transforms.concatenate", reason="data-pipeline transforms not merged")
    from rskeras.train.transforms.concatenate import Concatenate

    planned = plan_transforms([Concatenate({"early": [0, 1], "late": [0, 1]}, "image")], "t")
    raws = [RawInput("early", ("a", "b", "c"), num_timesteps=2), RawInput("late", ("a", "b"))]
    rng = np.random.default_rng(3)
    batch = {"early": rng.normal(size=(3, 2, 5, 5, 3)).astype(np.float32), "late": rng.normal(size=(3, 5, 5, 2)).astype(np.float32)}
    out = assert_batched_equals_per_example(raws, planned, batch)
    assert out["image"].shape == (3, 3, 5, 5, 2)

    terrain = pytest.importorskip("rskeras.train.transforms.terrain")
    planned = plan_transforms([terrain.ElevationToSlopeAspect(pixel_size_m=10.0, input_selector="dem", output_selector="terrain")], "t")
    raws = [RawInput("dem", ("elevation",))]
    dem = np.cumsum(rng.normal(size=(2, 6, 7, 1)), axis=1).astype(np.float32) * 10
    out = assert_batched_equals_per_example(raws, planned, {"dem": dem}, atol=1e-4)
    assert out["terrain"].shape == (2, 1, 6, 7, 3)
