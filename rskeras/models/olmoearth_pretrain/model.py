"""OlmoEarth feature extractor (rslearn ``rslearn.models.olmoearth_pretrain.model.OlmoEarth``).

The model inputs are the modalities ``sentinel2_l2a`` (12 bands B02, B03, B04, B08, B05,
B06, B07, B8A, B11, B12, B01, B09), ``sentinel1`` (vv, vh in dB) and ``landsat`` (B8, B1,
..., B7, B9, B10, B11), each ``[B, T, H, W, C]``, with the time-series keys of
docs/design.md: ``<key>_timestep_mask`` (which timesteps / modalities an example has) and
``<key>_timestamps`` (needed with ``use_legacy_timestamps=False``).

Steps, as rslearn's wrapper and olmoearth_pretrain's encoder:

1. optional normalization (``normalize``: :class:`~.norm.OlmoEarthNormalize` of the raw
   inputs);
2. the per-batch timeline (``timestamps.py``): legacy slots, or images merged across
   modalities within ``timestamp_error_tolerance``;
3. the encoder (``encoder.py``; missing tokens handled as olmoearth_pretrain does);
4. pooling (``pooling.py``): one ``[B, H/p, W/p, D]`` map, or the unpooled tokens.

Output: FeatureMaps ``[tensor [B, H/p, W/p, D]]``; with ``token_pooling=False`` a
TokenFeatureMaps dict ``{"feature_maps": [[B, H/p, W/p, N, D]], "masks": [[B, H/p, W/p, N]]}``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import keras
import tensorflow as tf

from rskeras.keras_compat import keep_input_dtypes
from rskeras.models.component import FeatureExtractor
from rskeras.models.olmoearth_pretrain import bundle, modalities
from rskeras.models.olmoearth_pretrain.config import (
    EncoderConfig,
    ModelID,
    encoder_config_from_bundle,
    model_id_config,
)
from rskeras.models.olmoearth_pretrain.encoder import Encoder
from rskeras.models.olmoearth_pretrain.encodings import BASE_GSD
from rskeras.models.olmoearth_pretrain.norm import OlmoEarthNormalize, load_computed_config
from rskeras.models.olmoearth_pretrain.pooling import pool_tokens, unpooled_tokens
from rskeras.models.olmoearth_pretrain.timestamps import (
    DEFAULT_TOLERANCE,
    image_centers,
    parse_timedelta,
    prepare_legacy,
    prepare_merged,
)
from rskeras.models.time_inputs import TIMESTAMPS_SUFFIX, TIMESTEP_MASK_SUFFIX
from rskeras.weights.torch_params import TorchParam, join, load_torch_state_dict

logger = logging.getLogger(__name__)

MODALITY_NAMES = modalities.WRAPPER_MODALITIES
AUTOCAST_DTYPES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "float32": "float32"}
SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math")

EMBEDDING_SIZES = {model_id: model_id_config(model_id).embedding_size for model_id in ModelID}


@keras.saving.register_keras_serializable(package="rskeras")
class OlmoEarth(FeatureExtractor):
    """The OlmoEarth encoder on rskeras model inputs.

    Args:
        patch_size: token size in pixels (1..8 recommended; H and W must be multiples).
        model_id: a released model (``OLMOEARTH_V1_NANO`` ... or ``OlmoEarth-v1-Nano`` ...).
            Its bundle must be on disk (``$OLMOEARTH_BUNDLE_DIR/<id>/`` or the Hugging Face
            cache); with ``random_initialization`` the architecture table suffices.
        model_path: a bundle directory (config.json + weights.pth, or a converted
            weights.safetensors / weights.npz).
        checkpoint_path: a pretraining checkpoint directory (config.json + the
            model_and_optim distributed checkpoint): only its config.json is read here,
            so use it with ``random_initialization`` or put a weights file beside it.
        selector: the part of the pretraining model to use: ``[encoder]`` (default) or
            ``[target_encoder]``.
        forward_kwargs: extra encoder arguments; only ``input_res`` (metres per pixel,
            default 10) is supported.
        random_initialization: build the architecture only (no weights read).
        embedding_size: channels reported by ``get_backbone_channels`` (default: the
            architecture's).
        autocast_dtype: "bfloat16" (default, rslearn's), "float16", "float32" or None:
            the encoder's Keras mixed-precision policy (matmuls in that dtype, LayerNorm,
            softmax and the residual stream in float32); None/"float32" is full precision.
        token_pooling: pool over timesteps, band groups and modalities (default True).
        use_location_token_output / projected_location_token_dim: read the
            AttentionPooler's location tokens (OlmoEarth v1.3); not supported.
        use_legacy_timestamps: dummy dates (day 1, month t, 2024) per timestep index
            (default True, deprecated in rslearn) instead of the images' timestamps.
        timestamp_error_tolerance: merge images of different modalities whose times differ
            by less than this (default 15 days): a timedelta, "15 days, 0:00:00", "P15D"
            or {days: 15}.
        normalize: normalize raw inputs inside the model (OlmoEarthNormalize of every
            modality with statistics).
        normalize_std_multiplier: its std multiplier (default 2).
        compile_model: compile the encoder with XLA (``tf.function(jit_compile=True)``,
            rslearn: ``torch.compile``; recompiles per input shape).
        sdpa_backends: rslearn's priority list of torch attention kernels ("cudnn",
            "flash", "efficient", "math"); validated and ignored: rskeras' attention is
            the "math" formulation, and TensorFlow / XLA choose the kernels.
    """

    def __init__(
        self,
        patch_size: int,
        model_id: ModelID | str | None = None,
        model_path: str | None = None,
        checkpoint_path: str | None = None,
        selector: list[str | int] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        random_initialization: bool = False,
        embedding_size: int | None = None,
        autocast_dtype: str | None = "bfloat16",
        token_pooling: bool = True,
        use_location_token_output: bool = False,
        projected_location_token_dim: int | None = None,
        use_legacy_timestamps: bool = True,
        timestamp_error_tolerance: Any = DEFAULT_TOLERANCE,
        normalize: bool = False,
        normalize_std_multiplier: float | None = 2,
        compile_model: bool = False,
        sdpa_backends: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if use_legacy_timestamps:
            warnings.warn(
                "For new projects, don't use legacy timesteps. Support will be removed after 2026-04-01.",
                FutureWarning,
                stacklevel=2,
            )
        if sum(x is not None for x in (model_id, model_path, checkpoint_path)) != 1:
            raise ValueError("exactly one of model_id, model_path, or checkpoint_path must be set")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        selector = list(selector) if selector is not None else ["encoder"]
        if selector not in (["encoder"], ["target_encoder"]):
            raise ValueError(f"selector {selector}: rskeras builds OlmoEarth encoders only (['encoder'] or ['target_encoder'])")
        forward_kwargs = dict(forward_kwargs or {})
        unknown = sorted(set(forward_kwargs) - {"input_res"})
        if unknown:
            raise ValueError(f"forward_kwargs: unsupported argument(s) {unknown} (only input_res)")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be one of {sorted(AUTOCAST_DTYPES)} or None, got {autocast_dtype!r}")
        for name in sdpa_backends or []:
            if name not in SDPA_BACKENDS:
                raise KeyError(f"sdpa_backends: unknown backend {name!r} (expected {list(SDPA_BACKENDS)})")
        if projected_location_token_dim is not None and not use_location_token_output:
            raise ValueError(
                "projected_location_token_dim requires use_location_token_output=True "
                "(the student only exists on models with an AttentionPooler)"
            )
        self.patch_size = patch_size
        self.model_id = ModelID.parse(model_id) if model_id is not None else None
        self.model_path = model_path
        self.checkpoint_path = checkpoint_path
        self.selector = selector
        self.forward_kwargs = forward_kwargs
        self.input_res = float(forward_kwargs.get("input_res", BASE_GSD))
        self.random_initialization = bool(random_initialization)
        self.autocast_dtype = autocast_dtype
        self.token_pooling = bool(token_pooling)
        self.use_location_token_output = bool(use_location_token_output)
        self.projected_location_token_dim = projected_location_token_dim
        self.use_legacy_timestamps = bool(use_legacy_timestamps)
        self.timestamp_error_tolerance = parse_timedelta(timestamp_error_tolerance)
        self.compile_model = bool(compile_model)
        self.sdpa_backends = list(sdpa_backends) if sdpa_backends is not None else None

        config, weights = self._resolve_architecture()
        if self.use_location_token_output:
            raise ValueError(
                "use_location_token_output=True but the model has no AttentionPooler "
                "(location tokens exist only in OlmoEarth v1.3, which rskeras does not support)"
            )
        self.config = config
        self.embedding_size = embedding_size if embedding_size is not None else config.embedding_size
        policy = AUTOCAST_DTYPES.get(autocast_dtype) if autocast_dtype is not None else None
        self.encoder = Encoder(config, name="model", dtype=policy or self.dtype_policy)
        if weights is not None:
            self.load_encoder_weights(bundle.read_encoder_weights(weights, self.selector), weights)
        self._dropped_warned: set[str] = set()
        self._core = tf.function(self._encode, jit_compile=True) if self.compile_model else self._encode

        self.normalize = bool(normalize)
        self.normalizer = None
        if self.normalize:
            stats = load_computed_config()
            band_names = {m: modalities.get(m).band_order for m in MODALITY_NAMES if m in stats}
            self.normalizer = OlmoEarthNormalize(band_names, std_multiplier=normalize_std_multiplier, skip_missing=True)
        keep_input_dtypes(self)  # float64 timestamps must stay float64
        self.built = True

    # ---- construction -------------------------------------------------------------------

    def _resolve_architecture(self) -> tuple[EncoderConfig, str | None]:
        """(encoder config, weights file or None) from model_id / model_path / checkpoint_path."""
        if self.model_id is not None:
            directory = bundle.find_model_id_bundle(self.model_id)
            if directory is None:
                if self.random_initialization:
                    config = model_id_config(self.model_id)
                    config.validate()
                    return config, None
                raise bundle.BundleError(
                    f"OlmoEarth model_id {self.model_id.name}: no local bundle (rskeras never downloads weights at run time); "
                    + bundle.download_hint(self.model_id)
                )
            config = encoder_config_from_bundle(bundle.read_config(directory), f"{directory}/config.json")
            # olmoearth_pretrain restricts released models to the modalities they were trained on.
            config.encoder_input_modalities = list(modalities.RELEASED_ENCODER_INPUTS)
            return config, None if self.random_initialization else bundle.weights_file(directory)
        if self.model_path is not None:
            config = encoder_config_from_bundle(bundle.read_config(self.model_path), f"{self.model_path}/config.json")
            return config, None if self.random_initialization else bundle.weights_file(self.model_path)
        raw = bundle.read_config(self.checkpoint_path)
        enc = (raw.get("model") or {}).get("encoder_config")
        if not isinstance(enc, dict):
            raise bundle.BundleError(f"{self.checkpoint_path}/config.json: no model.encoder_config")
        enc = dict(enc)
        enc.setdefault("use_linear_patch_embed", False)  # rslearn's legacy-checkpoint patch
        config = EncoderConfig.from_dict(enc, where=f"{self.checkpoint_path}/config.json: model.encoder_config")
        if self.random_initialization:
            return config, None
        try:
            return config, bundle.weights_file(self.checkpoint_path)
        except bundle.BundleError:
            raise bundle.BundleError(
                f"{self.checkpoint_path}: the model_and_optim distributed checkpoint needs torch and olmo-core; "
                "save its state dict as weights.pth beside config.json (see docs/weights.md) or use model_path"
            ) from None

    def load_encoder_weights(self, state: dict, where: str = "<state dict>") -> None:
        """Loads an encoder state dict (olmoearth_pretrain ``Encoder`` keys), strictly."""
        try:
            load_torch_state_dict(self.encoder, state, prefix="", strict=True)
        except ValueError as e:
            raise bundle.BundleError(f"{where}: {e}") from None

    # ---- inputs ---------------------------------------------------------------------------

    def _modalities(self, context: dict) -> list[str]:
        encoded = self.config.encoded_modalities()
        out = []
        for m in MODALITY_NAMES:
            if m not in context:
                continue
            if m not in encoded:
                if m not in self._dropped_warned:
                    self._dropped_warned.add(m)
                    logger.warning("OlmoEarth: ignoring input %r: this encoder was only trained to encode %s", m, encoded)
                continue
            if len(context[m].shape) == 5 and context[m].shape[1] == 0:
                continue  # no example of the batch has it (T = 0): absent, as in rslearn
            out.append(m)
        if not out:
            raise ValueError(f"OlmoEarth: no modality in the inputs (expected some of {[m for m in MODALITY_NAMES if m in encoded]}; got {sorted(context)})")
        return out

    def prepare(self, context: dict):
        """(images, valid, timestamps): the aligned modality tensors
        ``[B, T, H, W, C]``, bool ``[B, T]`` and int32 ``[B, T, 3]`` handed to the encoder."""
        names = self._modalities(context)
        images, masks, centers = {}, {}, {}
        for m in names:
            x = context[m]
            if len(x.shape) != 5:
                raise ValueError(f"OlmoEarth: input {m!r} must be [B, T, H, W, C], got shape {tuple(x.shape)}")
            want = modalities.get(m).num_bands
            if x.shape[-1] is not None and x.shape[-1] != want:
                raise ValueError(f"OlmoEarth: input {m!r} has {x.shape[-1]} channels, expected {want} ({modalities.get(m).band_order})")
            for axis, size in (("height", x.shape[2]), ("width", x.shape[3])):
                if size is not None and size % self.patch_size:
                    raise ValueError(f"OlmoEarth: input {m!r} {axis} {size} is not a multiple of patch_size {self.patch_size}")
            images[m] = tf.cast(x, tf.float32)
            mask = context.get(m + TIMESTEP_MASK_SUFFIX)
            masks[m] = tf.cast(mask, tf.bool) if mask is not None else tf.ones(tf.shape(x)[:2], tf.bool)
            if not self.use_legacy_timestamps:
                stamps = context.get(m + TIMESTAMPS_SUFFIX)
                if stamps is None:
                    raise ValueError(
                        f"OlmoEarth(use_legacy_timestamps=False): input {m!r} has no timestamps; set load_timestamps: true "
                        f"on its DataInput (model input {m + TIMESTAMPS_SUFFIX!r}), or use legacy timestamps"
                    )
                centers[m] = image_centers(stamps)
        if self.use_legacy_timestamps:
            t_static = [images[m].shape[1] for m in names]
            if all(t is not None for t in t_static) and max(t_static) > 12:
                raise ValueError(f"OlmoEarth legacy timestamps date timestep t as month t: at most 12 timesteps, got {max(t_static)}")
            return prepare_legacy(images, masks)
        for m in names:
            unknown = tf.reduce_any(masks[m] & tf.math.is_nan(centers[m]))
            tf.debugging.assert_equal(
                unknown,
                False,
                message=f"OlmoEarth: modality {m} has some images without a timestamp; enable use_legacy_timestamps if timestamps are unavailable",
            )
        return prepare_merged(images, masks, centers, self.timestamp_error_tolerance.total_seconds())

    # ---- forward --------------------------------------------------------------------------

    def _encode(self, images, valid, timestamps, training=None):
        return self.encoder(images, valid, timestamps, patch_size=self.patch_size, input_res=self.input_res, training=training)

    def call(self, context, training=None):
        if self.normalizer is not None:
            context, _ = self.normalizer(dict(context), {})
        images, valid, timestamps = self.prepare(context)
        if self.compile_model:
            tokens = self._core(images, valid, timestamps, training=bool(training))
        else:
            tokens = self._encode(images, valid, timestamps, training=training)
        if self.token_pooling:
            return [pool_tokens(tokens, valid)]
        maps, masks = unpooled_tokens(tokens, valid)
        return {"feature_maps": [maps], "masks": [masks]}

    def get_backbone_channels(self) -> list:
        return [(self.patch_size, self.embedding_size)]

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return self.encoder.torch_params(join(prefix, "model"))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "model_id": self.model_id.name if self.model_id is not None else None,
                "model_path": self.model_path,
                "checkpoint_path": self.checkpoint_path,
                "selector": self.selector,
                "forward_kwargs": self.forward_kwargs,
                "random_initialization": True,  # weights travel with the Keras model
                "embedding_size": self.embedding_size,
                "autocast_dtype": self.autocast_dtype,
                "token_pooling": self.token_pooling,
                "use_legacy_timestamps": self.use_legacy_timestamps,
                "timestamp_error_tolerance": str(self.timestamp_error_tolerance),
                "normalize": self.normalize,
                "compile_model": self.compile_model,
                "sdpa_backends": self.sdpa_backends,
            }
        )
        return config


__all__ = ["EMBEDDING_SIZES", "ModelID", "OlmoEarth"]
