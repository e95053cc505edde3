"""UNetDecoder: U-Net style decoder over multi-scale feature maps."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from rskeras.models.component import IntermediateComponent, require_feature_maps
from rskeras.models.interpolate import resize_bilinear, resize_nearest, scaled_size
from rskeras.models.torch_nn import Conv2d, batch_norm
from rskeras.weights.torch_params import TorchParam, join, sequential_params


@keras.saving.register_keras_serializable(package="rskeras")
class UNetDecoder(IntermediateComponent):
    """Decodes multi-scale features to one map, upsampling from the coarsest level.

    Construction (f, c = factor and channels of the coarsest map); a *conv block* is
    Conv(kernel_size, "same", bias = not use_batch_norm) [-> BatchNorm] -> ReLU:

    1. the first stage starts with a conv block c -> c;
    2. while f > target_resolution_factor: nearest x2 upsample, f //= 2; if an input map
       of factor f exists (s channels) a new stage starts with a conv block
       (c + s) -> num_channels.get(f, s), else a conv block c -> num_channels.get(f, c)
       is appended; then conv_layers_per_resolution - 1 conv blocks c -> c;
    3. an output Conv(out_channels, kernel_size, "same", bias) without activation when
       out_channels is not None.

    Forward: stage 0 on the coarsest map, then each next stage on
    ``concat([previous output, skip map])`` (upsampled features first), then an optional
    bilinear resize (align_corners False) to ``original_size_to_interpolate``.

    rslearn: ``rslearn.models.unet.UNetDecoder``. Torch keys ``layers.<stage>.<index>.*``
    where index counts Conv2d, [BatchNorm2d], ReLU and Upsample modules of the stage.

    Args:
        in_channels: list of ``[downsample_factor, channels]`` per input map, finest first.
        out_channels: int or None, channels of the output conv (None: no output conv).
        conv_layers_per_resolution: int, conv blocks per resolution, default 1.
        kernel_size: int, default 3.
        num_channels: dict factor -> channels overriding the conv block widths
            (keys may be strings, as YAML/JSON gives them), default {}.
        target_resolution_factor: int, output at 1/factor of the input, default 1.
        original_size_to_interpolate: optional ``[h, w]`` of a final bilinear resize.
        use_batch_norm: bool, BatchNorm after each block conv (conv bias off), default False.

    Call: FeatureMaps matching ``in_channels`` -> FeatureMaps with one map
    ``[B, H / target_resolution_factor, W / ..., out_channels]``. Factors must be powers
    of two, each map exactly twice the size of the next coarser one.
    """

    def __init__(
        self,
        in_channels: list,
        out_channels: int | None,
        conv_layers_per_resolution: int = 1,
        kernel_size: int = 3,
        num_channels: dict | None = None,
        target_resolution_factor: int = 1,
        original_size_to_interpolate: list[int] | None = None,
        use_batch_norm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not in_channels:
            raise ValueError(f"UNetDecoder: in_channels must list at least one map, got {in_channels!r}")
        if conv_layers_per_resolution < 1:
            raise ValueError(f"UNetDecoder: conv_layers_per_resolution must be >= 1, got {conv_layers_per_resolution}")
        self.in_channels = [[int(f), int(c)] for f, c in in_channels]
        self.out_channels = None if out_channels is None else int(out_channels)
        self.conv_layers_per_resolution = int(conv_layers_per_resolution)
        self.kernel_size = int(kernel_size)
        self.num_channels = {int(k): int(v) for k, v in (num_channels or {}).items()}
        self.target_resolution_factor = int(target_resolution_factor)
        self.original_size_to_interpolate = (
            None if original_size_to_interpolate is None else [int(v) for v in original_size_to_interpolate]
        )
        self.use_batch_norm = bool(use_batch_norm)
        self.stages = self._build_stages()
        # Flat list so that Keras tracks every weighted layer of the stages.
        self.stage_layers = [layer for stage in self.stages for _, layer in stage if layer is not None]
        self.build(None)  # weights exist after construction (torch weights can be loaded)

    # Each stage is a list of (kind, layer) entries mirroring the torch Sequential:
    # kind in {"conv", "bn", "relu", "up"}; layer is None for relu/up.
    def _build_stages(self) -> list[list[tuple[str, Any]]]:
        stages: list[list[tuple[str, Any]]] = []
        current: list[tuple[str, Any]] = []
        counter = [0]

        def conv_block(cin: int, cout: int) -> list[tuple[str, Any]]:
            counter[0] += 1
            name = f"conv_{counter[0]}"
            block = [("conv", Conv2d(cin, cout, self.kernel_size, padding="same", use_bias=not self.use_batch_norm, name=name))]
            if self.use_batch_norm:
                block.append(("bn", batch_norm(name=f"bn_{counter[0]}")))
            block.append(("relu", None))
            return block

        factor, channels = self.in_channels[-1]
        by_factor = {f: c for f, c in self.in_channels}
        current.extend(conv_block(channels, channels))
        while factor > self.target_resolution_factor:
            current.append(("up", None))
            factor //= 2
            if factor in by_factor:
                stages.append(current)
                out = self.num_channels.get(factor, by_factor[factor])
                current = conv_block(channels + by_factor[factor], out)
                channels = out
            else:
                out = self.num_channels.get(factor, channels)
                current.extend(conv_block(channels, out))
                channels = out
            for _ in range(self.conv_layers_per_resolution - 1):
                current.extend(conv_block(channels, channels))
        if self.out_channels is not None:
            current.append(("conv", Conv2d(channels, self.out_channels, self.kernel_size, padding="same", name="output_conv")))
        stages.append(current)
        return stages

    def build(self, input_shape):
        for stage in self.stages:
            channels = None
            for kind, layer in stage:
                if kind == "conv":
                    channels = layer.out_channels
                elif kind == "bn":
                    layer.build((None, None, None, channels))

    def _run_stage(self, stage, x, training):
        for kind, layer in stage:
            if kind == "conv":
                x = layer(x)
            elif kind == "bn":
                x = layer(x, training=training)
            elif kind == "relu":
                x = tf.nn.relu(x)
            else:
                x = resize_nearest(x, scaled_size(x, 2))
        return x

    def call(self, intermediates, context=None, training=None):
        maps = list(reversed(require_feature_maps(intermediates, "UNetDecoder")))
        # As in rslearn, stages and maps are paired coarsest-first and extra maps (finer
        # than target_resolution_factor) are ignored.
        x = self._run_stage(self.stages[0], maps[0], training)
        for skip, stage in zip(maps[1:], self.stages[1:]):
            x = self._run_stage(stage, tf.concat([x, skip], axis=-1), training)
        if self.original_size_to_interpolate is not None:
            x = resize_bilinear(x, tuple(self.original_size_to_interpolate))
        return [x]

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for s, stage in enumerate(self.stages):
            weighted = [(i, layer) for i, (kind, layer) in enumerate(stage) if kind in ("conv", "bn")]
            out += sequential_params(weighted, join(prefix, f"layers.{s}"))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "conv_layers_per_resolution": self.conv_layers_per_resolution,
            "kernel_size": self.kernel_size,
            "num_channels": {str(k): v for k, v in self.num_channels.items()},
            "target_resolution_factor": self.target_resolution_factor,
            "original_size_to_interpolate": self.original_size_to_interpolate,
            "use_batch_norm": self.use_batch_norm,
        }
