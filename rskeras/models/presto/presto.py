"""rslearn's Presto feature extractor (``rslearn.models.presto.presto.Presto``)."""

from __future__ import annotations

import logging
import os
import tempfile

import keras
import tensorflow as tf

from rskeras.models.component import FeatureExtractor
from rskeras.models.presto.single_file_presto import (
    NUM_DYNAMIC_WORLD_CLASSES,
    PRESTO_ADD_BY,
    PRESTO_DIV_BY,
    PrestoEncoder,
)
from rskeras.models.time_inputs import input_months, timestep_mask_key
from rskeras.weights.torch_params import TorchParam, join, load_torch_state_dict

logger = logging.getLogger(__name__)

HF_HUB_ID = "nasaharvest/presto"
HF_REVISION = "1b97f885969da4e2d5834ca8c92707c737911464"
MODEL_FILENAME = "default_model.pt"
DEFAULT_MONTH = 6

# ``single_file_presto.Presto.construct()`` defaults, the only released architecture.
ENCODER_CONFIG = dict(embedding_size=128, channel_embed_ratio=0.25, month_embed_ratio=0.25, depth=2, mlp_ratio=4, num_heads=8, max_sequence_length=24)

# input key -> (first band in INPUT_PRESTO_BANDS, channels, groups with their channel slices)
INPUTS: dict[str, tuple[int, int, dict[str, slice]]] = {
    "s1": (0, 2, {"S1": slice(0, 2)}),
    "s2": (2, 10, {"S2_RGB": slice(0, 3), "S2_Red_Edge": slice(3, 6), "S2_NIR_10m": slice(6, 7), "S2_NIR_20m": slice(7, 8), "S2_SWIR": slice(8, 10)}),
    "era5": (12, 2, {"ERA5": slice(0, 2)}),
    "srtm": (14, 2, {"SRTM": slice(0, 2)}),
}
MONTH_KEYS = ["s1", "s2", "era5"]


def presto_download_help(folder: str) -> str:
    url = f"https://huggingface.co/{HF_HUB_ID}/resolve/{HF_REVISION}/{MODEL_FILENAME}"
    return (
        f"rskeras does not download weights: download {url} into {folder}/ and pass that directory as "
        "pretrained_path (or set random_initialization: true to train from scratch)"
    )


