"""Learning-rate schedulers (rslearn ``rslearn.train.scheduler``).

The factories that configs name (``PlateauScheduler``, ``MultiStepScheduler``,
``CosineAnnealingScheduler``, ``CosineAnnealingWarmRestartsScheduler``) build schedulers
with the semantics of torch's ``ReduceLROnPlateau``, ``MultiStepLR``, ``CosineAnnealingLR``
and ``CosineAnnealingWarmRestarts``. They act on the optimizer's parameter groups
(``TorchAdamW.param_group_lrs`` / ``set_param_group_lr``) on the host, between epochs.

As in rslearn (Lightning ``interval: epoch``), the trainer steps the scheduler once at the
end of every training epoch, after that epoch's validation; ``PlateauScheduler`` is given
the epoch's ``train_loss``. A factory's ``None`` arguments take torch's defaults.

Parameter groups added during training (``FreezeUnfreeze``/``MultiStageFineTuning``) are
followed from the epoch they appear: a group's base learning rate for the cosine schedules
is its learning rate when it was added (torch 2.x raises on the mismatched group count in
those code paths; rslearn's callbacks extend only the plateau scheduler).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)


class LRScheduler:
    """Base of the epoch schedulers: keeps ``base_lrs`` and ``last_epoch`` like torch.

    Subclasses implement ``compute_lrs()``, the learning rates after ``last_epoch`` was
    advanced (torch's ``get_lr``). Constructing a scheduler performs torch's initial step
    (``last_epoch`` becomes 0), which may already change the learning rate
    (``MultiStepLR`` with milestone 0).

    Args:
        optimizer: an optimizer with ``param_group_lrs()``, ``set_param_group_lr(i, lr)``.
        last_epoch: the index of the last epoch (-1: start from scratch).
    """

    #: Name of the epoch metric given to ``step`` (None: ``step()`` takes no metric).
    monitor: str | None = None

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        lrs = self.group_lrs()
        self.base_lrs = list(lrs)
        self.last_epoch = last_epoch
        self.step_count = 0
        self.step()

    def group_lrs(self) -> list[float]:
        return [float(x) for x in self.optimizer.param_group_lrs()]

    def sync_groups(self) -> None:
        """Follows parameter groups that were added since the last step."""
        lrs = self.group_lrs()
        while len(self.base_lrs) < len(lrs):
            self.base_lrs.append(lrs[len(self.base_lrs)])

    def compute_lrs(self) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, metric: float | None = None) -> None:
        self.sync_groups()
        self.step_count += 1
        self.last_epoch += 1
        for i, lr in enumerate(self.compute_lrs()):
            self.optimizer.set_param_group_lr(i, lr)

    def get_last_lr(self) -> list[float]:
        return self.group_lrs()

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch, "step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.last_epoch = int(state["last_epoch"])
        self.step_count = int(state["step_count"])


class MultiStepLR(LRScheduler):
    """Multiplies every group's learning rate by ``gamma`` when ``last_epoch`` reaches a
    milestone (by ``gamma**k`` for a milestone listed k times).

    Args:
        optimizer: the optimizer.
        milestones: epoch indexes.
        gamma: multiplicative factor (default 0.1).
        last_epoch: index of the last epoch (default -1).
    """

    def __init__(self, optimizer, milestones: list[int], gamma: float = 0.1, last_epoch: int = -1):
        self.milestones = Counter(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def compute_lrs(self) -> list[float]:
        lrs = self.group_lrs()
        if self.last_epoch not in self.milestones:
            return lrs
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base learning rate to ``eta_min`` over ``T_max`` epochs,
    in torch's recursive form (beyond ``T_max`` the learning rate climbs back up and keeps
    oscillating with period ``2 * T_max``)::

        lr_e = eta_min + (lr_{e-1} - eta_min) * (1 + cos(pi e / T)) / (1 + cos(pi (e-1) / T))

    and, at the bottom of each cycle ((e - 1 - T) % 2T == 0),
    ``lr_e = lr_{e-1} + (base_lr - eta_min) * (1 - cos(pi / T)) / 2``.

    Args:
        optimizer: the optimizer.
        T_max: half period in epochs (> 0).
        eta_min: minimum learning rate (default 0).
        last_epoch: index of the last epoch (default -1).
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if not (isinstance(T_max, int) and T_max > 0):
            raise ValueError(f"T_max must be a positive integer, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def compute_lrs(self) -> list[float]:
        lrs = self.group_lrs()
        e, t, eta = self.last_epoch, self.T_max, self.eta_min
        if e == 0:
            return lrs
        if self.step_count == 1 and e > 0:
            return [eta + (base - eta) * (1 + math.cos(e * math.pi / t)) / 2 for base in self.base_lrs]
        if (e - 1 - t) % (2 * t) == 0:
            return [lr + (base - eta) * (1 - math.cos(math.pi / t)) / 2 for lr, base in zip(lrs, self.base_lrs)]
        ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
        return [ratio * (lr - eta) + eta for lr in lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing from the base learning rate to ``eta_min`` over ``T_i`` epochs,
    then a restart; ``T_0`` epochs for the first cycle and ``T_{i+1} = T_i * T_mult``::

        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    Args:
        optimizer: the optimizer.
        T_0: epochs of the first cycle (positive int).
        T_mult: cycle-length multiplier (int >= 1, default 1).
        eta_min: minimum learning rate (default 0).
        last_epoch: index of the last epoch (default -1).
    """

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        if not (isinstance(T_0, int) and T_0 > 0):
            raise ValueError(f"Expected positive integer T_0, but got {T_0!r}")
        if not (isinstance(T_mult, int) and T_mult >= 1):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult!r}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def step(self, metric: float | None = None) -> None:
        self.sync_groups()
        self.step_count += 1
        if self.last_epoch < 0:
            self.T_i, self.T_cur = self.T_0, 0
            self.last_epoch = 0
        else:
            self.last_epoch += 1
            self.T_cur += 1
            if self.T_cur >= self.T_i:
                self.T_cur -= self.T_i
                self.T_i *= self.T_mult
        for i, lr in enumerate(self.compute_lrs()):
            self.optimizer.set_param_group_lr(i, lr)

    def compute_lrs(self) -> list[float]:
        c = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "T_i": self.T_i, "T_cur": self.T_cur}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.T_i = int(state["T_i"])
        self.T_cur = int(state["T_cur"])


