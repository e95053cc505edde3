"""OlmoEarthNormalize: scales each band with OlmoEarth's pretraining statistics.

For every band of a modality's statistics, ``x -> (x - lo) / (hi - lo)`` with
``lo, hi = mean -/+ std_multiplier * std`` (every timestep alike), as rslearn's
``rslearn.models.olmoearth_pretrain.norm.OlmoEarthNormalize``. The statistics are
olmoearth_pretrain's ``computed.json`` (``norm_stats.json`` beside this module).
Sentinel-1 values must already be in decibels.

It is a transform (``(input_dict, target_dict) -> (input_dict, target_dict)``, the protocol
of ``rskeras.train.transforms``) that lives with the model, as in rslearn, and is also
used by ``OlmoEarth(normalize=True)``; it addresses top-level input keys only.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

_STATS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "norm_stats.json")


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def load_computed_config() -> dict[str, dict[str, dict[str, float]]]:
    """modality -> band -> {"mean", "std"} (olmoearth_pretrain ``load_computed_config``)."""
    return _load(_STATS_FILE)


class OlmoEarthNormalize:
    """Normalizes OlmoEarth modalities with the pretraining statistics.

    Args:
        band_names: modality (input key) -> its band names in channel order; every band
            of the modality's statistics must be listed, and nothing else (rslearn fails
            on a band it cannot normalize).
        std_multiplier: half-width of the range in standard deviations (default 2, as
            in OlmoEarth's pretraining).
        config_fname: a JSON file with the same layout to use instead (deprecated in
            rslearn, still accepted).
        skip_missing: skip modalities absent from the input dict.

    Call-time: each ``[T, H, W, C]`` (or batched ``[B, T, H, W, C]``) modality ->
    float32, same shape. Integer inputs become float32 (rslearn writes the result back into
    the integer tensor, truncating it).
    """

    # The per-example code is channel-wise: exported models run it on batches.
    applies_to_batches = True

    def __init__(
        self,
        band_names: dict[str, list[str]],
        std_multiplier: float | None = 2,
        config_fname: str | None = None,
        skip_missing: bool = False,
    ):
        self.skip_missing = bool(skip_missing)
        if std_multiplier is None:
            raise ValueError("OlmoEarthNormalize: std_multiplier must be a number")
        if config_fname is None:
            stats = load_computed_config()
        else:
            logger.warning("Loading normalization config from %s. This argument is deprecated in rslearn.", config_fname)
            if not os.path.isfile(config_fname):
                raise ValueError(f"OlmoEarthNormalize: config_fname {config_fname} does not exist")
            stats = _load(os.path.abspath(config_fname))
        self.band_names = {k: list(v) for k, v in band_names.items()}
        self.std_multiplier = float(std_multiplier)
        self.scales: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for modality, bands in self.band_names.items():
            if modality not in stats:
                raise ValueError(f"OlmoEarthNormalize: no normalization statistics for modality {modality!r} (known: {sorted(stats)})")
            known = stats[modality]
            missing = [b for b in known if b not in bands]
            extra = [b for b in bands if b not in known]
            if missing or extra or len(set(bands)) != len(bands):
                raise ValueError(
                    f"OlmoEarthNormalize: band_names[{modality!r}] must list each band of its statistics once "
                    f"({list(known)}); missing {missing}, unknown {extra}"
                )
            lo = np.asarray([known[b]["mean"] - self.std_multiplier * known[b]["std"] for b in bands], np.float64)
            hi = np.asarray([known[b]["mean"] + self.std_multiplier * known[b]["std"] for b in bands], np.float64)
            self.scales[modality] = (lo.astype(np.float32), (hi - lo).astype(np.float32))

    def normalize(self, image: tf.Tensor, modality: str) -> tf.Tensor:
        lo, width = self.scales[modality]
        channels = image.shape[-1]
        if channels is not None and channels != len(lo):
            raise ValueError(
                f"OlmoEarthNormalize: {modality} has {channels} channels but band_names lists {len(lo)} bands"
            )
        return (tf.cast(image, tf.float32) - tf.constant(lo)) / tf.constant(width)

    def __call__(self, input_dict, target_dict):
        return self.forward(input_dict, target_dict)

    def forward(self, input_dict, target_dict):
        for modality in self.band_names:
            if self.skip_missing and modality not in input_dict:
                continue
            if modality not in input_dict:
                raise KeyError(f"OlmoEarthNormalize: input {modality!r} not found (inputs: {sorted(input_dict)})")
            input_dict[modality] = self.normalize(input_dict[modality], modality)
        return input_dict, target_dict