@keras.saving.register_keras_serializable(package="rskeras")
class Presto(FeatureExtractor):
    """Presto pixel-time-series encoder (rslearn ``rslearn.models.presto.Presto``).

    Every pixel's series is encoded on its own; the output has the input's resolution.
    Inputs are **raw** values, normalised inside with ``(x + ADD_BY) / DIV_BY`` (S1 dB:
    (x + 25) / 25; S2: x / 1e4; ERA5: (K - 272.15) / 35, m / 0.03; SRTM: m / 2000, ° / 50).
    Keys (each optional, at least one of s1, s2, era5, srtm):

    * ``s1`` ``[B, T, H, W, 2]`` vv, vh (dB); ``s2`` ``[B, T, H, W, 10]`` B02, B03, B04, B05,
      B06, B07, B08, B8A, B11, B12 (B09 is not a Presto input);
    * ``era5`` ``[B, T, H, W, 2]`` temperature_2m (K), total_precipitation (m);
    * ``srtm`` ``[B, T, H, W, 2]`` elevation, slope (first timestep used);
    * ``dynamic_world`` ``[B, T, H, W, 1]`` classes 0-8, 9 = missing (rskeras; rslearn's
      wrapper fails on this input): without it every class is 9 (all tokens masked);
    * ``latlon`` ``[B, T, H, W, 2]`` degrees, first timestep (rskeras; rslearn fails);
    * ``<key>_timestamps`` ``[B, T, 2]``: months of the range centres from the first of s1,
      s2, era5 with timestamps; without any, every month is 6 (July).

    ERA5/SRTM/NDVI groups without inputs are masked (NDVI always).

    Weights (torch keys ``model.<Encoder key>``) come from ``pretrained_path``: a local
    directory with ``default_model.pt`` (the whole pretrained Presto; its ``encoder.*``
    tensors are used), as in the ``nasaharvest/presto`` Hugging Face repository.

    Args:
        pretrained_path: local directory (see above); None looks in rslearn's cache
            ``<tmp>/rslearn_cache/presto``.
        pixel_batch_size: int, accepted for compatibility (rslearn encodes the pixels in
            chunks of this size, which changes nothing numerically); rskeras encodes all
            pixels of a batch in one call.
        random_initialization: rskeras extension: random weights instead of files.

    Call: context dict -> FeatureMaps with one ``[B, H, W, 128]`` map.
    """

    input_keys = ["s1", "s2", "era5", "srtm", "dynamic_world", "latlon"]

    def __init__(self, pretrained_path: str | None = None, pixel_batch_size: int = 128, random_initialization: bool = False, **kwargs):
        kwargs.setdefault("autocast", False)  # keep float64 timestamps; inputs are cast below
        super().__init__(**kwargs)
        if int(pixel_batch_size) < 1:
            raise ValueError(f"Presto: pixel_batch_size must be >= 1, got {pixel_batch_size}")
        self.pretrained_path = None if pretrained_path is None else os.fspath(pretrained_path)
        self.pixel_batch_size = int(pixel_batch_size)
        self.random_initialization = bool(random_initialization)
        self.month = DEFAULT_MONTH
        state = None if self.random_initialization else self._read_weights()
        self.model = PrestoEncoder(**ENCODER_CONFIG, name="model")
        self.built = True
        if state is not None:
            load_torch_state_dict(self.model, state)

    def _folder(self) -> str:
        return self.pretrained_path or os.path.join(tempfile.gettempdir(), "rslearn_cache", "presto")

    def _read_weights(self) -> dict:
        from rskeras.weights.files import read_state_dict

        folder = self._folder()
        candidates = [os.path.join(folder, n) for n in (MODEL_FILENAME, "default_model.safetensors", "default_model.npz")]
        path = next((p for p in candidates if os.path.exists(p)), None)
        if path is None:
            raise FileNotFoundError(f"Presto: {MODEL_FILENAME} not found in {folder}; {presto_download_help(folder)}")
        state = read_state_dict(path)
        if any(k.startswith("model.") for k in state):  # an rslearn-keyed (wrapper) state dict
            return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}

    def _series(self, context: dict, key: str) -> tf.Tensor:
        x = context[key]
        if len(x.shape) != 5:
            raise ValueError(f"Presto: input '{key}' must be [B, T, H, W, C], got shape {tuple(x.shape)}")
        return x

    def call(self, context, training=None):
        present = [k for k in INPUTS if k in context and context[k].shape[1] != 0]  # T = 0: absent from the batch
        if not present:
            raise ValueError(f"Presto: the input dict has none of the keys {list(INPUTS)}")
        groups, shape, masks = {}, None, {}
        for key in present:
            lo, channels, slices = INPUTS[key]
            x = tf.cast(self._series(context, key), tf.float32)
            if timestep_mask_key(key) in context:
                masks.update({g: tf.cast(context[timestep_mask_key(key)], tf.bool) for g in slices})
            if x.shape[-1] is not None and x.shape[-1] != channels:
                raise ValueError(f"Presto: input '{key}' must have {channels} channels, got {x.shape[-1]}")
            if key == "srtm":
                x = x[:, :1]
            elif shape is None:
                shape = tf.shape(x)
            x = (x + PRESTO_ADD_BY[lo : lo + channels]) / PRESTO_DIV_BY[lo : lo + channels]
            pixels = self._pixels(x)
            for group, sl in slices.items():
                groups[group] = pixels[..., sl]
        if shape is None:  # srtm only: a single timestep
            shape = tf.shape(tf.cast(context["srtm"], tf.float32)[:, :1])
        b, t, h, w = shape[0], shape[1], shape[2], shape[3]
        months = input_months(context, MONTH_KEYS, self.month)
        if months is None:
            months = tf.fill(tf.stack([b, t]), tf.constant(self.month, tf.int32))
        months = self._per_pixel(months, h, w)
        dynamic_world = None
        if "dynamic_world" in context:
            dw = tf.cast(self._series(context, "dynamic_world"), tf.int32)[..., 0]  # [B, T, H, W]
            dynamic_world = tf.reshape(tf.transpose(dw, [0, 2, 3, 1]), tf.stack([-1, t]))
            dynamic_world = tf.clip_by_value(dynamic_world, 0, NUM_DYNAMIC_WORLD_CLASSES)
        latlons = None
        if "latlon" in context:
            latlons = tf.reshape(tf.cast(self._series(context, "latlon"), tf.float32)[:, 0], [-1, 2])
        if masks:
            masks = {g: self._per_pixel(m, h, w) for g, m in masks.items()}
        out = self.model.encode(groups, months, dynamic_world, latlons, masks, training=training)
        return [tf.cast(tf.reshape(out, tf.stack([b, h, w, self.model.embedding_size])), tf.float32)]

    @staticmethod
    def _per_pixel(x: tf.Tensor, h, w) -> tf.Tensor:
        """``[B, T]`` -> ``[B·H·W, T]`` (the value of each example repeated per pixel)."""
        s = tf.shape(x)
        return tf.reshape(tf.broadcast_to(x[:, None, None, :], tf.stack([s[0], h, w, s[1]])), tf.stack([-1, s[1]]))

    @staticmethod
    def _pixels(x: tf.Tensor) -> tf.Tensor:
        """``[B, T, H, W, C]`` -> ``[B·H·W, T, C]`` (pixel-major, b h w order)."""
        s = tf.shape(x)
        return tf.reshape(tf.transpose(x, [0, 2, 3, 1, 4]), tf.stack([-1, s[1], s[4]]))

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        return [(1, self.model.embedding_size)]

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return self.model.torch_params(join(prefix, "model"))

    def get_config(self):
        return {
            **super().get_config(),
            "pretrained_path": self.pretrained_path,
            "pixel_batch_size": self.pixel_batch_size,
            "random_initialization": self.random_initialization,
        }
