"""SatlasPretrain backbones (Swin-v2 / ResNet, optional FPN + upsampling head).

Mirrors ``rslearn.models.satlaspretrain.SatlasPretrain``, which wraps
``satlaspretrain_models.Model``. Weights come from a local file (rskeras never
downloads): either the original ``<identifier lowercased>.pth`` of the
``allenai/satlas-pretrain`` Hugging Face repository, a state dict converted from it with
``tools/convert_weights.py``, or a state dict keyed like rslearn's module
(``model.backbone...``).
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from rskeras.models.component import FeatureExtractor, single_timestep
from rskeras.models.fpn import Fpn
from rskeras.models.interpolate import resize_bilinear
from rskeras.models.resnet import ResNet
from rskeras.models.swin import build_swin_transformer
from rskeras.models.torch_nn import Conv2d, TorchBiasInitializer, torch_kernel_initializer
from rskeras.weights.torch_params import TorchParam, conv_params, join, load_torch_state_dict

logger = logging.getLogger(__name__)

# identifier -> (backbone, input channels per image, multi-image)
IDENTIFIERS: dict[str, tuple[str, int, bool]] = {
    "Sentinel2_SwinB_SI_RGB": ("swinb", 3, False),
    "Sentinel2_SwinB_MI_RGB": ("swinb", 3, True),
    "Sentinel2_SwinB_SI_MS": ("swinb", 9, False),
    "Sentinel2_SwinB_MI_MS": ("swinb", 9, True),
    "Sentinel1_SwinB_SI": ("swinb", 2, False),
    "Sentinel1_SwinB_MI": ("swinb", 2, True),
    "Landsat_SwinB_SI": ("swinb", 11, False),
    "Landsat_SwinB_MI": ("swinb", 11, True),
    "Aerial_SwinB_SI": ("swinb", 3, False),
    "Aerial_SwinB_MI": ("swinb", 3, True),
    "Sentinel2_SwinT_SI_RGB": ("swint", 3, False),
    "Sentinel2_SwinT_SI_MS": ("swint", 9, False),
    "Sentinel2_SwinT_MI_RGB": ("swint", 3, True),
    "Sentinel2_SwinT_MI_MS": ("swint", 9, True),
    "Sentinel2_Resnet50_SI_RGB": ("resnet50", 3, False),
    "Sentinel2_Resnet50_SI_MS": ("resnet50", 9, False),
    "Sentinel2_Resnet50_MI_RGB": ("resnet50", 3, True),
    "Sentinel2_Resnet50_MI_MS": ("resnet50", 9, True),
    "Sentinel2_Resnet152_SI_RGB": ("resnet152", 3, False),
    "Sentinel2_Resnet152_SI_MS": ("resnet152", 9, False),
    "Sentinel2_Resnet152_MI_RGB": ("resnet152", 3, True),
    "Sentinel2_Resnet152_MI_MS": ("resnet152", 9, True),
}

BACKBONE_CHANNELS = {
    "swinb": [(4, 128), (8, 256), (16, 512), (32, 1024)],
    "swint": [(4, 96), (8, 192), (16, 384), (32, 768)],
    "resnet50": [(4, 256), (8, 512), (16, 1024), (32, 2048)],
    "resnet152": [(4, 256), (8, 512), (16, 1024), (32, 2048)],
}

FPN_CHANNELS = 128  # hard-coded in satlaspretrain_models
MAX_IMAGES = 8  # AggregationBackbone groups [[0..7]]: further images are ignored
PRETRAIN_SIZE = 512


@keras.saving.register_keras_serializable(package="rskeras")
class SatlasUpsample(keras.layers.Layer):
    """satlaspretrain_models' ``Upsample`` head: a full-resolution map from the finest map.

    While the factor is > 1: Conv(ch, ch, 3, padding 1) -> ReLU ->
    ConvTranspose(ch, next_ch, 4, stride 2, padding 1) -> ReLU, halving the factor;
    ``next_ch = max(ch // 2, out_channels)`` with out_channels = the finest map's channels,
    so the width stays constant. Torch keys ``layers.<k>.0.*`` and ``layers.<k>.2.*``.

    Args:
        backbone_channels: list of (factor, channels) of the input maps.

    Call: FeatureMaps -> ``[upsampled finest map] + inputs`` (one more map, at 1/1).
    """

    def __init__(self, backbone_channels: list, **kwargs):
        super().__init__(**kwargs)
        self.backbone_channels = [[int(f), int(c)] for f, c in backbone_channels]
        factor, ch = self.backbone_channels[0]
        out_channels = ch
        self.convs, self.deconvs = [], []
        k = 0
        while factor > 1:
            next_ch = max(ch // 2, out_channels)
            self.convs.append(Conv2d(ch, ch, 3, padding=1, name=f"conv_{k}"))
            deconv = keras.layers.Conv2DTranspose(
                next_ch, 4, strides=2, padding="same", kernel_initializer=torch_kernel_initializer(),
                bias_initializer=TorchBiasInitializer(next_ch * 16), name=f"deconv_{k}",
            )
            # torch ConvTranspose2d(k4, s2, p1) crops one pixel per side of the 2H+2
            # full output; Keras "same" gives 2H cropping the same pixels.
            deconv.build((None, None, None, ch))
            self.deconvs.append(deconv)
            ch = next_ch
            factor //= 2
            k += 1
        self.built = True

    def call(self, maps, training=None):
        x = maps[0]
        for conv, deconv in zip(self.convs, self.deconvs):
            x = tf.nn.relu(deconv(tf.nn.relu(conv(x))))
        return [x] + list(maps)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for k, (conv, deconv) in enumerate(zip(self.convs, self.deconvs)):
            out += conv.torch_params(join(prefix, f"layers.{k}.0"))
            out += conv_params(deconv, join(prefix, f"layers.{k}.2"), "conv_transpose2d")
        return out

    def get_config(self):
        return {**super().get_config(), "backbone_channels": self.backbone_channels}


def satlas_checkpoint_to_model_keys(weights: dict, model_identifier: str) -> dict:
    """Original SatlasPretrain ``.pth`` keys -> keys of ``satlaspretrain_models.Model``.

    Applies the package's ``adjust_state_dict_prefix``: backbone keys (those containing
    "backbone") lose leading ``backbone.`` occurrences until 0 (ResNet), 1 (single-image
    Swin) or 2 (multi-image Swin) remain and get the ``backbone.`` prefix; FPN keys
    (containing "fpn") lose every ``intermediates.0.`` and get the ``fpn.`` prefix. Other
    keys (heads of the pretraining tasks) are dropped.
    """
    backbone, _, multi = IDENTIFIERS[model_identifier]
    allowed = 0 if backbone.startswith("resnet") else (2 if multi else 1)
    out = {}
    for key, value in weights.items():
        if "backbone" in key:
            k = key
            while k.count("backbone.") > allowed:
                k = k.replace("backbone.", "", 1)
            out["backbone." + k] = value
        if "fpn" in key:
            out["fpn." + key.replace("intermediates.0.", "")] = value
    return out


@keras.saving.register_keras_serializable(package="rskeras")
class SatlasPretrain(FeatureExtractor):
    """SatlasPretrain remote-sensing backbone (Bastani et al. 2023), optional FPN + upsampling.

    Backbones: Swin-v2-B / Swin-v2-T (torchvision, patch conv for the identifier's
    channels; outputs of features 1, 3, 5, 7) or ResNet-50 / ResNet-152 (conv1 for the
    channels; outputs layer1..layer4). Multi-image (MI) Swin variants split the input
    channels into consecutive chunks of C (one image each), encode each chunk and take the
    element-wise max per scale over at most the first 8 images. Quirk reproduced from
    ``satlaspretrain_models``: the MI ResNet variants are **not** wrapped for multiple
    images (the package only wraps Swin backbones), so they take a single C-channel image.

    With ``fpn``: FPN(backbone channels -> 128) then the upsampling head on the finest FPN
    map, giving five 128-channel maps at 1/1, 1/4, 1/8, 1/16, 1/32. Without: the four
    backbone maps. The upsampling head is randomly initialised (SatlasPretrain ships no
    weights for it; rslearn's model has the same behaviour).

    Expected inputs (normalise with transforms; nothing is applied inside the model):

    * ``Sentinel2_*_RGB``: 8-bit true-colour R, G, B divided by 255, clipped to [0, 1].
    * ``Sentinel2_*_MS``: bands B04, B03, B02, B05, B06, B07, B08, B11, B12; the first
      three divided by 3000, the other six by 8160; all clipped to [0, 1].
    * ``Sentinel1_*`` (2 channels), ``Landsat_*`` (11 channels), ``Aerial_*`` (3
      channels): rslearn does not document their normalisation.
    * MI variants: the images of the series stacked along channels (k * C channels).

    Identifiers (backbone, channels per image): Sentinel2_SwinB_{SI,MI}_RGB (Swin-v2-B, 3),
    Sentinel2_SwinB_{SI,MI}_MS (9), Sentinel1_SwinB_{SI,MI} (2), Landsat_SwinB_{SI,MI}
    (11), Aerial_SwinB_{SI,MI} (3), Sentinel2_SwinT_{SI,MI}_{RGB,MS} (Swin-v2-T, 3 / 9),
    Sentinel2_Resnet50_{SI,MI}_{RGB,MS} and Sentinel2_Resnet152_{SI,MI}_{RGB,MS} (3 / 9).

    Torch keys (rslearn): ``model.backbone.backbone.features...`` (SI Swin),
    ``model.backbone.backbone.backbone.features...`` (MI Swin),
    ``model.backbone.resnet...`` (ResNet), ``model.fpn.fpn...``, ``model.upsample.layers...``.

    Args:
        model_identifier: str, one of the identifiers above.
        fpn: bool, add the FPN and upsampling head, default False.
        resize_to_pretrain: bool, bilinearly resize inputs to 512x512 first
            (align_corners False), default False.
        weights_path: str or None, local weights (see module docstring); None builds a
            randomly initialised model (with a warning: rslearn always loads weights).

    Call: context with ``"image"`` ``[B, 1, H, W, C']`` -> FeatureMaps (NHWC).
    """

    def __init__(self, model_identifier: str, fpn: bool = False, resize_to_pretrain: bool = False, weights_path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if model_identifier not in IDENTIFIERS:
            raise ValueError(f"SatlasPretrain: unknown model_identifier {model_identifier!r}; expected one of {sorted(IDENTIFIERS)}")
        self.model_identifier = model_identifier
        self.use_fpn = bool(fpn)
        self.resize_to_pretrain = bool(resize_to_pretrain)
        self.weights_path = weights_path
        backbone, channels, multi = IDENTIFIERS[model_identifier]
        self.backbone_kind = backbone
        self.image_channels = channels
        self.multi_image = multi and not backbone.startswith("resnet")
        self.backbone_channels = list(BACKBONE_CHANNELS[backbone])
        if backbone.startswith("resnet"):
            self.resnet = ResNet(backbone, in_channels=channels, name="resnet")
            self.swin = None
        else:
            arch = "swin_v2_b" if backbone == "swinb" else "swin_v2_t"
            self.swin = build_swin_transformer(arch, in_channels=channels, num_classes=1000, name="swin")
            self.swin.build()
            # Only the features are used: the classifier's final norm and head get no
            # gradient, so they are not trainable (no missing-gradient warnings).
            for layer in (self.swin.norm, self.swin.head):
                layer.trainable = False
            self.resnet = None
        if self.use_fpn:
            self.fpn = Fpn([c for _, c in self.backbone_channels], FPN_CHANNELS, name="fpn")
            self.upsample = SatlasUpsample([(f, FPN_CHANNELS) for f, _ in self.backbone_channels], name="upsample")
        else:
            self.fpn = None
            self.upsample = None
        self.built = True
        if weights_path:
            self.load_weights_file(weights_path)
        else:
            logger.warning(
                "SatlasPretrain(%s): no weights_path given, the model is randomly initialised (rskeras downloads "
                "nothing: pass the release's local .pth, or a conversion of it, as weights_path)",
                model_identifier,
            )

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        """The backbone's (factor, channels) table, even with ``fpn`` (as rslearn)."""
        return list(self.backbone_channels)

    def _encode(self, x, training=None) -> list[tf.Tensor]:
        if self.resnet is not None:
            return self.resnet.features(x, training=training)
        feats = self.swin.features(x, training=training)
        return [feats[i] for i in (1, 3, 5, 7)]

    def call(self, context, training=None):
        images = context["image"] if isinstance(context, dict) else context
        x = tf.cast(single_timestep(images, "SatlasPretrain"), self.compute_dtype)
        if self.resize_to_pretrain:
            x = resize_bilinear(x, (PRETRAIN_SIZE, PRETRAIN_SIZE))
        total = x.shape[-1]
        c = self.image_channels
        if total is None:
            raise ValueError("SatlasPretrain: the number of input channels must be static")
        if self.multi_image:
            if total % c != 0:
                raise ValueError(f"SatlasPretrain({self.model_identifier}): {total} input channels are not a multiple of {c}")
            n = min(total // c, MAX_IMAGES)
            b = tf.shape(x)[0]
            chunks = tf.concat([x[..., i * c : (i + 1) * c] for i in range(n)], axis=0)  # image-major
            maps = []
            for feat in self._encode(chunks, training=training):
                per_image = tf.reshape(feat, tf.concat([[n, b], tf.shape(feat)[1:]], axis=0))
                maps.append(tf.reduce_max(per_image, axis=0))
        else:
            if total != c:
                raise ValueError(f"SatlasPretrain({self.model_identifier}): expected {c} input channels, got {total}")
            maps = self._encode(x, training=training)
        if self.fpn is not None:
            maps = self.upsample(self.fpn(maps), training=training)
        return maps

    def model_params(self, prefix: str = "") -> list[TorchParam]:
        """torch_params keyed like ``satlaspretrain_models.Model`` (no ``model.``)."""
        if self.resnet is not None:
            out = self.resnet.torch_params(join(prefix, "backbone.resnet"))
        else:
            swin_prefix = "backbone.backbone.backbone" if self.multi_image else "backbone.backbone"
            out = self.swin.torch_params(join(prefix, swin_prefix))
        if self.fpn is not None:
            out += self.fpn.torch_params(join(prefix, "fpn"))
            out += self.upsample.torch_params(join(prefix, "upsample"))
        return out

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return self.model_params(join(prefix, "model"))

    def load_weights_file(self, path: str):
        """Loads SatlasPretrain weights from a local file (original .pth, converted, or rslearn-keyed)."""
        from rskeras.weights.files import read_state_dict

        state = read_state_dict(path)
        params = self.model_params("")
        if any(k.startswith("model.backbone.") for k in state):  # rslearn-keyed
            state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        elif not any(p.key in state for p in params):  # original SatlasPretrain checkpoint
            state = satlas_checkpoint_to_model_keys(state, self.model_identifier)
        if self.upsample is not None:
            # SatlasPretrain ships no upsampling-head weights; keep them random if absent
            have_upsample = any(k.startswith("upsample.") for k in state)
            if not have_upsample:
                params = [p for p in params if not p.key.startswith("upsample.")]
        report = load_torch_state_dict(self, state, params=params, strict=False)
        if report.missing:
            raise ValueError(f"SatlasPretrain: weights file {path} lacks {len(report.missing)} tensors: {', '.join(report.missing[:10])} ...")
        if report.unexpected:
            logger.info("SatlasPretrain: ignored %d tensors of %s not used by the model", len(report.unexpected), path)
        return report

    def get_config(self):
        return {
            **super().get_config(),
            "model_identifier": self.model_identifier,
            "fpn": self.use_fpn,
            "resize_to_pretrain": self.resize_to_pretrain,
            "weights_path": self.weights_path,
        }
