"""OlmoEarth model bundles on local disk: finding, reading and writing them.

A bundle is a directory with ``config.json`` (olmoearth_pretrain's pretraining config)
and the weights of the whole pretraining model: ``weights.pth`` as released (a torch zip,
read without torch by ``rskeras.weights``), or a converted ``weights.safetensors``
/ ``weights.npz`` (``tools/convert_weights.py``). Nothing is ever downloaded: a
``model_id`` resolves to a bundle in ``$OLMOEARTH_BUNDLE_DIR/<id>/`` or in the Hugging
Face cache (``huggingface-cli download`` puts it there), else the error says where to
get it.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np

from rskeras.weights.errors import CheckpointError
from rskeras.weights.files import read_state_dict, write_state_dict
from rskeras.weights.torch_pickle import write_torch_zip
from rskeras.models.olmoearth_pretrain.config import EncoderConfig, ModelID, bundle_config

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAMES = ("weights.pth", "weights.safetensors", "weights.npz")
BUNDLE_DIR_ENV = "OLMOEARTH_BUNDLE_DIR"


class BundleError(ValueError):
    """A bundle is missing or unreadable; the message says which file and what to do."""


def download_hint(model_id: ModelID) -> str:
    """How to get a released bundle and pass it to OlmoEarth."""
    return (
        f"download config.json and weights.pth from {model_id.url()} (e.g. "
        f"`huggingface-cli download {model_id.repo_id()} --local-dir {model_id.value}`, or "
        f"{model_id.url()}/resolve/main/weights.pth and .../config.json) and pass "
        f"`model_path: {model_id.value}` instead of model_id (or put the directory at "
        f"${BUNDLE_DIR_ENV}/{model_id.value}/); `python tools/convert_weights.py {model_id.value}/weights.pth "
        f"{model_id.value}/weights.safetensors --ignore decoder. --ignore target_encoder.` makes a smaller, "
        "faster-loading copy of the encoder weights"
    )


def _hf_cache_dirs() -> list[str]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        dirs.append(os.path.join(os.environ["HF_HOME"], "hub"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"))
    return dirs


def find_model_id_bundle(model_id: ModelID) -> str | None:
    """A local bundle directory of ``model_id`` (with config.json), or None."""
    base = os.environ.get(BUNDLE_DIR_ENV)
    if base:
        candidate = os.path.join(base, model_id.value)
        if os.path.isfile(os.path.join(candidate, CONFIG_FILENAME)):
            return candidate
    for cache in _hf_cache_dirs():
        repo = os.path.join(cache, f"models--allenai--{model_id.value}")
        snapshots = []
        ref = os.path.join(repo, "refs", "main")
        if os.path.isfile(ref):
            with open(ref) as f:
                snapshots.append(os.path.join(repo, "snapshots", f.read().strip()))
        snapshots += sorted(glob.glob(os.path.join(repo, "snapshots", "*")))
        for snap in snapshots:
            if os.path.isfile(os.path.join(snap, CONFIG_FILENAME)):
                return snap
    return None


def read_config(directory: str) -> dict[str, Any]:
    """The bundle's ``config.json`` as a dict."""
    if "://" in str(directory):
        raise BundleError(f"{directory}: only local bundle directories are supported (no downloads at run time)")
    path = os.path.join(directory, CONFIG_FILENAME)
    if not os.path.isfile(path):
        raise BundleError(f"{path}: not found (an OlmoEarth bundle directory holds config.json and weights.pth)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON: {e}") from None


def weights_file(directory: str) -> str:
    """The bundle's weights file (weights.pth, or a converted .safetensors / .npz)."""
    for name in WEIGHTS_FILENAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise BundleError(f"{directory}: no weights file ({' / '.join(WEIGHTS_FILENAMES)}); set random_initialization: true to build the architecture only")


def read_encoder_weights(path: str, selector: list[str]) -> dict[str, np.ndarray]:
    """The state dict of the selected module (keys relative to it), from a bundle's
    weights file (keys ``encoder.*`` / ``target_encoder.*`` of the pretraining model)."""
    try:
        state = read_state_dict(path)
    except CheckpointError as e:
        raise BundleError(str(e)) from None
    prefix = ".".join(str(s) for s in selector) + "."
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        sample = sorted(state)[:5]
        raise BundleError(f"{path}: no weights under {prefix!r} (keys start with e.g. {sample})")
    return out


def write_bundle(directory: str, encoder: EncoderConfig, encoder_state: dict[str, np.ndarray], fmt: str = "pth") -> str:
    """Writes a bundle (config.json + weights) holding ``encoder_state`` under
    ``encoder.``; ``fmt`` "pth" (torch zip, written without torch), "safetensors" or "npz"."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILENAME), "w") as f:
        json.dump(bundle_config(encoder), f, indent=1)
    state = {f"encoder.{k}": v for k, v in encoder_state.items()}
    path = os.path.join(directory, f"weights.{fmt}")
    if fmt == "pth":
        write_torch_zip(state, path)
    elif fmt in ("safetensors", "npz"):
        write_state_dict(state, path)
    else:
        raise ValueError(f"bundle weights format must be pth, safetensors or npz, got {fmt!r}")
    return path
