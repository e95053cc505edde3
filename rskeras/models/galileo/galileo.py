"""rslearn's Galileo feature extractor (``rslearn.models.galileo.galileo.GalileoModel``)."""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import tempfile
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import FeatureExtractor
from rskeras.models.galileo.single_file_galileo import (
    CONFIG_FILENAME,
    DEFAULT_MONTH,
    ENCODER_FILENAME,
    GalileoEncoder,
    normalization_constants,
)
from rskeras.models.time_inputs import input_months, timestep_mask_key
from rskeras.weights.torch_params import TorchParam, join, load_torch_state_dict

logger = logging.getLogger(__name__)

HF_HUB_ID = "nasaharvest/galileo"
HF_REVISION = "f039dd5dde966a931baeda47eb680fa89b253e4e"


class GalileoSize(str, enum.Enum):
    """Size of the Galileo model."""

    NANO = "nano"
    TINY = "tiny"
    BASE = "base"


pretrained_weights = {GalileoSize.NANO: "models/nano", GalileoSize.TINY: "models/tiny", GalileoSize.BASE: "models/base"}

# The encoder config.json of each released size (nasaharvest/galileo config/models/*.json).
SIZE_CONFIGS: dict[str, dict[str, Any]] = {
    "nano": dict(embedding_size=128, depth=4, num_heads=8, mlp_ratio=4, max_sequence_length=24, freeze_projections=False, drop_path=0.1, max_patch_size=8),
    "tiny": dict(embedding_size=192, depth=12, num_heads=3, mlp_ratio=4, max_sequence_length=24, freeze_projections=False, drop_path=0.1, max_patch_size=8),
    "base": dict(embedding_size=768, depth=12, num_heads=12, mlp_ratio=4, max_sequence_length=24, freeze_projections=False, drop_path=0.1, max_patch_size=8),
}

AUTOCAST_POLICIES = {"bfloat16": "mixed_bfloat16", "float32": "float32"}

# input key -> (kind, Galileo groups with their channel slices of the input)
INPUT_GROUPS: dict[str, tuple[str, dict[str, slice]]] = {
    "s1": ("space_time", {"S1": slice(0, 2)}),
    "s2": ("space_time", {"S2_RGB": slice(0, 3), "S2_Red_Edge": slice(3, 6), "S2_NIR_10m": slice(6, 7),
                          "S2_NIR_20m": slice(7, 8), "S2_SWIR": slice(8, 10)}),
    "era5": ("time", {"ERA5": slice(0, 2)}),
    "tc": ("time", {"TC": slice(0, 3)}),
    "viirs": ("time", {"VIIRS": slice(0, 1)}),
    "srtm": ("space", {"SRTM": slice(0, 2)}),
    "dw": ("space", {"DW": slice(0, 9)}),
    "wc": ("space", {"WC": slice(0, 5)}),
    "landscan": ("static", {"LS": slice(0, 1)}),
    "latlon": ("static", {"location": slice(0, 2)}),
}
INPUT_CHANNELS = {"s1": 2, "s2": 10, "era5": 2, "tc": 3, "viirs": 1, "srtm": 2, "dw": 9, "wc": 5, "landscan": 1, "latlon": 2}
# first band of each input inside its kind's band table (for the normalisation constants)
_BAND_OFFSETS = {"s1": 0, "s2": 2, "era5": 0, "tc": 2, "viirs": 5, "srtm": 0, "dw": 2, "wc": 11, "landscan": 0, "latlon": 1}
MONTH_KEYS = ["s1", "s2", "era5", "tc", "viirs"]


def _nanmean(x: tf.Tensor, axis) -> tf.Tensor:
    finite = tf.math.is_finite(x)
    total = tf.reduce_sum(tf.where(finite, x, tf.zeros_like(x)), axis=axis)
    count = tf.reduce_sum(tf.cast(finite, x.dtype), axis=axis)
    return total / count