class ReduceLROnPlateau:
    """Reduces the learning rates when a metric stops improving (torch semantics).

    Each ``step(value)``: the value improves on the best so far iff (mode min, rel)
    ``value < best * (1 - threshold)``, (min, abs) ``value < best - threshold``, (max, rel)
    ``value > best * (1 + threshold)``, (max, abs) ``value > best + threshold``. After more
    than ``patience`` epochs without improvement every group's learning rate becomes
    ``max(lr * factor, min_lr)`` (unchanged if that changes it by no more than ``eps``),
    then ``cooldown`` epochs pass without counting bad epochs.

    Args:
        optimizer: the optimizer.
        mode: "min" or "max" (default "min").
        factor: reduction factor, < 1 (default 0.1).
        patience: tolerated epochs without improvement (default 10).
        threshold: significance threshold (default 1e-4).
        threshold_mode: "rel" or "abs" (default "rel").
        cooldown: epochs to wait after a reduction (default 0).
        min_lr: a lower bound, or one per parameter group (default 0).
        eps: minimal change applied (default 1e-8).
    """

    monitor = "train_loss"

    def __init__(
        self,
        optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        eps: float = 1e-8,
    ):
        if factor >= 1.0:
            raise ValueError(f"Factor should be < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown (expected 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown (expected 'rel' or 'abs')")
        self.optimizer = optimizer
        num_groups = len(optimizer.param_group_lrs())
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != num_groups:
                raise ValueError(f"expected {num_groups} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = [float(x) for x in min_lr]
        else:
            self.default_min_lr = float(min_lr)
            self.min_lrs = [float(min_lr)] * num_groups
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.eps = eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def is_better(self, value: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return value < best * (1.0 - self.threshold)
        if self.mode == "min":
            return value < best - self.threshold
        if self.threshold_mode == "rel":
            return value > best * (self.threshold + 1.0)
        return value > best + self.threshold

    def extend_min_lrs(self) -> None:
        """One ``min_lr`` per parameter group (the first group's for new groups)."""
        while len(self.min_lrs) < len(self.optimizer.param_group_lrs()):
            self.min_lrs.append(self.min_lrs[0])

    def scale_min_lrs(self, factor: float) -> None:
        self.min_lrs = [m * factor for m in self.min_lrs]

    def step(self, metric: float | None = None) -> None:
        if metric is None:
            raise ValueError(f"ReduceLROnPlateau.step needs the value of {self.monitor!r}")
        value = float(metric)
        self.last_epoch += 1
        if self.is_better(value, self.best):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.reduce_lrs()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def reduce_lrs(self) -> None:
        lrs = self.optimizer.param_group_lrs()
        if len(lrs) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"ReduceLROnPlateau: the optimizer has {len(lrs)} parameter groups but min_lr lists {len(self.min_lrs)}"
                )
            self.min_lrs = [self.default_min_lr] * len(lrs)
        for i, old in enumerate(lrs):
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                self.optimizer.set_param_group_lr(i, new)
                logger.info("ReduceLROnPlateau: parameter group %d learning rate %.3g -> %.3g", i, old, new)

    def get_last_lr(self) -> list[float]:
        return [float(x) for x in self.optimizer.param_group_lrs()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch,
            "min_lrs": list(self.min_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])
        self.min_lrs = [float(x) for x in state["min_lrs"]]


# ---- factories (what configs name) ----------------------------------------------------


class SchedulerFactory:
    """Builds a scheduler for an optimizer (``build(optimizer)``).

    Custom schedulers: any class with ``build(optimizer)`` returning an object with
    ``step(metric=None)`` (and optionally ``monitor``, ``state_dict``/``load_state_dict``).
    """

    def get_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def build(self, optimizer):  # pragma: no cover - interface
        raise NotImplementedError


@dataclasses.dataclass
class PlateauScheduler(SchedulerFactory):
    """ReduceLROnPlateau monitoring ``train_loss`` (rslearn ``PlateauScheduler``).

    Args (None -> torch default): mode ("min"), factor (0.1), patience (10), threshold
    (1e-4), threshold_mode ("rel"), cooldown (0), min_lr (0), eps (1e-8).
    """

    mode: str | None = None
    factor: float | None = None
    patience: int | None = None
    threshold: float | None = None
    threshold_mode: str | None = None
    cooldown: int | None = None
    min_lr: float | None = None
    eps: float | None = None

    def build(self, optimizer) -> ReduceLROnPlateau:
        logger.info("using scheduler PlateauScheduler with %s", self.get_kwargs())
        return ReduceLROnPlateau(optimizer, **self.get_kwargs())


@dataclasses.dataclass
class MultiStepScheduler(SchedulerFactory):
    """MultiStepLR (rslearn ``MultiStepScheduler``).

    Args: milestones (required, epochs), gamma (0.1), last_epoch (-1; a value >= 0 starts
    the schedule after that epoch, where torch would need ``initial_lr`` in the optimizer).
    """

    milestones: list[int]
    gamma: float | None = None
    last_epoch: int | None = None

    def build(self, optimizer) -> MultiStepLR:
        logger.info("using scheduler MultiStepScheduler with %s", self.get_kwargs())
        return MultiStepLR(optimizer, **self.get_kwargs())


@dataclasses.dataclass
class CosineAnnealingScheduler(SchedulerFactory):
    """CosineAnnealingLR (rslearn ``CosineAnnealingScheduler``).

    Args: T_max (required, epochs), eta_min (0).
    """

    T_max: int
    eta_min: float | None = None

    def build(self, optimizer) -> CosineAnnealingLR:
        logger.info("using scheduler CosineAnnealingScheduler with %s", self.get_kwargs())
        return CosineAnnealingLR(optimizer, **self.get_kwargs())


@dataclasses.dataclass
class CosineAnnealingWarmRestartsScheduler(SchedulerFactory):
    """CosineAnnealingWarmRestarts (rslearn ``CosineAnnealingWarmRestartsScheduler``).

    Args: T_0 (required, epochs), T_mult (1), eta_min (0.0).
    """

    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def build(self, optimizer) -> CosineAnnealingWarmRestarts:
        logger.info("using scheduler CosineAnnealingWarmRestartsScheduler with %s", self.get_kwargs())
        return CosineAnnealingWarmRestarts(optimizer, **self.get_kwargs())
