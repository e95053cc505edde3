"""Loading torch-format weights into a model.

* :func:`load_torch_weights`: the weights of a whole model, strictly, from an rslearn
  Lightning ``.ckpt`` (keys ``model.*``) or a plain state dict of the model
  (``.pth``/``.pt``/``.npz``/``.safetensors``); ``train.py --ckpt_path`` with a torch file.
* :func:`restore_from_config`: rslearn's ``restore_config`` at the start of a fresh fit
  (:func:`restore_into` with the config's key rules, non-strict).
* :func:`load_lightning_checkpoint`, :func:`restore_into`, :func:`load_state_dict_nonstrict`:
  the pieces, for scripts.

Keys are relative to the model (``encoder.0.model.features.0.0.weight``), as rslearn loads
into the wrapped model rather than the Lightning module.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rskeras.weights.errors import WeightLoadError
from rskeras.weights.files import read_state_dict, read_with_key_rules
from rskeras.weights.torch_params import LoadReport, load_torch_state_dict

logger = logging.getLogger(__name__)


def load_state_dict_nonstrict(model: Any, state_dict: Mapping[str, np.ndarray], prefix: str = "") -> LoadReport:
    """Loads what fits, logs missing / unexpected keys by name; shape mismatches raise."""
    report = load_torch_state_dict(model, dict(state_dict), prefix=prefix, strict=False)
    if report.missing or report.unexpected:
        logger.warning("restore yielded missing_keys=%s and unexpected_keys=%s", report.missing, report.unexpected)
    return report


def restore_into(
    model: Any,
    path: str,
    selector: Sequence[str] | None = None,
    ignore_prefixes: Iterable[str] | None = None,
    remap_prefixes: Iterable[Sequence[str]] | None = None,
    use_torch: bool | None = None,
) -> LoadReport:
    """rslearn ``restore_config``: read ``path``, apply the key rules, load non-strictly."""
    state = read_with_key_rules(path, selector, ignore_prefixes, remap_prefixes, use_torch=use_torch)
    return load_state_dict_nonstrict(model, state)


def restore_from_config(model: Any, restore_config: Any) -> LoadReport:
    """Applies a ``rskeras.train.lightning_module.RestoreConfig`` to ``model`` (the
    SingleTaskModel / MultiTaskModel, built), as rslearn does at the start of a fresh fit."""
    report = restore_into(
        model,
        restore_config.restore_path,
        selector=restore_config.selector,
        ignore_prefixes=restore_config.ignore_prefixes,
        remap_prefixes=restore_config.remap_prefixes,
    )
    logger.info("restore_config %s: %s", restore_config.restore_path, report.summary())
    return report


def load_lightning_checkpoint(model: Any, path: str, strict: bool = True, use_torch: bool | None = None) -> LoadReport:
    """Loads an rslearn Lightning ``.ckpt`` (``state_dict`` keys ``model.*``) into a model
    (SingleTaskModel / MultiTaskModel) whose ``torch_params`` use rslearn's module tree."""
    state = read_state_dict(path, selector=["state_dict"], use_torch=use_torch)
    return load_torch_state_dict(model, state, prefix="model", strict=strict)


def load_torch_weights(model: Any, path: str) -> LoadReport:
    """Model weights, strictly, from an rslearn Lightning ``.ckpt`` or a plain torch state
    dict of the model (``.pth``/``.pt``/``.npz``/``.safetensors``)."""
    try:
        if os.fspath(path).endswith(".ckpt"):
            report = load_lightning_checkpoint(model, path, strict=True)
        else:
            report = load_torch_state_dict(model, read_state_dict(path), strict=True)
    except WeightLoadError as e:
        if os.fspath(path) in str(e):
            raise
        raise WeightLoadError(f"{path}: {e}") from None
    logger.info("loaded torch weights from %s: %s", path, report.summary())
    return report
