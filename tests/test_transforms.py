"""Transforms (spec training.md §6) on [T, H, W, C] images, in graph mode where it matters.

``fixtures/resize_torch.npz``: outputs of torch 2.13 ``F.interpolate(x, size, mode,
antialias=True)`` (bilinear/bicubic, align_corners=False) and nearest / nearest-exact, the
kernels ``torchvision.transforms.functional.resize`` uses for float tensors.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import FIXTURES

from rskeras.config.instantiate import instantiate
from rskeras.train.transforms import Sequential
from rskeras.train.transforms.adaptive_pooling import AdaptivePooling
from rskeras.train.transforms.concatenate import Concatenate
from rskeras.train.transforms.crop import Crop
from rskeras.train.transforms.earthdaily import EarthDailyCloudMaskToMask
from rskeras.train.transforms.flip import Flip
from rskeras.train.transforms.gaussian_noise import GaussianNoise
from rskeras.train.transforms.mask import Mask
from rskeras.train.transforms.normalize import Normalize
from rskeras.train.transforms.pad import Pad
from rskeras.train.transforms.random_time_dropping import RandomTimeDropping
from rskeras.train.transforms.resize import Resize
from rskeras.train.transforms.select_bands import SelectBands
from rskeras.train.transforms.sentinel1 import Sentinel1ToDecibels
from rskeras.train.transforms.sentinel2 import Sentinel2SCLToMask
from rskeras.train.transforms.terrain import ElevationToSlopeAspect
from rskeras.train.transforms.transform import Identity


def graph(transform, inputs, targets=None, traced=True):
    """Runs a transform inside a tf.function (as tf.data does; ``traced=False``: eagerly)
    and returns numpy dicts."""

    def run(i, t):
        copy = lambda d: tf.nest.map_structure(lambda v: v, d)  # noqa: E731
        return transform(copy(i), copy(t))

    i, t = (tf.function(run) if traced else run)(inputs, targets or {})
    return tf.nest.map_structure(lambda x: x.numpy(), i), tf.nest.map_structure(lambda x: x.numpy(), t)


def image(t=1, h=4, w=5, c=3, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(t, h, w, c)).astype(np.float32))


def test_selectors_input_target_nested_and_plural_quirk():
    img = image()
    inputs, targets = graph(Normalize(2.0, 4.0, selectors=["image", "input/other", "target/seg/values"]), {"image": img, "other": img}, {"seg": {"values": img}})
    for v in (inputs["image"], inputs["other"], targets["seg"]["values"]):
        np.testing.assert_allclose(v, (img.numpy() - 2) / 4, rtol=1e-6)
    # rslearn only knows the singular prefixes: "inputs/image" is a key of the input dict.
    with pytest.raises(KeyError, match="inputs"):
        Normalize(0, 1, selectors=["inputs/image"])({"image": img}, {})
    out, _ = Normalize(0, 1, selectors=["missing"], skip_missing=True)({"image": img}, {})
    assert list(out) == ["image"]


def test_normalize_per_band_bands_and_valid_range():
    img = tf.constant(np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3))
    x = img.numpy()
    (out, _) = graph(Normalize([1, 2, 3], [2, 4, 8], valid_range=[[0, 0, 0], [5, 3, 1]]), {"image": img})
    expected = (x - [1, 2, 3]) / np.array([2, 4, 8])
    np.testing.assert_allclose(out["image"], np.clip(expected, 0, [5, 3, 1]), rtol=1e-6)
    (out, _) = graph(Normalize([10, 20], [2, 4], bands=[2, 0], valid_range=[0, 2]), {"image": img})
    exp = x.copy()
    exp[..., 2] = np.clip((x[..., 2] - 10) / 2, 0, 2)
    exp[..., 0] = np.clip((x[..., 0] - 20) / 4, 0, 2)
    np.testing.assert_allclose(out["image"], exp, rtol=1e-6)
    with pytest.raises(ValueError, match="mean has 3 values but bands has 2"):
        Normalize([1, 2, 3], 1, bands=[0, 1])


def test_concatenate_time_default_and_channel():
    a, b = image(t=1, c=3, seed=1), image(t=2, c=3, seed=2)
    (out, _) = graph(Concatenate({"a": [], "b": [2, 0]}, "image", concatenate_dim=0), {"a": a, "b": b[:1]})
    np.testing.assert_array_equal(out["image"], np.concatenate([a.numpy(), b.numpy()[:1][..., [2, 0]]], -1))
    (out, _) = graph(Concatenate({"a": [], "b": []}, "target/stack"), {"a": a, "b": b})
    assert out["a"].shape == (1, 4, 5, 3)
    (_, t) = graph(Concatenate({"a": [], "b": []}, "target/stack"), {"a": a, "b": b})
    np.testing.assert_array_equal(t["stack"], np.concatenate([a.numpy(), b.numpy()], 0))  # along T
    assert Concatenate({"a": []}, "x", "CHANNEL").concatenate_dim == 0


def test_select_bands_and_identity_sequential():
    img = image(c=4)
    seq = Sequential(Identity(), SelectBands([3, 1], output_selector="sel"))
    (out, _) = graph(seq, {"image": img})
    np.testing.assert_array_equal(out["sel"], img.numpy()[..., [3, 1]])
    np.testing.assert_array_equal(out["image"], img.numpy())


def test_flip_images_and_boxes():
    img = image(t=2)
    x = img.numpy()
    target = {"boxes": tf.constant([[1.0, 0.5, 3.0, 2.0]]), "labels": tf.constant([4]), "width": tf.constant(5.0), "height": tf.constant(4.0)}
    seen = set()
    flip = Flip(image_selectors=["image", "target/classes"], box_selectors=["target/"])
    fn = tf.function(lambda i, t: flip(dict(i), dict(t)))
    for _ in range(10):
        out, t = tf.nest.map_structure(lambda v: v.numpy(), fn({"image": img}, dict(target, classes=img)))
        flips = None
        for hflip in (False, True):
            for vflip in (False, True):
                y = x[:, ::-1] if vflip else x
                y = y[:, :, ::-1] if hflip else y
                if np.array_equal(out["image"], y):
                    flips = (hflip, vflip)
        assert flips is not None
        np.testing.assert_array_equal(t["classes"], out["image"])  # same draw for every item
        x1, y1, x2, y2 = 1.0, 0.5, 3.0, 2.0
        if flips[0]:
            x1, x2 = 5 - x2, 5 - x1
        if flips[1]:
            y1, y2 = 4 - y2, 4 - y1
        np.testing.assert_allclose(t["boxes"], [[x1, y1, x2, y2]])
        assert t["labels"].tolist() == [4]
        seen.add(flips)
    assert len(seen) >= 3
    (out, _) = graph(Flip(horizontal=False, vertical=False), {"image": img})
    np.testing.assert_array_equal(out["image"], x)


def test_crop_offset_images_at_two_resolutions_and_boxes():
    hi = tf.constant(np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1))
    lo = tf.constant(np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1))
    target = {"boxes": tf.constant([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.5, 2.0], [2.5, 0.0, 4.0, 4.0]]), "labels": tf.constant([7, 8, 9]), "width": tf.constant(4.0), "height": tf.constant(4.0)}
    t = Crop(2, image_selectors=["hi", "lo"], box_selectors=["target/boxes"], offset=[1, 1])
    (out, tt) = graph(t, {"hi": hi, "lo": lo}, target)
    # Reference = the smallest image (4x4): crop 2 at (1, 1); the 8x8 image gets 4 at (2, 2).
    np.testing.assert_array_equal(out["lo"][0, :, :, 0], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(out["hi"][0, :, :, 0], np.arange(64).reshape(8, 8)[2:6, 2:6])
    # Boxes shifted by (1, 1), clamped to [0, 2]; the zero-area first box and its label dropped.
    np.testing.assert_allclose(tt["boxes"], [[0.0, 0.0, 2.0, 1.0], [1.5, 0.0, 2.0, 2.0]])
    assert tt["labels"].tolist() == [8, 9] and tt["width"] == 2 and tt["height"] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="offset"):
        graph(Crop(3, offset=[2, 0]), {"image": lo})


def test_crop_random_can_take_the_whole_image_and_the_last_offset():
    img = tf.constant(np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1))
    (out, _) = graph(Crop(3), {"image": img})  # size == H: rslearn raises, rskeras crops
    assert out["image"].shape == (1, 3, 3, 1)
    lefts = set()
    t = Crop(3)
    fn = tf.function(lambda i: t(dict(i), {}))
    for _ in range(30):
        lefts.add(int(fn({"image": img})[0]["image"][0, 0, 0, 0]))
    assert lefts == {0, 1}  # both offsets, including the last one
    t = Crop([2, 4])
    fn = tf.function(lambda i: t(dict(i), {}))
    sizes = {fn({"image": img})[0]["image"].shape[1] for _ in range(12)}
    assert sizes <= {2, 3} and len(sizes) == 2


def test_pad_topleft_center_and_crop():
    img = tf.constant(np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1))
    (out, _) = graph(Pad(4), {"image": img})
    np.testing.assert_array_equal(out["image"][0, :, :, 0], [[1, 2, 3, 0], [4, 5, 6, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    (out, _) = graph(Pad(5, mode="center"), {"image": img})
    # width 3 -> 5: 1 left, 1 right; height 2 -> 5: 1 top, 2 bottom (intended, see docs).
    expected = np.zeros((5, 5))
    expected[1:3, 1:4] = [[1, 2, 3], [4, 5, 6]]
    np.testing.assert_array_equal(out["image"][0, :, :, 0], expected)
    (out, _) = graph(Pad(1, mode="center"), {"image": img})  # crop: extra -1 -> (-1, 0)
    np.testing.assert_array_equal(out["image"][0, :, :, 0], [[5]])
    (out, _) = graph(Pad(1), {"image": img})
    np.testing.assert_array_equal(out["image"][0, :, :, 0], [[1]])
    with pytest.raises(NotImplementedError):
        Pad(4, box_selectors=["target/boxes"])({"image": img}, {})


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "nearest_exact"])
@pytest.mark.parametrize("size", [(4, 5), (17, 9)])
def test_resize_matches_torchvision(mode, size):
    fx = np.load(FIXTURES / "resize_torch.npz")
    x = np.transpose(fx["in/x"], (0, 2, 3, 1))  # NCHW -> [T, H, W, C]
    (out, _) = graph(Resize(list(size), ["image"], mode), {"image": tf.constant(x)}, traced=False)
    expected = np.transpose(fx[f"out/{mode}/{size[0]}x{size[1]}"], (0, 2, 3, 1))
    tol = 0 if mode.startswith("nearest") else 5e-6
    np.testing.assert_allclose(out["image"], expected, atol=tol, rtol=0)


def test_resize_integer_nearest_keeps_dtype_and_defaults_to_noop():
    classes = tf.constant(np.arange(4, dtype=np.int32).reshape(1, 2, 2, 1))
    (out, _) = graph(Resize([4, 4], ["target_like"]), {"target_like": classes})
    assert out["target_like"].dtype == np.int32
    np.testing.assert_array_equal(out["target_like"][0, :, :, 0], np.kron([[0, 1], [2, 3]], np.ones((2, 2))))
    (out, _) = graph(Resize([1, 1], interpolation="bilinear"), {"image": classes})
    assert out["image"].shape == (1, 2, 2, 1)


def test_mask_broadcast():
    img = tf.ones([2, 2, 2, 3])
    mask = tf.constant(np.array([[[[1], [0]], [[0], [1]]]], np.int32))  # [1, 2, 2, 1]
    (out, _) = graph(Mask(mask_value=-5), {"image": img, "mask": mask}, traced=False)
    np.testing.assert_array_equal(out["image"][:, :, :, 0], [[[1, -5], [-5, 1]]] * 2)
    with pytest.raises(ValueError, match="one band"):
        Mask()({"image": img, "mask": tf.ones([1, 2, 2, 2])}, {})


def test_scl_and_earthdaily_masks():
    scl = tf.constant(np.array([3, 4, 8, 9, 10, 1]).reshape(1, 2, 3, 1))
    (out, _) = graph(Sentinel2SCLToMask(), {"scl": scl}, traced=False)
    assert out["mask"].dtype == np.int32 and out["mask"].ravel().tolist() == [0, 1, 0, 0, 0, 1]
    (out, _) = graph(EarthDailyCloudMaskToMask(clear_values=[1, 4]), {"cloud_mask": scl}, traced=False)
    assert out["mask"].ravel().tolist() == [0, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="one band"):
        Sentinel2SCLToMask()({"scl": tf.ones([1, 2, 2, 2])}, {})


def test_sentinel1_decibels_and_noise():
    x = tf.constant([[[[0.0, 1.0, 100.0]]]])
    (out, _) = graph(Sentinel1ToDecibels(), {"image": x}, traced=False)
    np.testing.assert_allclose(out["image"].ravel(), [-60.0, 0.0, 20.0], atol=1e-4)
    (back, _) = graph(Sentinel1ToDecibels(from_decibels=True), {"image": tf.constant(out["image"])}, traced=False)
    np.testing.assert_allclose(back["image"].ravel(), [1e-6, 1.0, 100.0], rtol=1e-4)
    (noisy, _) = graph(GaussianNoise(0.5), {"image": tf.zeros([1, 64, 64, 4])}, traced=False)
    assert 0.45 < noisy["image"].std() < 0.55


def test_random_time_dropping():
    img = tf.constant(np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1))
    stamps = tf.constant(np.arange(12, dtype=np.float64).reshape(6, 2))
    rtd = RandomTimeDropping(drop_ratio=1.0, min_keep=2)
    fn = tf.function(lambda i: rtd(dict(i), {}))
    for _ in range(5):
        out = tf.nest.map_structure(lambda v: v.numpy(), fn({"image": img, "image_timestamps": stamps})[0])
        kept = out["image"].ravel()
        assert len(kept) == 2 and list(kept) == sorted(kept)
        np.testing.assert_array_equal(out["image_timestamps"][:, 0], kept * 2)
    (out, _) = graph(RandomTimeDropping(drop_ratio=0.0), {"image": img})
    assert out["image"].shape[0] == 6
    (out, _) = graph(RandomTimeDropping(drop_ratio=1.0, min_keep=8), {"image": img})
    assert out["image"].shape[0] == 6  # T <= min_keep: unchanged
    with pytest.raises(ValueError, match="between 0 and 1"):
        RandomTimeDropping(drop_ratio=1.5)


def test_adaptive_pooling_bins():
    x = np.arange(7 * 10, dtype=np.int32).reshape(1, 7, 10, 1)
    (out, _) = graph(AdaptivePooling([3, 4], ["image"], "mean"), {"image": tf.constant(x)})
    assert out["image"].dtype == np.float32
    # torch bins: rows [0,3) [2,5) [4,7); cols [0,3) [2,5) [5,8) [7,10).
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 3), (2, 5), (5, 8), (7, 10)]
    expected = [[x[0, r0:r1, c0:c1, 0].mean() for c0, c1 in cols] for r0, r1 in rows]
    np.testing.assert_allclose(out["image"][0, :, :, 0], expected, rtol=1e-6)
    (out, _) = graph(AdaptivePooling([3, 4], ["image"], "max"), {"image": tf.constant(x)})
    assert out["image"].dtype == np.int32
    np.testing.assert_array_equal(out["image"][0, :, :, 0], [[x[0, r0:r1, c0:c1, 0].max() for c0, c1 in cols] for r0, r1 in rows])


def test_elevation_to_slope_aspect():
    # A plane rising 1 m per 10 m pixel towards the east: slope atan(0.1), facing west.
    dem = np.tile(np.arange(5, dtype=np.float32), (4, 1))[None, :, :, None]
    dem = dem.copy()
    t = ElevationToSlopeAspect(10.0, output_selector="terrain")
    (out, _) = graph(t, {"elevation": tf.constant(dem)})
    terrain = out["terrain"]
    assert terrain.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(terrain[..., 0], dem[..., 0])
    np.testing.assert_allclose(terrain[..., 1], math.degrees(math.atan(0.1)), rtol=1e-5)
    np.testing.assert_allclose(terrain[..., 2], 270.0, rtol=1e-6)
    flat = np.zeros((1, 3, 3, 1), np.float32)
    flat[0, 1, 1, 0] = np.nan
    (out, _) = graph(ElevationToSlopeAspect(1.0, bands=["aspect", "slope"]), {"elevation": tf.constant(flat)})
    # Flat corners: aspect -1; the NaN pixel and its 4 neighbours: NaN.
    assert out["elevation"][0, 0, 0].tolist() == [-1.0, 0.0]
    assert np.isnan(out["elevation"][0, 1, 1]).all() and np.isnan(out["elevation"][0, 0, 1]).all()
    # Against numpy's gradient (same central/one-sided rule as torch.gradient).
    z = np.random.default_rng(1).normal(size=(2, 6, 7)).astype(np.float32) * 5
    (out, _) = graph(ElevationToSlopeAspect(2.0, bands=["slope", "aspect"]), {"elevation": tf.constant(z[..., None])})
    dn, de = -np.gradient(z, 2.0, axis=1), np.gradient(z, 2.0, axis=2)
    slope = np.degrees(np.arctan(np.hypot(de, dn)))
    aspect = np.mod(np.degrees(np.arctan2(de, dn)) + 180, 360)
    np.testing.assert_allclose(out["elevation"][..., 0], slope, atol=1e-4)
    np.testing.assert_allclose(out["elevation"][..., 1], aspect, atol=1e-3)


def test_transforms_from_rslearn_class_paths():
    node = {
        "class_path": "rslearn.train.transforms.Sequential",
        "init_args": {},
    }
    assert isinstance(instantiate(node, "t"), Sequential)
    flip = instantiate({"class_path": "rslearn.train.transforms.flip.Flip", "init_args": {"box_selectors": ["target/"]}}, "t")
    assert flip.box_selectors == ["target/"]
    res = instantiate({"class_path": "rslearn.train.transforms.resize.Resize", "init_args": {"target_size": [8, 8], "interpolation": "bicubic"}}, "t")
    assert res.target_size == (8, 8)
    cat = instantiate({"class_path": "rslearn.train.transforms.concatenate.Concatenate", "init_args": {"selections": {"a": []}, "output_selector": "image", "concatenate_dim": 0}}, "t")
    assert cat.concatenate_dim == 0
