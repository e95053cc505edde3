"""Keras layers with the semantics of the ``torch.nn`` building blocks that components share.

Porting a torch module is mostly a matter of matching four details that Keras' defaults
get wrong for our purpose:

* padding: torch pads symmetrically (``padding=1`` puts one row on top *and* bottom),
  whereas Keras ``"same"`` pads bottom/right first when the total is odd and, with
  stride 2, pads differently altogether. :class:`Conv2d` always pads explicitly.
* epsilons and momenta: ``LayerNorm`` eps 1e-5 (Keras 1e-3), ``BatchNorm2d`` eps 1e-5 and
  momentum 0.1 (Keras: 0.99 as the *keep* fraction, i.e. torch momentum 0.1 is Keras 0.9).
* default initialisation (kaiming-uniform with a=sqrt(5), bias U(+-1/sqrt(fan_in))),
  reproduced by :func:`torch_kernel_initializer` / :class:`TorchBiasInitializer`, so that
  a freshly built model trains like its torch counterpart. Every weight needs an
  initializer *instance of its own*: an unseeded Keras initializer draws its seed once, when
  it is created, and returns the same values at every call, so two weights sharing one
  instance start as copies (or reshaped prefixes) of each other, which can keep a model
  from learning. :func:`fresh_initializer` / :func:`normal_initializer` give new instances.
* weight names and layouts, handled by ``torch_params`` (``rskeras.weights.torch_params``).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from rskeras.weights.torch_params import TorchParam, conv_params

TORCH_NORM_EPS = 1e-5


# Conv2d runs as one matmul over its kernel taps when its (static) output map has at
# most this many pixels; larger maps keep the convolution kernel (Conv2d._conv_as_matmul).
MATMUL_CONV_MAX_PIXELS = 16


def torch_kernel_initializer() -> keras.initializers.Initializer:
    """torch's default Conv/Linear weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def kaiming_normal_fan_out() -> keras.initializers.Initializer:
    """A new ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: N(0, 2 / fan_out)
    with fan_out = out_channels * kernel area (torchvision's ResNet convs)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def normal_initializer(std: float) -> keras.initializers.Initializer:
    """A new N(0, std) initializer: torch's ``normal_(std=...)``, and its
    ``trunc_normal_(std=s)`` for small ``s`` (torch truncates at +-2 in absolute value,
    i.e. nowhere for s = 0.02; Keras' TruncatedNormal would cut at 2 std)."""
    return keras.initializers.RandomNormal(stddev=std)


def fresh_initializer(initializer: Any) -> Any:
    """``initializer`` as a new instance with its own seed if it is an unseeded Keras
    random initializer (see the module docstring); anything else unchanged (strings and
    None already give a new instance per weight; an explicitly seeded initializer is kept
    as the caller's choice)."""
    if isinstance(initializer, keras.initializers.Initializer):
        config = initializer.get_config()
        if "seed" in config and config["seed"] is None:
            return type(initializer).from_config(config)
    return initializer


@keras.saving.register_keras_serializable(package="rskeras")
class TorchBiasInitializer(keras.initializers.Initializer):
    """torch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
        fan_in: int, number of inputs of one output unit (in_channels * kernel area).
    """

    def __init__(self, fan_in: int):
        self.fan_in = int(fan_in)

    def __call__(self, shape, dtype=None):
        bound = 1.0 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.0
        return keras.random.uniform(shape, -bound, bound, dtype=dtype)

    def get_config(self):
        return {"fan_in": self.fan_in}


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def torch_same_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of torch's ``padding="same"`` for one axis (stride 1)."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


@keras.saving.register_keras_serializable(package="rskeras")
class Conv2d(keras.layers.Layer):
    """``torch.nn.Conv2d`` on NHWC tensors, with torch's padding rules.

    Args:
        in_channels: int, input channels (used for the torch-style initialisation and
            to validate the input).
        out_channels: int, output channels.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw), default 1.
        padding: int, (ph, pw), "same" (stride 1 only; torch splits an odd total
            padding as before = total // 2) or "valid"; default 0. Padding is symmetric
            zero padding applied explicitly, never Keras' asymmetric "same".
        use_bias: bool, default True.
        kernel_initializer: Keras initializer or None (torch default init).
        bias_initializer: Keras initializer or None (torch default init).

    Call: ``[B, H, W, in_channels]`` -> ``[B, H', W', out_channels]`` with
    ``H' = floor((H + 2 ph - kh) / sh) + 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        use_bias: bool = True,
        kernel_initializer: Any = None,
        bias_initializer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"Conv2d padding='same' requires stride 1 (as in torch), got stride {stride!r}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.use_bias = bool(use_bias)
        if self.padding == "same":
            self._pads = [torch_same_padding(k) for k in self.kernel_size]
        elif self.padding == "valid":
            self._pads = [(0, 0), (0, 0)]
        else:
            self._pads = [(p, p) for p in self.padding]
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        # Stride 1 with (k - 1) / 2 on each side of an odd kernel is TensorFlow's "same":
        # the convolution pads internally, so neither pass materializes a padded copy of
        # the input (autodiff kept it for the kernel's gradient, and sliced the input's
        # gradient out of a padded one).
        self._native_same = (
            self.stride == (1, 1)
            and any(p != (0, 0) for p in self._pads)
            and all(k % 2 == 1 and p == ((k - 1) // 2, (k - 1) // 2) for k, p in zip(self.kernel_size, self._pads))
        )
        self.conv = keras.layers.Conv2D(
            self.out_channels,
            self.kernel_size,
            strides=self.stride,
            padding="same" if self._native_same else "valid",
            use_bias=self.use_bias,
            kernel_initializer=fresh_initializer(kernel_initializer) or torch_kernel_initializer(),
            bias_initializer=fresh_initializer(bias_initializer) or TorchBiasInitializer(fan_in),
            name="conv",
        )
        self.build((None, None, None, self.in_channels))

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels, got input shape {tuple(input_shape)}")
        self.conv.build(tuple(input_shape[:-1]) + (self.in_channels,))

    def call(self, x):
        out_hw = self._static_output_size(x.shape)
        if out_hw is not None and out_hw[0] * out_hw[1] <= MATMUL_CONV_MAX_PIXELS:
            return self._conv_as_matmul(self._pad(x), out_hw)
        return self.conv(x if self._native_same else self._pad(x))

    def _pad(self, x):
        """``x`` with torch's symmetric zero padding (``x`` itself when there is none)."""
        if all(p == (0, 0) for p in self._pads):
            return x
        return tf.pad(x, [[0, 0], list(self._pads[0]), list(self._pads[1]), [0, 0]])

    def _static_output_size(self, input_shape) -> tuple[int, int] | None:
        """Output (H', W') when the input's size is static and the stride is 1."""
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None or self.stride != (1, 1):
            return None
        h, w = h + sum(self._pads[0]), w + sum(self._pads[1])
        return h - self.kernel_size[0] + 1, w - self.kernel_size[1] + 1

    def _conv_as_matmul(self, x, out_hw: tuple[int, int]):
        """The same convolution as one matrix product over the kernel taps (im2col).

        On maps of at most MATMUL_CONV_MAX_PIXELS pixels (a 3x3 conv on the 2x2 or 4x4
        map of a 1/32 or 1/16 level of a 64x64 tile, with 384-1152 channels) the
        oneDNN convolution and its two gradients are bound by its weight layout, not by
        arithmetic: one (B*H'*W', kh*kw*Cin) x (kh*kw*Cin, Cout) product and its
        gradients cost a quarter to a half of it (docs/benchmarks.md). The taps are
        unit-stride slices, so their gradient is a pad, and the column order (tap row,
        tap column, input channel) is the kernel's own [kh, kw, Cin, Cout] layout.
        Identical up to float32 summation order.
        """
        ho, wo = out_hw
        kh, kw = self.kernel_size
        if kh == 1 and kw == 1:
            cols = x
        else:
            cols = tf.concat([tf.slice(x, [0, dy, dx, 0], [-1, ho, wo, -1]) for dy in range(kh) for dx in range(kw)], axis=-1)
        kernel = tf.cast(self.conv.kernel, x.dtype)
        y = tf.matmul(tf.reshape(cols, [-1, kh * kw * self.in_channels]), tf.reshape(kernel, [-1, self.out_channels]))
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.conv.bias, x.dtype))
        return tf.reshape(y, [-1, ho, wo, self.out_channels])

    @property
    def kernel(self):
        return self.conv.kernel

    @property
    def bias(self):
        return self.conv.bias

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return conv_params(self.conv, prefix)

    def get_config(self):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": padding,
            "use_bias": self.use_bias,
        }


def linear(in_features: int, out_features: int, use_bias: bool = True, kernel_initializer: Any = None, name: str | None = None) -> keras.layers.Dense:
    """``torch.nn.Linear`` as a Keras Dense with torch's default initialisation."""
    return keras.layers.Dense(
        out_features,
        use_bias=use_bias,
        kernel_initializer=fresh_initializer(kernel_initializer) or torch_kernel_initializer(),
        bias_initializer=TorchBiasInitializer(in_features),
        name=name,
    )


def layer_norm(name: str | None = None) -> keras.layers.LayerNormalization:
    """``torch.nn.LayerNorm`` over the last axis (eps 1e-5)."""
    return keras.layers.LayerNormalization(axis=-1, epsilon=TORCH_NORM_EPS, name=name)


def batch_norm(name: str | None = None) -> keras.layers.BatchNormalization:
    """``torch.nn.BatchNorm2d`` (eps 1e-5, torch momentum 0.1) on channels-last tensors.

    Note: in training torch updates ``running_var`` with the unbiased batch variance,
    Keras with the biased one; inference (running statistics) is identical.
    """
    return keras.layers.BatchNormalization(axis=-1, epsilon=TORCH_NORM_EPS, momentum=0.9, name=name)
