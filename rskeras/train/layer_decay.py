"""Layer-wise learning-rate decay for OlmoEarth fine-tuning: rslearn
``rslearn.models.olmoearth_pretrain.optimizer.LayerDecayAdamW`` (the config path maps
here, ``rskeras.config.class_paths``; the model room does not import the training room).

``LayerDecayAdamW`` builds rskeras' ``TorchAdamW`` (torch's AdamW update) with one
parameter group per encoder depth. Parameters are named as in torch (the Lightning
module's tree: ``model.encoder.0.model.blocks.3.attn.q.weight`` for an OlmoEarth first
encoder, see ``rskeras.train.callbacks.freeze_unfreeze.named_trainable_variables``), and
group ``i`` gets ``lr * layer_decay_rate ** (num_layers - i)``:

* ``<prefix>.model.blocks.<i>.*`` -> layer i;
* ``<prefix>.model.patch_embeddings.*`` and ``<prefix>.model.composite_encodings.*`` -> 0;
* everything else (the rest of the encoder, decoders, heads) -> ``num_layers`` (full lr).

Every parameter joins its group, frozen or not, so that it composes with ``SimpleFreeze``
(``rskeras.train.callbacks.freeze_unfreeze``), which only toggles trainability.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

import numpy as np

from rskeras.keras_compat import optimizer_variable_index
from rskeras.train.callbacks.freeze_unfreeze import named_trainable_variables
from rskeras.train.optimizer import OptimizerFactory, TorchAdamW

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "model.encoder.0"


def get_layer_id(name: str, num_layers: int, encoder_prefix: str = ENCODER_PREFIX) -> int:
    """The depth level of parameter ``name`` (0..num_layers; see the module docstring)."""
    if not name.startswith(encoder_prefix):
        return num_layers
    relative = name[len(encoder_prefix) + 1 :]
    if relative.startswith("model.blocks."):
        return int(relative.split(".")[2])
    if relative.startswith("model.patch_embeddings") or relative.startswith("model.composite_encodings"):
        return 0
    return num_layers


class LayerDecayTorchAdamW(TorchAdamW):
    """TorchAdamW whose variables start in fixed parameter groups.

    Args:
        group_of_variable: ``id(variable)`` -> group index (variables not listed join the
            last group).
        group_lrs: learning rate of each group (group 0's is ``learning_rate``).
        **kwargs: TorchAdamW arguments.
    """

    def __init__(self, group_of_variable: dict[int, int], group_lrs: list[float], **kwargs):
        kwargs.setdefault("max_param_groups", len(group_lrs))
        super().__init__(learning_rate=group_lrs[0], **kwargs)
        self.group_of_variable = dict(group_of_variable)
        self.group_lrs = list(group_lrs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        last = len(self.group_lrs) - 1
        groups = np.zeros(len(var_list), np.int32)
        for variable in var_list:
            groups[optimizer_variable_index(self, variable)] = self.group_of_variable.get(id(variable), last)
        self._param_groups.assign(groups)
        self._num_groups.assign(len(self.group_lrs))
        for i, lr in enumerate(self.group_lrs[1:], start=1):
            self.set_param_group_lr(i, lr)


@dataclasses.dataclass
class LayerDecayAdamW(OptimizerFactory):
    """AdamW with per-layer learning-rate decay for OlmoEarth.

    Args:
        lr: learning rate of the last group (decoders, heads; default 0.001).
        betas: (beta_1, beta_2) (default (0.9, 0.999)).
        eps: epsilon (None -> torch's 1e-8).
        weight_decay: decoupled weight decay (None -> torch's 0.01).
        layer_decay_rate: factor per depth level (default 0.65).
        num_layers: the encoder depth (12 for tiny/small/base, 4 for nano, 24 for large).
        encoder_prefix: path from the Lightning module to the OlmoEarth module (default
            ``model.encoder.0``: OlmoEarth as the first encoder component).

    ``build`` raises ValueError, as rslearn, when a parameter maps beyond ``num_layers``
    or some level 0..num_layers has no parameter (e.g. ``num_layers`` too large).
    """

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None
    weight_decay: float | None = None
    layer_decay_rate: float = 0.65
    num_layers: int = 12
    encoder_prefix: str = ENCODER_PREFIX

    def build(self, lm) -> LayerDecayTorchAdamW:
        groups: dict[int, list] = defaultdict(list)
        for name, variable in named_trainable_variables(lm):
            layer_id = get_layer_id(name, self.num_layers, self.encoder_prefix)
            if layer_id > self.num_layers:
                raise ValueError(f"param {name!r} mapped to layer_id={layer_id} which exceeds num_layers={self.num_layers}")
            groups[layer_id].append(variable)
        missing = set(range(self.num_layers + 1)) - groups.keys()
        if missing:
            raise ValueError(f"layer decay expected layers 0..{self.num_layers} but missing layers: {sorted(missing)}")
        lrs = [self.lr * self.layer_decay_rate ** (self.num_layers - i) for i in range(self.num_layers + 1)]
        for i in range(self.num_layers + 1):
            logger.info("layer_decay group layer=%d lr=%.2e params=%d", i, lrs[i], len(groups[i]))
        return LayerDecayTorchAdamW(
            {id(v): i for i, variables in groups.items() for v in variables},
            lrs,
            beta_1=float(self.betas[0]),
            beta_2=float(self.betas[1]),
            epsilon=1e-8 if self.eps is None else float(self.eps),
            weight_decay=0.01 if self.weight_decay is None else float(self.weight_decay),
        )
