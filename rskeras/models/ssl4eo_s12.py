"""SSL4EO-S12 pretrained backbones (rslearn ``rslearn.models.ssl4eo_s12.Ssl4eoS12``)."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from rskeras.models.component import FeatureExtractor, single_timestep
from rskeras.models.resnet import ResNet
from rskeras.weights.torch_params import TorchParam, join, load_torch_state_dict

logger = logging.getLogger(__name__)

ARCH_CHANNELS = {"resnet50": [(4, 256), (8, 512), (16, 1024), (32, 2048)]}
IN_CHANNELS = 13
CHECKPOINT_PREFIX = "module.backbone."
DOWNLOAD_URL = "https://github.com/zhu-xlab/SSL4EO-S12"


def backbone_state_dict(path: str) -> dict:
    """The torchvision-keyed ResNet weights of an SSL4EO-S12 file.

    Accepts the DINO checkpoint rslearn reads (``["teacher"]``, keys
    ``module.backbone.<torchvision key>``), a state dict with those keys or with plain
    torchvision keys, or an rslearn-keyed one (``model.<torchvision key>``), in any format
    of :func:`rskeras.weights.files.read_state_dict`.
    """
    from rskeras.weights.errors import CheckpointError
    from rskeras.weights.files import as_state_dict, read_state_dict
    from rskeras.weights.torch_pickle import load_torch_file

    lower = str(path).lower()
    if lower.endswith((".npz", ".safetensors")):
        state = read_state_dict(path)
    else:
        try:
            # the pure reader first: it also reads the argparse.Namespace that DINO
            # checkpoints carry, which torch.load(weights_only=True) refuses
            try:
                obj = load_torch_file(path, use_torch=False)
            except CheckpointError:
                obj = load_torch_file(path)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}. SSL4EO-S12 checkpoints may hold training objects next to the weights: extract them once "
                f"with torch (tools/convert_weights.py {path} ssl4eo_rn50.npz --selector teacher --remap "
                f"{CHECKPOINT_PREFIX} '') and pass the .npz as backbone_ckpt_path"
            ) from None
        if isinstance(obj, dict) and "teacher" in obj:
            obj = obj["teacher"]
        state = as_state_dict(obj, path)
    for prefix in (CHECKPOINT_PREFIX, "model."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _short(report, limit: int = 8) -> str:
    parts = [f"loaded {len(report.loaded)} tensors"]
    for name, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            more = f" ... (+{len(keys) - limit})" if len(keys) > limit else ""
            parts.append(f"{name} {len(keys)}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


@keras.saving.register_keras_serializable(package="rskeras")
class Ssl4eoS12(FeatureExtractor):
    """SSL4EO-S12 (Wang et al. 2023) ResNet-50 on the 13 Sentinel-2 L1C bands.

    A torchvision ResNet-50 whose ``conv1`` takes 13 channels (7×7, stride 2, no bias);
    the 1000-class ``fc`` exists (it is in rslearn's module and its state dict) but is
    not used. Inputs are used as given (no normalisation inside).

    Torch keys: ``model.<torchvision key>`` (``model.conv1.weight``, ``model.layer1.0...``).

    Args:
        backbone_ckpt_path: local checkpoint from https://github.com/zhu-xlab/SSL4EO-S12
            (see :func:`backbone_state_dict` for the formats), or None for random weights.
            As in rslearn, missing / unexpected tensors only give a warning (the DINO
            teacher has no ``fc``); a shape mismatch is an error.
        arch: "resnet50" (the only architecture).
        output_layers: indexes into [layer1, layer2, layer3, layer4], default all four.

    Call: context with ``"image"`` ``[B, 1, H, W, 13]`` -> FeatureMaps at 1/4, 1/8, 1/16, 1/32
    (256, 512, 1024, 2048 channels) for the selected layers.
    """

    def __init__(self, backbone_ckpt_path: str | None, arch: str = "resnet50", output_layers: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if arch not in ARCH_CHANNELS:
            raise ValueError(f"unknown SSL4EO-S12 architecture {arch}")
        output_layers = [0, 1, 2, 3] if output_layers is None else [int(i) for i in output_layers]
        if not output_layers or any(not 0 <= i < 4 for i in output_layers):
            raise ValueError(f"Ssl4eoS12: output_layers must be non-empty indexes in 0..3, got {output_layers}")
        self.backbone_ckpt_path = backbone_ckpt_path
        self.arch = arch
        self.output_layers = output_layers
        self.model = ResNet(arch, in_channels=IN_CHANNELS, num_classes=1000, name="model")
        self.built = True
        if backbone_ckpt_path is not None:
            self.load_backbone(backbone_ckpt_path)

    def load_backbone(self, path: str):
        state = backbone_state_dict(path)
        report = load_torch_state_dict(self.model, state, strict=False)
        if report.missing or report.unexpected:
            logger.warning("Ssl4eoS12: %s: %s", path, _short(report))
        return report

    def get_backbone_channels(self) -> list[tuple[int, int]]:
        return [ARCH_CHANNELS[self.arch][i] for i in self.output_layers]

    def call(self, context, training=None):
        images = context["image"] if isinstance(context, dict) else context
        x = tf.cast(single_timestep(images, "Ssl4eoS12"), self.compute_dtype)
        if x.shape[-1] is not None and x.shape[-1] != IN_CHANNELS:
            raise ValueError(
                f"Ssl4eoS12: input 'image' must have {IN_CHANNELS} input channels (the 13 Sentinel-2 L1C bands "
                f"B01..B12 with B8A and B10), got {x.shape[-1]}"
            )
        feats = self.model.features(x, training=training)
        return [feats[i] for i in self.output_layers]

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return self.model.torch_params(join(prefix, "model"))

    def get_config(self):
        return {
            **super().get_config(),
            "backbone_ckpt_path": self.backbone_ckpt_path,
            "arch": self.arch,
            "output_layers": self.output_layers,
        }
