"""The time-series contract of docs/design.md: per-example timesteps, ``<key>_timestamps``
and ``<key>_timestep_mask`` through transforms and ``padded_batch``, missing modalities."""

import datetime
import os

import numpy as np
import tensorflow as tf
from data_helpers import RawTask, add_raster, add_window, make_config

from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, SplitConfig
from rskeras.train.transforms.random_time_dropping import RandomTimeDropping


def iso(day):
    return datetime.datetime(2024, 3, day, tzinfo=datetime.timezone.utc).isoformat()


def posix(day):
    return datetime.datetime(2024, 3, day, tzinfo=datetime.timezone.utc).timestamp()


def series_dataset(root, counts, with_s1):
    """Windows w0, w1, ... with ``counts[i]`` Sentinel-2 timesteps (value 10*i + t) and,
    where ``with_s1[i]``, one Sentinel-1 image."""
    make_config(
        root,
        {
            "s2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": ["B02", "B03"]}]},
            "s1": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["vv", "vh"]}]},
        },
    )
    for i, t in enumerate(counts):
        w = add_window(root, f"w{i}", [0, 0, 4, 4])
        array = np.stack([np.full((4, 4), 10 * i + ti, np.uint16) for _ in range(2) for ti in range(t)])
        stamps = [[iso(1 + 2 * ti), iso(2 + 2 * ti)] for ti in range(t)]
        add_raster(w, "s2", ["B02", "B03"], array, [0, 0, 4, 4], sidecar={"num_channels": 2, "num_timesteps": t, "timestamps": stamps})
        if with_s1[i]:
            add_raster(w, "s1", ["vv", "vh"], np.ones((2, 4, 4), np.float32), [0, 0, 4, 4])


def module(root, batch_size, transforms=None, s1_timestamps=True):
    inputs = {
        "sentinel2_l2a": DataInput("raster", ["s2"], bands=["B02", "B03"], passthrough=True, load_timestamps=True),
        "sentinel1": DataInput("raster", ["s1"], bands=["vv", "vh"], passthrough=True, required=False, load_timestamps=s1_timestamps),
    }
    return RslearnDataModule(
        inputs=inputs, task=RawTask(), path=root, batch_size=batch_size, default_config=SplitConfig(transforms=transforms)
    )


def batches(dm):
    return [tf.nest.map_structure(lambda v: v.numpy(), inputs) for inputs, _ in dm.tf_dataset("val")]


