"""Optimizer factories (rslearn ``rslearn.train.optimizer``)."""

from __future__ import annotations

import dataclasses

import keras


class OptimizerFactory:
    """Builds a Keras optimizer for a model (``build(lightning_module)``)."""

    def build(self, lm) -> keras.optimizers.Optimizer:  # pragma: no cover - interface
        raise NotImplementedError


@dataclasses.dataclass
class AdamW(OptimizerFactory):
    """AdamW with PyTorch's defaults: ``eps`` 1e-8 and ``weight_decay`` 0.01 when unset
    (Keras' own defaults are 1e-7 and 0.004).

    Args:
        lr: learning rate (default 0.001).
        betas: (beta_1, beta_2) (default (0.9, 0.999)).
        eps: epsilon (None -> 1e-8).
        weight_decay: decoupled weight decay, applied to every parameter (None -> 0.01).
    """

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None
    weight_decay: float | None = None

    def build(self, lm=None) -> keras.optimizers.Optimizer:
        return keras.optimizers.AdamW(
            learning_rate=self.lr,
            beta_1=self.betas[0],
            beta_2=self.betas[1],
            epsilon=1e-8 if self.eps is None else self.eps,
            weight_decay=0.01 if self.weight_decay is None else self.weight_decay,
        )
