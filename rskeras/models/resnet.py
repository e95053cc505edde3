"""torchvision ResNet (v1.5: stride in the 3x3 conv of the bottleneck) on NHWC tensors.

Used as the SatlasPretrain ResNet-50/152 backbone. Torch keys follow torchvision:
``conv1``, ``bn1``, ``layer<k>.<i>.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``,
``fc``. All paddings are explicit and symmetric as in torch. Fresh weights as torchvision's
constructor draws them: convs kaiming-normal (fan_out, ReLU), BatchNorm ones/zeros, ``fc``
torch's Linear default.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rskeras.models.torch_nn import Conv2d, batch_norm, kaiming_normal_fan_out, linear
from rskeras.weights.torch_params import TorchParam, batch_norm_params, dense_params, join

# arch -> (block type, blocks per stage); torchvision's table.
ARCHS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}


class _Block(keras.layers.Layer):
    """A BasicBlock or Bottleneck residual block.

    Call: ``[B, H, W, in_channels]`` -> ``[B, H / stride, W / stride, width * expansion]``.
    """

    def __init__(self, kind: str, in_channels: int, width: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        out = width * _EXPANSION[kind]
        if kind == "bottleneck":
            self.convs = [
                Conv2d(in_channels, width, 1, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv1"),
                Conv2d(width, width, 3, stride=stride, padding=1, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv2"),
                Conv2d(width, out, 1, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv3"),
            ]
        else:
            self.convs = [
                Conv2d(in_channels, width, 3, stride=stride, padding=1, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv1"),
                Conv2d(width, width, 3, padding=1, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv2"),
            ]
        self.bns = [batch_norm(name=f"bn{i + 1}") for i in range(len(self.convs))]
        for conv, bn in zip(self.convs, self.bns):
            bn.build((None, None, None, conv.out_channels))
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = Conv2d(in_channels, out, 1, stride=stride, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="downsample_0")
            self.downsample_bn = batch_norm(name="downsample_1")
            self.downsample_bn.build((None, None, None, out))
        self.built = True

    def call(self, x, training=None):
        identity = x
        y = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv(y), training=training)
            if i < len(self.convs) - 1:
                y = tf.nn.relu(y)
        if self.downsample is not None:
            identity = self.downsample_bn(self.downsample(x), training=training)
        return tf.nn.relu(y + identity)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        out: list[TorchParam] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            out += conv.torch_params(join(prefix, f"conv{i + 1}")) + batch_norm_params(bn, join(prefix, f"bn{i + 1}"))
        if self.downsample is not None:
            out += self.downsample.torch_params(join(prefix, "downsample.0"))
            out += batch_norm_params(self.downsample_bn, join(prefix, "downsample.1"))
        return out


@keras.saving.register_keras_serializable(package="rskeras")
class ResNet(keras.layers.Layer):
    """torchvision ResNet with a configurable number of input channels.

    Args:
        arch: str, one of "resnet18", "resnet34", "resnet50", "resnet101", "resnet152".
        in_channels: int, channels of ``conv1`` (7x7, stride 2, padding 3, no bias), default 3.
        num_classes: int, outputs of ``fc``, default 1000.

    ``features(x)``: ``[B, H, W, in_channels]`` -> ``[layer1, layer2, layer3, layer4]`` at
    1/4, 1/8, 1/16, 1/32 (256, 512, 1024, 2048 channels for bottleneck archs);
    ``call(x)`` returns the ``[B, num_classes]`` logits (average pool + fc).
    """

    def __init__(self, arch: str = "resnet50", in_channels: int = 3, num_classes: int = 1000, **kwargs):
        super().__init__(**kwargs)
        if arch not in ARCHS:
            raise ValueError(f"ResNet: unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        self.arch = arch
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        kind, counts = ARCHS[arch]
        self.conv1 = Conv2d(self.in_channels, 64, 7, stride=2, padding=3, use_bias=False, kernel_initializer=kaiming_normal_fan_out(), name="conv1")
        self.bn1 = batch_norm(name="bn1")
        self.bn1.build((None, None, None, 64))
        self.layers_ = []
        self.blocks = []
        channels = 64
        for stage, (count, width) in enumerate(zip(counts, [64, 128, 256, 512])):
            blocks = []
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_Block(kind, channels, width, stride, name=f"layer{stage + 1}_{i}"))
                channels = width * _EXPANSION[kind]
            self.layers_.append(blocks)
            self.blocks.extend(blocks)
        self.out_channels = [width * _EXPANSION[kind] for width in [64, 128, 256, 512]]
        self.fc = linear(channels, self.num_classes, name="fc")
        self.fc.build((None, channels))
        self.built = True

    def features(self, x, training=None) -> list[tf.Tensor]:
        x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        # 3x3/2 max pool with padding 1; zero padding equals torch's -inf padding here
        # because the input is post-ReLU (>= 0) and every window holds a real pixel.
        x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
        outputs = []
        for blocks in self.layers_:
            for block in blocks:
                x = block(x, training=training)
            outputs.append(x)
        return outputs

    def call(self, x, training=None):
        return self.fc(tf.reduce_mean(self.features(x, training=training)[-1], axis=[1, 2]))

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out = self.conv1.torch_params(join(prefix, "conv1")) + batch_norm_params(self.bn1, join(prefix, "bn1"))
        for stage, blocks in enumerate(self.layers_):
            for i, block in enumerate(blocks):
                out += block.torch_params(join(prefix, f"layer{stage + 1}.{i}"))
        return out + dense_params(self.fc, join(prefix, "fc"))

    def get_config(self):
        return {**super().get_config(), "arch": self.arch, "in_channels": self.in_channels, "num_classes": self.num_classes}