def test_padded_batch_marks_real_timesteps_and_missing_modalities(tmp_path):
    root = str(tmp_path)
    series_dataset(root, counts=[2, 1], with_s1=[False, True])
    (batch,) = batches(module(root, batch_size=2))
    order = [int(v) // 10 for v in batch["sentinel2_l2a"][:, 0, 0, 0, 0]]
    assert sorted(order) == [0, 1]
    b0, b1 = order.index(0), order.index(1)
    s2, s2_mask, s2_ts = batch["sentinel2_l2a"], batch["sentinel2_l2a_timestep_mask"], batch["sentinel2_l2a_timestamps"]
    assert s2.shape == (2, 2, 4, 4, 2) and s2_mask.dtype == bool and s2_ts.dtype == np.float64
    assert s2_mask[b0].tolist() == [True, True] and s2_mask[b1].tolist() == [True, False]
    np.testing.assert_array_equal(s2_ts[b0], [[posix(1), posix(2)], [posix(3), posix(4)]])
    np.testing.assert_array_equal(s2_ts[b1, 0], [posix(1), posix(2)])
    assert np.isnan(s2_ts[b1, 1]).all()  # padding, not 1970
    assert (s2[b1, 1] == 0).all()
    # Sentinel-1 is missing from w0: T = 0 there, padded to the batch's T = 1.
    s1_mask, s1_ts = batch["sentinel1_timestep_mask"], batch["sentinel1_timestamps"]
    assert batch["sentinel1"].shape == (2, 1, 4, 4, 2)
    assert s1_mask[b0].tolist() == [False] and s1_mask[b1].tolist() == [True]
    assert np.isnan(s1_ts[b0]).all()
    assert np.isnan(s1_ts[b1]).all()  # a real image without a time range is NaN too; the mask tells them apart


def test_modality_missing_from_the_whole_batch_has_zero_timesteps(tmp_path):
    root = str(tmp_path)
    series_dataset(root, counts=[1, 1], with_s1=[False, False])
    (batch,) = batches(module(root, batch_size=2))
    assert batch["sentinel1"].shape == (2, 0, 4, 4, 2)
    assert batch["sentinel1_timestep_mask"].shape == (2, 0)
    assert batch["sentinel1_timestamps"].shape == (2, 0, 2)


def test_no_mask_without_load_timestamps(tmp_path):
    root = str(tmp_path)
    series_dataset(root, counts=[1], with_s1=[True])
    (batch,) = batches(module(root, batch_size=1, s1_timestamps=False))
    assert "sentinel1_timestep_mask" not in batch and "sentinel1_timestamps" not in batch
    assert "sentinel2_l2a_timestep_mask" in batch


def test_random_time_dropping_keeps_mask_and_timestamps_aligned(tmp_path):
    root = str(tmp_path)
    series_dataset(root, counts=[4], with_s1=[False])
    tf.random.set_seed(3)
    dm = module(root, batch_size=1, transforms=[RandomTimeDropping(selectors=["sentinel2_l2a"], drop_ratio=0.5, min_keep=1)])
    (batch,) = batches(dm)
    kept = batch["sentinel2_l2a"][0, :, 0, 0, 0].astype(int).tolist()
    assert 0 < len(kept) < 4  # this seed drops a timestep
    assert batch["sentinel2_l2a_timestep_mask"].shape == (1, len(kept)) and batch["sentinel2_l2a_timestep_mask"].all()
    np.testing.assert_array_equal(batch["sentinel2_l2a_timestamps"][0, :, 0], [posix(1 + 2 * t) for t in kept])


S2_BANDS = ["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12", "B01", "B09"]


def test_pipeline_timestamps_drive_olmoearth_merged_timelines(tmp_path):
    """``load_timestamps`` batches (padded timesteps, a modality missing from one example)
    straight into OlmoEarth(use_legacy_timestamps=False): the merged timeline holds the
    images' dates, and each example's training-mode output is its output alone."""
    from rskeras.models.olmoearth_pretrain.model import OlmoEarth

    root = str(tmp_path)
    make_config(
        root,
        {
            "s2": {"type": "raster", "band_sets": [{"dtype": "uint16", "bands": S2_BANDS}]},
            "s1": {"type": "raster", "band_sets": [{"dtype": "float32", "bands": ["vv", "vh"]}]},
        },
    )
    rng = np.random.default_rng(0)
    days = {"w0": [1, 20], "w1": [5]}  # w1: one Sentinel-2 image (padded) and a Sentinel-1 one
    for name, starts in days.items():
        w = add_window(root, name, [0, 0, 8, 8])
        stamps = [[iso(d), iso(d + 1)] for d in starts]
        array = rng.integers(0, 4000, (12 * len(starts), 8, 8)).astype(np.uint16)
        add_raster(w, "s2", S2_BANDS, array, [0, 0, 8, 8], sidecar={"num_channels": 12, "num_timesteps": len(starts), "timestamps": stamps})
    add_raster(os.path.join(root, "windows", "default", "w1"), "s1", ["vv", "vh"], rng.normal(size=(2, 8, 8)).astype(np.float32), [0, 0, 8, 8],
               sidecar={"num_channels": 2, "num_timesteps": 1, "timestamps": [[iso(6), iso(7)]]})  # fmt: skip
    inputs = {
        "sentinel2_l2a": DataInput("raster", ["s2"], bands=S2_BANDS, passthrough=True, load_timestamps=True),
        "sentinel1": DataInput("raster", ["s1"], bands=["vv", "vh"], passthrough=True, required=False, load_timestamps=True),
    }
    dm = RslearnDataModule(inputs=inputs, task=RawTask(), path=root, batch_size=2, default_config=SplitConfig())
    (batch,) = [b for b, _ in dm.tf_dataset("val")]
    import json

    from rskeras.models.olmoearth_pretrain.config import bundle_config, model_id_config

    arch = model_id_config("OLMOEARTH_V1_2_NANO")
    arch.drop_path, arch.band_dropout_rate = 0.0, 0.0  # a deterministic training-mode forward
    os.makedirs(tmp_path / "bundle")
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(bundle_config(arch)))
    model = OlmoEarth(patch_size=4, model_path=str(tmp_path / "bundle"), random_initialization=True, autocast_dtype=None, use_legacy_timestamps=False)
    model_inputs = {k: v for k, v in batch.items() if k.startswith(("sentinel2_l2a", "sentinel1"))}
    order = [int(np.asarray(batch["sentinel1_timestep_mask"])[i].any()) for i in range(2)]  # 1 = w1
    _, valid, timestamps = model.prepare(model_inputs)
    # [day, month (0-based), year] of the image centres; w1's S2 (5th) and S1 (6th) merge (tolerance 15 days)
    for i, w in enumerate(order):
        want = [[1, 2, 2024], [20, 2, 2024]] if w == 0 else [[5, 2, 2024]]
        assert timestamps.numpy()[i, : len(want)].tolist() == want
    (both,) = model(model_inputs, training=True)
    for i in range(2):
        alone = {k: v[i : i + 1] for k, v in model_inputs.items()}
        if order[i] == 1:  # drop its padded Sentinel-2 timestep
            alone = {k: (v[:, :1] if k.startswith("sentinel2_l2a") else v) for k, v in alone.items()}
        else:  # no Sentinel-1 at all: drop the modality (rslearn averages its absent 0 in)
            alone = {k: v for k, v in alone.items() if k.startswith("sentinel2_l2a")}
        (out,) = model(alone, training=True)
        scale = 0.5 if order[i] == 0 else 1.0
        np.testing.assert_allclose(both[i].numpy(), scale * out[0].numpy(), atol=2e-5)
