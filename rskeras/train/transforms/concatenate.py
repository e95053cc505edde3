"""Concatenate: gather several images (optionally a band subset of each) into one."""

from __future__ import annotations

import enum

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, read_selector, write_selector


class ConcatenateDim(enum.Enum):
    """rslearn's dimension names: CHANNEL (0) or TIME (1) of a C×T×H×W RasterImage."""

    CHANNEL = 0
    TIME = 1


class Concatenate(Transform):
    """Concatenates images along time (default) or channels.

    With rslearn's C×T×H×W layout the default ``concatenate_dim`` 1 stacks along time;
    rskeras images are ``[T, H, W, C]``, so dim 1 (TIME) concatenates axis 0 and dim 0
    (CHANNEL) concatenates the last axis. A single selection copies/renames an image
    (``{sentinel2: []}`` -> ``image``).

    Args:
        selections: selector -> channel indexes to keep from that image ([] = all).
        output_selector: where to write the result.
        concatenate_dim: 1 / "TIME" (default, rslearn's default) or 0 / "CHANNEL".

    Call-time: images ``[T_i, H, W, C_i]``; output ``[sum T_i, H, W, C]`` (time) or
    ``[T, H, W, sum C_i]`` (channels).
    """

    def __init__(self, selections: dict[str, list[int]], output_selector: str, concatenate_dim: int | str | ConcatenateDim = ConcatenateDim.TIME):
        super().__init__()
        if not selections:
            raise ValueError("Concatenate: selections must name at least one image")
        if isinstance(concatenate_dim, ConcatenateDim):
            concatenate_dim = concatenate_dim.value
        elif isinstance(concatenate_dim, str):
            if concatenate_dim.upper() not in ConcatenateDim.__members__:
                raise ValueError(f"Concatenate: concatenate_dim must be 0/CHANNEL or 1/TIME, got {concatenate_dim!r}")
            concatenate_dim = ConcatenateDim[concatenate_dim.upper()].value
        if concatenate_dim not in (0, 1):
            raise ValueError(f"Concatenate: concatenate_dim must be 0 (channel) or 1 (time), got {concatenate_dim!r}")
        self.selections = {k: list(v or []) for k, v in selections.items()}
        self.output_selector = output_selector
        self.concatenate_dim = concatenate_dim

    def forward(self, input_dict, target_dict):
        tensors = []
        for selector, bands in self.selections.items():
            image = read_selector(input_dict, target_dict, selector)
            tensors.append(tf.gather(image, bands, axis=-1) if bands else image)
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) > 1:
            tensors = [tf.cast(t, tf.float32) for t in tensors]
        axis = 0 if self.concatenate_dim == 1 else -1
        out = tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=axis)
        write_selector(input_dict, target_dict, self.output_selector, out)
        return input_dict, target_dict
