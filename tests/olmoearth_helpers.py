"""Reading the OlmoEarth golden fixtures (rslearn's per-example C×T×H×W inputs) into
rskeras batches, and building the wrapper they were made with."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import tensorflow as tf

from rskeras.models.olmoearth_pretrain.model import OlmoEarth

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MODALITIES = ["sentinel2_l2a", "sentinel1", "landsat"]


def load(name: str):
    z = np.load(os.path.join(FIXTURES, name))
    return z, json.loads(str(z["config"][0]))


def posix(day: str) -> float:
    return datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.timezone.utc).timestamp()


def batch_inputs(z, config) -> dict[str, tf.Tensor]:
    """The model-input dict of the fixture's examples: ``[B, T, H, W, C]`` rasters padded
    to the batch's T, with ``<key>_timestep_mask`` and ``<key>_timestamps`` as the data
    pipeline produces them (docs/design.md)."""
    examples = sorted({k.split("/")[1] for k in z.files if k.startswith("in/b")}, key=lambda s: int(s[1:]))
    size = next(z[k].shape[2:] for k in z.files if k.startswith("in/b"))
    out = {}
    for m in MODALITIES:
        if not any(f"in/{b}/{m}" in z.files for b in examples):
            continue
        images = [z[f"in/{b}/{m}"].transpose(1, 2, 3, 0) if f"in/{b}/{m}" in z.files else None for b in examples]
        channels = next(a.shape[-1] for a in images if a is not None)
        t_max = max(a.shape[0] for a in images if a is not None)
        x = np.zeros((len(examples), t_max) + tuple(size) + (channels,), np.float32)
        mask = np.zeros((len(examples), t_max), bool)
        stamps = np.full((len(examples), t_max, 2), np.nan)
        for i, (b, a) in enumerate(zip(examples, images)):
            if a is None:
                continue
            x[i, : a.shape[0]] = a
            mask[i, : a.shape[0]] = True
            for t, day in enumerate((config.get("input_timestamps") or {}).get(b, {}).get(m, [])):
                stamps[i, t] = [posix(day), posix(day) + 86400]
        out[m] = tf.constant(x)
        out[m + "_timestep_mask"] = tf.constant(mask)
        out[m + "_timestamps"] = tf.constant(stamps)
    return out


def wrapper_kwargs(config, **overrides) -> dict:
    kwargs = dict(config["wrapper_kwargs"])
    if "timestamp_error_tolerance_days" in kwargs:
        kwargs["timestamp_error_tolerance"] = {"days": kwargs.pop("timestamp_error_tolerance_days")}
    elif isinstance(kwargs.get("timestamp_error_tolerance"), (int, float)):
        kwargs["timestamp_error_tolerance"] = {"days": kwargs["timestamp_error_tolerance"]}
    kwargs.update(overrides)
    return kwargs


def encoder_state(z) -> dict[str, np.ndarray]:
    return {k[len("w/model.") :]: z[k] for k in z.files if k.startswith("w/model.")}


def write_config(directory: str, config) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config["bundle_config_json"], f)
    return directory


def model_for(z, config, tmp_path, **overrides) -> OlmoEarth:
    """The fixture's wrapper (random init from its bundle config, then its weights)."""
    model = OlmoEarth(model_path=write_config(str(tmp_path), config), random_initialization=True, **wrapper_kwargs(config, **overrides))
    model.load_encoder_weights(encoder_state(z))
    return model


def to_torch_layout(maps: tf.Tensor) -> np.ndarray:
    """``[B, H, W, C]`` -> B×C×H×W, ``[B, H, W, N, C]`` -> B×C×H×W×N."""
    a = np.asarray(maps)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a.transpose(0, 4, 1, 2, 3)
