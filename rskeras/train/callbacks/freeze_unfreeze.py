"""Freezing and unfreezing parts of the model during fine-tuning (rslearn
``rslearn.train.callbacks.freeze_unfreeze``).

Freezing sets ``trainable = False`` on the Keras variables of a module: they get no
gradient (the training step is re-traced) and, like torch parameters with
``requires_grad=False``, are not updated. Frozen layers keep running in training mode
(dropout, batch statistics), as Lightning leaves frozen modules in train mode.

Parameter groups: torch adds unfrozen parameters to the optimizer as a new param group
with its own learning rate. ``TorchAdamW`` holds the same groups (``add_param_group``),
so ``unfreeze_lr_factor`` gives the unfrozen variables ``lr / factor``, schedulers act on
every group, and the plateau scheduler's ``min_lrs`` grow with the groups, as in rslearn.

Module names (``MultiStageFineTuning`` selectors, ``module_selector`` fallbacks) follow the
torch module tree of the Lightning module: ``model.encoder.0.model.features.3`` for
components that implement ``torch_params`` (ported weights), and Keras attribute paths
(``model.encoder.0.stages.1.0``) for the others.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Sequence

import keras

from rskeras.keras_compat import created_trainable_variables, sublayers
from rskeras.train.callbacks.base import Callback

logger = logging.getLogger(__name__)


# ---- module tree -----------------------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _children(obj: Any) -> Iterable[tuple[str, Any]]:
    """(attribute name, value) pairs of an object that may hold layers."""
    if isinstance(obj, keras.layers.Layer):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    elif isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return []
    return [(k, v) for k, v in items if isinstance(v, (keras.layers.Layer, list, tuple, dict))]


def named_trainable_variables(root: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(qualified name, variable) for every trainable-kind variable under ``root``.

    The name of a variable is ``<module path>.<leaf>``; components with ``torch_params``
    use their torch keys. Each variable appears once (first path found).
    """
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def add(name: str, variable: Any) -> None:
        if variable is not None and id(variable) not in seen:
            seen.add(id(variable))
            out.append((name, variable))

    def visit(obj: Any, path: str) -> None:
        if isinstance(obj, keras.layers.Layer) and path and hasattr(obj, "torch_params"):
            try:
                params = obj.torch_params(path)
            except Exception:  # noqa: BLE001 - fall back to attribute names
                params = None
            if params is not None:
                kinds = {id(v) for v in created_trainable_variables(obj)}
                for p in params:
                    if p.variable is not None and id(p.variable) in kinds:
                        add(p.key, p.variable)
                for v in created_trainable_variables(obj):  # anything torch_params did not list
                    add(_join(path, v.name), v)
                return
        if isinstance(obj, keras.layers.Layer):
            for v in created_trainable_variables(obj, recursive=False):
                add(_join(path, v.name), v)
        for name, child in _children(obj):
            visit(child, _join(path, name))
        if isinstance(obj, keras.layers.Layer):  # sub-layers not reachable by attribute
            for v in created_trainable_variables(obj):
                add(_join(path, v.name), v)

    visit(root, prefix)
    return out


def batch_norm_variable_ids(root: keras.layers.Layer) -> set[int]:
    """Variables of BatchNormalization layers (Lightning keeps them trainable)."""
    ids: set[int] = set()
    for layer in sublayers(root):
        if isinstance(layer, keras.layers.BatchNormalization):
            ids.update(id(v) for v in layer.weights)
    return ids


def module_names(name: str) -> list[str]:
    """Module paths containing a variable: 'a.b.c.kernel' -> ['a', 'a.b', 'a.b.c']."""
    parts = name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def set_trainable(variables: Iterable[Any], trainable: bool) -> None:
    for v in variables:
        v.trainable = trainable


def select_module(lm: Any, selector: Sequence[str | int]) -> tuple[Any, list[Any]]:
    """Follows ``selector`` (attributes / indexes) from ``lm``: (object, its variables).

    When an attribute is missing (torch-only names inside a ported component), the rest of
    the selector is matched against the torch-style variable names instead.
    """
    obj: Any = lm
    walked: list[str] = []
    for key in selector:
        try:
            obj = obj[key] if isinstance(key, int) else getattr(obj, key)
        except (AttributeError, IndexError, KeyError, TypeError):
            prefix = ".".join(str(k) for k in selector)
            variables = [v for n, v in named_trainable_variables(lm) if n.startswith(prefix + ".")]
            if variables:
                return None, variables
            available = [n for n, _ in _children(obj)] if obj is not None else []
            raise ValueError(
                f"module_selector {list(selector)}: {'.'.join(walked) or '<lightning module>'} has no "
                f"{'index' if isinstance(key, int) else 'attribute'} {key!r}"
                f"{f' (children: {available})' if available else ''}"
            ) from None
        walked.append(str(key))
    if isinstance(obj, keras.layers.Layer):
        return obj, created_trainable_variables(obj)
    if isinstance(obj, (list, tuple, dict)):
        values = obj.values() if isinstance(obj, dict) else obj
        variables = []
        for item in values:
            if isinstance(item, keras.layers.Layer):
                variables.extend(created_trainable_variables(item))
        return obj, variables
    raise ValueError(f"module_selector {list(selector)} selects a {type(obj).__name__}, not a layer")