def _first(value, x: tf.Tensor, axis: int):
    """``value`` if already known, else the (static if possible) size of ``x`` on ``axis``."""
    if value is not None:
        return value
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def to_cartesian(latlon: tf.Tensor) -> tf.Tensor:
    """``[..., 2]`` (lat, lon) degrees -> ``[..., 3]`` unit vector (x, y, z)."""
    rad = latlon * (math.pi / 180.0)
    lat, lon = rad[..., 0], rad[..., 1]
    return tf.stack([tf.cos(lat) * tf.cos(lon), tf.cos(lat) * tf.sin(lon), tf.sin(lat)], axis=-1)


def galileo_download_help(size: str, folder: str) -> str:
    base = f"https://huggingface.co/{HF_HUB_ID}/resolve/{HF_REVISION}/{pretrained_weights[GalileoSize(size)]}"
    return (
        f"rskeras does not download weights: download {base}/{CONFIG_FILENAME} and {base}/{ENCODER_FILENAME} "
        f"into {folder}/ and pass the directory above 'models/' as pretrained_path "
        "(or set random_initialization: true to train from scratch)"
    )


@keras.saving.register_keras_serializable(package="rskeras")
class GalileoModel(FeatureExtractor):
    """Galileo backbone (rslearn ``rslearn.models.galileo.GalileoModel``).

    Inputs are **raw** values: rslearn always normalises inside (Galileo's shift/div
    tables with the pretraining statistics replacing them for S1/S2/SRTM/time/LandScan
    bands). Keys (each optional, at least one of s1/s2/space inputs):

    * ``s1`` ``[B, T, H, W, 2]`` VV, VH in dB; ``s2`` ``[B, T, H, W, 10]`` B2, B3, B4, B5, B6,
      B7, B8, B8A, B11, B12 (L2A reflectance × 1e4);
    * ``era5`` (2), ``tc`` (3), ``viirs`` (1): ``[B, T, H, W, C]``, averaged over H, W
      (NaN ignored);
    * ``srtm`` (2), ``dw`` (9), ``wc`` (5): ``[B, T, H, W, C]``, first timestep used;
    * ``landscan`` (1), ``latlon`` (2, degrees): averaged over T, H, W;
    * ``<key>_timestamps`` ``[B, T, 2]`` (DataInput ``load_timestamps``): months = month of
      each range's centre from the first of s1, s2, era5, tc, viirs that has them; without
      timestamps every month is 5 (June).

    NDVI is never computed (its group stays masked). Output (one feature map):

    * ``H > patch_size``: the final-norm s_t tokens of the S1/S2 groups present, averaged
      over time and groups: ``[B, H/p, W/p, D]``;
    * ``H == patch_size`` (and ``H < patch_size``, where the patch size is reduced to H):
      the average of all tokens, ``[B, 1, 1, D]``.

    Weights (torch keys ``model.<Encoder key>``) come from ``pretrained_path``, a local
    directory holding ``models/<size>/config.json`` and ``models/<size>/encoder.pt`` (the
    layout of the ``nasaharvest/galileo`` Hugging Face repository; the architecture comes
    from that config.json). rskeras never downloads them.

    Args:
        size: "nano" (D 128, depth 4), "tiny" (192, 12) or "base" (768, 12).
        patch_size: int, patch side in pixels, default 4 (the stored kernels are 8×8 and are
            resized for other sizes).
        pretrained_path: local directory (see above); None looks in rslearn's cache
            ``<tmp>/rslearn_cache/galileo``.
        autocast_dtype: "bfloat16" (default, Keras ``mixed_bfloat16`` for the encoder),
            "float32", or None (the global Keras policy).
        random_initialization: rskeras extension: build the size's architecture with random
            weights instead of loading files, default False.

    Call: context dict -> FeatureMaps with one ``[B, h, w, D]`` map.
    """

    input_keys = list(INPUT_GROUPS)

    def __init__(
        self,
        size: str = "nano",
        patch_size: int = 4,
        pretrained_path: str | None = None,
        autocast_dtype: str | None = "bfloat16",
        random_initialization: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)  # keep float64 timestamps; inputs are cast below
        super().__init__(**kwargs)
        size = size.value if isinstance(size, GalileoSize) else str(size)
        if size not in SIZE_CONFIGS:
            raise ValueError(f"GalileoModel: unknown size {size!r}; expected one of {sorted(SIZE_CONFIGS)}")
        if int(patch_size) < 1:
            raise ValueError(f"GalileoModel: patch_size must be >= 1, got {patch_size}")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_POLICIES:
            raise ValueError(f"GalileoModel: autocast_dtype must be one of {sorted(AUTOCAST_POLICIES)} or null, got {autocast_dtype!r}")
        self.size = size
        self.patch_size = int(patch_size)
        self.pretrained_path = None if pretrained_path is None else os.fspath(pretrained_path)
        self.autocast_dtype = autocast_dtype
        self.random_initialization = bool(random_initialization)
        policy = AUTOCAST_POLICIES[autocast_dtype] if autocast_dtype else None
        if self.random_initialization:
            encoder_config, state = dict(SIZE_CONFIGS[size]), None
        else:
            encoder_config, state = self._read_folder()
        self.encoder_config = encoder_config
        self.model = GalileoEncoder(**encoder_config, name="model", **({"dtype": policy} if policy else {}))
        self._norm = {k: (v[0].astype(np.float32), v[1].astype(np.float32)) for k, v in normalization_constants().items()}
        self.built = True
        if state is not None:
            load_torch_state_dict(self.model, state)

    def _folder(self) -> str:
        root = self.pretrained_path or os.path.join(tempfile.gettempdir(), "rslearn_cache", "galileo")
        return os.path.join(root, pretrained_weights[GalileoSize(self.size)])

    def _read_folder(self) -> tuple[dict, dict]:
        from rskeras.weights.files import read_state_dict

        folder = self._folder()
        config_path = os.path.join(folder, CONFIG_FILENAME)
        weights = [os.path.join(folder, n) for n in (ENCODER_FILENAME, "encoder.safetensors", "encoder.npz")]
        weights_path = next((p for p in weights if os.path.exists(p)), None)
        if not os.path.exists(config_path) or weights_path is None:
            missing = [n for n, ok in ((CONFIG_FILENAME, os.path.exists(config_path)), (ENCODER_FILENAME, weights_path)) if not ok]
            raise FileNotFoundError(f"GalileoModel(size={self.size!r}): {', '.join(missing)} not found in {folder}; {galileo_download_help(self.size, folder)}")
        with open(config_path) as f:
            try:
                encoder_config = json.load(f)["model"]["encoder"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"GalileoModel: {config_path} is not a Galileo config (expected {{'model': {{'encoder': {{...}}}}}}): {e}") from None
        state = read_state_dict(weights_path)
        # the released files occasionally carry an extra ".backbone" in their keys
        state = {k.replace(".backbone", ""): v for k, v in state.items()}
        return dict(encoder_config), state

    # -- inputs --

    def _normalise(self, key: str, x: tf.Tensor) -> tf.Tensor:
        kind = INPUT_GROUPS[key][0]
        shift, div = self._norm[kind]
        lo = _BAND_OFFSETS[key]
        n = INPUT_CHANNELS[key] if key != "latlon" else 3
        return (x - shift[lo : lo + n]) / div[lo : lo + n]

    def _check_channels(self, key: str, x: tf.Tensor):
        want = INPUT_CHANNELS[key]
        if len(x.shape) != 5:
            raise ValueError(f"GalileoModel: input '{key}' must be [B, T, H, W, C], got shape {tuple(x.shape)}")
        if x.shape[-1] is not None and x.shape[-1] != want:
            raise ValueError(f"GalileoModel: input '{key}' must have {want} channels, got {x.shape[-1]}")

    def galileo_inputs(self, context: dict) -> tuple[dict, dict, dict, dict, tf.Tensor, Any, dict]:
        """(s_t, sp, t, st groups, months, height, timestep masks per group) built from the
        context as rslearn's ``construct_galileo_input(normalize=True)`` does for the given
        keys. Inputs with T = 0 (absent from the whole batch) are left out; the
        ``<key>_timestep_mask`` of time-series inputs marks padded timesteps."""
        present = [k for k in self.input_keys if k in context and context[k].shape[1] != 0]
        if not present:
            raise ValueError(f"GalileoModel: the input dict has none of the keys {self.input_keys}")
        groups: dict[str, dict[str, tf.Tensor]] = {"space_time": {}, "space": {}, "time": {}, "static": {}}
        masks: dict[str, tf.Tensor] = {}
        timesteps, height, batch = None, None, None
        for key in present:
            x = tf.cast(context[key], tf.float32)
            self._check_channels(key, x)
            kind, slices = INPUT_GROUPS[key]
            batch = tf.shape(x)[0]
            if kind in ("space_time", "time"):
                if isinstance(timesteps, int) and x.shape[1] is not None and x.shape[1] != timesteps:
                    raise ValueError(f"GalileoModel: inputs have different numbers of timesteps ({timesteps} and {x.shape[1]} for '{key}')")
                mask_key = timestep_mask_key(key)
                if mask_key in context:
                    masks.update({g: tf.cast(context[mask_key], tf.bool) for g in slices})
            if kind == "space_time":
                timesteps = _first(timesteps, x, 1)
                height = height if height is not None else x.shape[2]
            elif kind == "space":
                x = x[:, 0]
                height = height if height is not None else x.shape[1]
            elif kind == "time":
                timesteps = _first(timesteps, x, 1)
                x = _nanmean(x, axis=[2, 3])
            else:
                x = _nanmean(x, axis=[1, 2, 3])
                if key == "latlon":
                    x = to_cartesian(x)
            x = self._normalise(key, x)
            for group, sl in slices.items():
                groups[kind][group] = x if key == "latlon" else x[..., sl]
        if timesteps is None:
            timesteps = 1
        months = input_months(context, MONTH_KEYS, DEFAULT_MONTH)
        if months is None:
            months = tf.fill(tf.stack([batch, timesteps]), tf.constant(DEFAULT_MONTH, tf.int32))
        return groups["space_time"], groups["space"], groups["time"], groups["static"], months, height, masks

    def effective_patch_size(self, height: int | None) -> int:
        """The patch size used for an input of ``height`` pixels (reduced to H when smaller)."""
        if height is not None and height < self.patch_size:
            logger.warning("GalileoModel: patch size %d > input height %d; reducing the patch size to %d", self.patch_size, height, height)
            return int(height)
        return self.patch_size

    def call(self, context, training=None):
        s_t, sp, t, st, months, height, masks = self.galileo_inputs(context)
        patch_size = self.effective_patch_size(height)
        s_t_tokens, tokens, token_mask = self.model.encode(s_t, sp, t, st, months, patch_size, masks, training=training)
        if height is not None and height == patch_size:
            # a single spatial patch: the average of every (unmasked) token
            if token_mask is None:
                pooled = tf.reduce_mean(tokens, axis=1)
            else:
                w = tf.cast(token_mask, tokens.dtype)[..., None]
                pooled = tf.reduce_sum(tokens * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1.0)
            return [pooled[:, None, None, :]]
        if not s_t_tokens:
            raise ValueError("GalileoModel: with H > patch_size the output pools the s1/s2 tokens; give 's1' or 's2'")
        if not masks:
            # mean over time per group, then over the S1/S2 groups: [B, h, w, D]
            pooled = [tf.reduce_mean(v, axis=1) for v in s_t_tokens.values()]
            return [tf.add_n(pooled) / float(len(pooled)) if len(pooled) > 1 else pooled[0]]
        # padded timesteps / absent modalities: the mean over the real (timestep, group) tokens
        total, count = 0.0, 0.0
        for g, v in s_t_tokens.items():
            w = tf.cast(masks[g], v.dtype)[:, :, None, None, None] if g in masks else tf.ones_like(v[:, :, :1, :1, :1])
            total = total + tf.reduce_sum(v * w, axis=1)
            count = count + tf.reduce_sum(w, axis=1)
        return [total / tf.maximum(count, 1.0)]

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        """``[(patch_size, D)]`` for every size (rslearn raises AttributeError for nano and
        tiny, reading a ``model_size`` attribute that does not exist)."""
        return [(self.patch_size, int(self.encoder_config["embedding_size"]))]

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return self.model.torch_params(join(prefix, "model"))

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "patch_size": self.patch_size,
            "pretrained_path": self.pretrained_path,
            "autocast_dtype": self.autocast_dtype,
            "random_initialization": self.random_initialization,
        }


# rskeras name of the same class
Galileo = GalileoModel