def _optimizer_and_plateau(lm: Any):
    from rskeras.train.optimizer import TorchAdamW, unwrap_optimizer
    from rskeras.train.scheduler import ReduceLROnPlateau

    optimizer = unwrap_optimizer(lm.optimizer)
    if not isinstance(optimizer, TorchAdamW):
        raise TypeError(f"fine-tuning callbacks need the rskeras AdamW optimizer (parameter groups), got {type(optimizer).__name__}")
    scheduler = getattr(lm, "lr_scheduler", None)
    return optimizer, scheduler if isinstance(scheduler, ReduceLROnPlateau) else None


# ---- callbacks -------------------------------------------------------------------------


class FreezeUnfreeze(Callback):
    """Freezes a module before training and optionally unfreezes it later.

    Args:
        module_selector: attributes (str) / indexes (int) from the Lightning module to the
            module, e.g. ``["model", "encoder", 0]``.
        unfreeze_at_epoch: epoch (0-based, > 0) at whose start the module becomes
            trainable again (None: stays frozen).
        unfreeze_lr_factor: the unfrozen variables join the optimizer as a new parameter
            group with learning rate ``lr(group 0) / unfreeze_lr_factor`` (default 1).

    BatchNormalization variables stay trainable (Lightning's ``train_bn=True``), so they
    are optimized from the start and not part of the new group. After the unfreeze epoch
    the module is made trainable again at every epoch start (harmless; covers resumes).
    """

    def __init__(self, module_selector: list[str | int], unfreeze_at_epoch: int | None = None, unfreeze_lr_factor: float = 1):
        super().__init__()
        if unfreeze_at_epoch == 0:
            raise ValueError("unfreeze_at_epoch cannot be 0")
        if unfreeze_lr_factor <= 0:
            raise ValueError(f"unfreeze_lr_factor must be > 0, got {unfreeze_lr_factor}")
        self.module_selector = list(module_selector)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.unfreeze_lr_factor = unfreeze_lr_factor

    def _target_variables(self, lm) -> list[Any]:
        _, variables = select_module(lm, self.module_selector)
        bn = batch_norm_variable_ids(lm)
        return [v for v in variables if id(v) not in bn]

    def setup(self, trainer, lm) -> None:
        if self.unfreeze_at_epoch is not None and getattr(lm, "optimizer", None) is not None:
            _optimizer_and_plateau(lm)  # fail before training if groups are unavailable
        variables = self._target_variables(lm)
        logger.info("freezing %d variables at %s", len(variables), self.module_selector)
        set_trainable(variables, False)

    def on_epoch_begin(self, epoch, logs=None):
        if self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        lm = self.model
        variables = self._target_variables(lm)
        changed = any(not v.trainable for v in variables)
        set_trainable(variables, True)
        if epoch == self.unfreeze_at_epoch:
            optimizer, plateau = _optimizer_and_plateau(lm)
            new = [v for v in variables if optimizer.group_of(v) < 0]
            if new:
                lr = optimizer.param_group_lrs()[0] / self.unfreeze_lr_factor
                index = optimizer.add_param_group(new, lr)
                logger.info("unfreezing %s at epoch %d: %d variables in parameter group %d (lr %.3g)", self.module_selector, epoch, len(new), index, lr)
                if plateau is not None:
                    plateau.extend_min_lrs()
        if changed:
            lm.trainability_changed()


@dataclasses.dataclass
class FTStage:
    """One stage of ``MultiStageFineTuning``.

    Args:
        at_epoch: epoch (0-based) at whose start the stage applies.
        freeze_selectors: substrings; modules whose qualified name contains one are frozen
            (unless they also match an unfreeze selector).
        unfreeze_selectors: substrings; matching modules are made trainable.
        unfreeze_lr_factor: newly optimized variables get ``lr(group 0) / factor``.
        scale_existing_groups: multiply the learning rate of every existing parameter group
            (and the plateau scheduler's min_lrs) by this factor (None: unchanged).
    """

    at_epoch: int
    freeze_selectors: Sequence[str]
    unfreeze_selectors: Sequence[str]
    unfreeze_lr_factor: float = 1.0
    scale_existing_groups: float | None = None


class MultiStageFineTuning(Callback):
    """Multi-stage fine-tuning by module-name substrings (rslearn ``MultiStageFineTuning``).

    At the start of each stage's epoch (once): make everything trainable; optionally scale
    the existing parameter groups' learning rates; freeze the variables of modules that
    match a freeze selector and no unfreeze selector (every module containing the
    variable counts, as torch freezes recursively); make unfreeze matches trainable and put
    those not yet in the optimizer into a new parameter group. Unlike ``FreezeUnfreeze``
    this touches BatchNormalization variables too (rslearn sets ``requires_grad`` on every
    parameter).

    Args:
        stages: the stages (distinct ``at_epoch``; ``scale_existing_groups`` > 0).
    """

    def __init__(self, stages: list[FTStage]):
        super().__init__()
        seen: set[int] = set()
        for stage in stages:
            if stage.at_epoch in seen:
                raise ValueError(f"Duplicate at_epoch in stages: {stage.at_epoch}")
            if stage.scale_existing_groups is not None and stage.scale_existing_groups <= 0.0:
                raise ValueError(f"scale_existing_groups, if set, must be > 0 (got {stage.scale_existing_groups})")
            seen.add(stage.at_epoch)
        self.stages = sorted(stages, key=lambda s: s.at_epoch)
        self.applied_epochs: set[int] = set()

    @staticmethod
    def _matches(names: list[str], selectors: Sequence[str]) -> bool:
        selectors = [s for s in selectors if s]
        return any(sel in name for name in names for sel in selectors)

    def plan(self, lm, stage: FTStage) -> tuple[list[Any], list[Any], list[Any]]:
        """(all variables, variables to freeze, variables matched by unfreeze selectors)."""
        named = named_trainable_variables(lm)
        frozen, unfrozen = [], []
        for name, variable in named:
            modules = module_names(name)
            unfreeze = self._matches(modules, stage.unfreeze_selectors)
            if unfreeze:
                unfrozen.append(variable)
            elif self._matches(modules, stage.freeze_selectors):
                frozen.append(variable)
        return [v for _, v in named], frozen, unfrozen

    def apply_stage(self, lm, stage: FTStage) -> None:
        optimizer, plateau = _optimizer_and_plateau(lm)
        everything, frozen, unfrozen = self.plan(lm, stage)
        set_trainable(everything, True)
        if stage.scale_existing_groups is not None and stage.scale_existing_groups != 1.0:
            for i, lr in enumerate(optimizer.param_group_lrs()):
                optimizer.set_param_group_lr(i, lr * stage.scale_existing_groups)
            if plateau is not None:
                plateau.scale_min_lrs(stage.scale_existing_groups)
        set_trainable(frozen, False)
        new = [v for v in unfrozen if optimizer.group_of(v) < 0]
        if new:
            lr = optimizer.param_group_lrs()[0] / (stage.unfreeze_lr_factor or 1.0)
            index = optimizer.add_param_group(new, lr)
            logger.info("[FT stage @ epoch %d] %d variables in new parameter group %d (lr %.3g)", stage.at_epoch, len(new), index, lr)
            if plateau is not None:
                plateau.extend_min_lrs()
        trainable = sum(int(v.numpy().size) for v in everything if v.trainable)
        logger.info(
            "[FT stage @ epoch %d] trainable parameters: %d | frozen: %d",
            stage.at_epoch,
            trainable,
            sum(int(v.numpy().size) for v in everything) - trainable,
        )
        lm.trainability_changed()

    def setup(self, trainer, lm) -> None:
        if getattr(lm, "optimizer", None) is not None:
            _optimizer_and_plateau(lm)  # fail before training if groups are unavailable

    def on_epoch_begin(self, epoch, logs=None):
        for stage in self.stages:
            if stage.at_epoch == epoch and stage.at_epoch not in self.applied_epochs:
                logger.info("applying multi-stage fine-tuning plan at epoch %d", epoch)
                self.apply_stage(self.model, stage)
                self.applied_epochs.add(stage.at_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"applied_epochs": sorted(self.applied_epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied_epochs = set(int(e) for e in state.get("applied_epochs", []))
