"""Optimizers (rslearn ``rslearn.train.optimizer``).

``AdamW`` is the optimizer factory that configs name; it builds ``TorchAdamW``, a Keras
optimizer that performs exactly the update of ``torch.optim.AdamW`` and keeps torch's
*parameter groups* (several learning rates in one optimizer, used by the fine-tuning
callbacks).

Why not ``keras.optimizers.AdamW``: Keras adds epsilon to ``sqrt(v)`` before the bias
correction while torch adds it after (``sqrt(v / (1 - beta2^t)) + eps``); Keras counts one
global step while torch keeps a step per parameter (a parameter that joins the optimizer
later starts its own bias correction at 1); and Keras' defaults differ (epsilon 1e-7,
weight decay 0.004).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

from rskeras.keras_compat import (
    ClipGradientsHook,
    PreReducedGradients,
    StepWideUpdate,
    optimizer_tracks,
    optimizer_variable_index,
)

logger = logging.getLogger(__name__)

# Parameter groups beyond group 0 that one optimizer can hold (fine-tuning callbacks add
# one group per unfreezing stage).
MAX_EXTRA_GROUPS = 15


def to_numpy(value) -> np.ndarray:
    """A variable's or tensor's value on the host."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def unwrap_optimizer(optimizer):
    """The optimizer inside a ``keras.optimizers.LossScaleOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


class TorchAdamW(ClipGradientsHook, PreReducedGradients, StepWideUpdate, keras.optimizers.Optimizer):
    """AdamW with the exact update of ``torch.optim.AdamW`` and torch-style parameter groups.

    For a parameter ``p`` in a group with learning rate ``lr``, at its own step ``t``
    (counted per parameter, starting at 1 when it first receives an update)::

        p <- p * (1 - lr * weight_decay)                  # decoupled decay, every parameter
        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g * g
        p <- p - lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)

    Only the variables that receive gradients are updated (frozen variables keep their
    values, moments and step count, as torch skips parameters whose ``grad`` is None).

    Parameter groups: every variable the optimizer is built with belongs to group 0 if it
    was trainable at build time, else to no group (-1; like torch, frozen parameters are
    not in the optimizer). ``add_param_group(variables, lr)`` puts variables into a new
    group with its own learning rate (torch's ``optimizer.add_param_group``). Group 0's
    learning rate is Keras' ``learning_rate`` variable. The other hyperparameters are
    shared by all groups.

    Gradient clipping with torch's rule (``clip_grad_norm`` / ``clip_grad_value``, set by
    the trainer from Lightning's ``gradient_clip_val``) acts on the gradients after they are
    summed over replicas (and averaged over accumulation steps).

    Under ``tf.distribute`` the training step all-reduces the gradients itself before
    calling ``apply`` (``expects_reduced_gradients``), so that clipping, loss-scale checks
    and the update all see the global gradient.

    Args:
        learning_rate: group 0's learning rate (default 0.001).
        beta_1, beta_2: moment decay rates (default 0.9, 0.999).
        epsilon: added to the bias-corrected ``sqrt(v)`` (default 1e-8).
        weight_decay: decoupled weight decay (default 0.01), applied to every parameter.
        clip_grad_norm: if set, scale all gradients by
            ``min(1, clip_grad_norm / (global_norm + 1e-6))`` (torch ``clip_grad_norm_``).
        clip_grad_value: if set, clamp every gradient to ``[-v, v]``.
        gradient_accumulation_steps: apply the mean gradient every N steps (Keras option).
        max_param_groups: how many parameter groups the optimizer can hold (default 16;
            fixed when it is built, as it sizes an optimizer variable).
        name: optimizer name.
    """

    expects_reduced_gradients = True

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.01,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        gradient_accumulation_steps: int | None = None,
        max_param_groups: int = MAX_EXTRA_GROUPS + 1,
        name: str = "adamw",
        **kwargs,
    ):
        if not learning_rate >= 0:
            raise ValueError(f"TorchAdamW: learning_rate must be >= 0, got {learning_rate}")
        if not (0.0 <= beta_1 < 1.0 and 0.0 <= beta_2 < 1.0):
            raise ValueError(f"TorchAdamW: betas must be in [0, 1), got ({beta_1}, {beta_2})")
        if not epsilon >= 0:
            raise ValueError(f"TorchAdamW: epsilon must be >= 0, got {epsilon}")
        if not weight_decay >= 0:
            raise ValueError(f"TorchAdamW: weight_decay must be >= 0, got {weight_decay}")
        if clip_grad_norm is not None and clip_grad_value is not None:
            raise ValueError("TorchAdamW: set only one of clip_grad_norm and clip_grad_value")
        if int(max_param_groups) < 1:
            raise ValueError(f"TorchAdamW: max_param_groups must be >= 1, got {max_param_groups}")
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.max_extra_groups = int(max_param_groups) - 1
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.decoupled_weight_decay = weight_decay
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value

    # ---- state -------------------------------------------------------------------------

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["exp_avg", "exp_avg_sq"])
        # Per model variable (in the optimizer's variable order): torch's step count and the
        # parameter group, as two vectors (one read and one write per step for all of them).
        groups = np.asarray([0 if variable.trainable else -1 for variable in var_list], np.int32)
        self._param_steps = self.add_variable(shape=(len(var_list),), dtype="float32", name="param_steps")
        self._param_groups = self.add_variable(
            shape=(len(var_list),), dtype="int32", initializer=lambda shape, dtype=None: groups, name="param_groups"
        )
        self._extra_group_lrs = self.add_variable(shape=(max(self.max_extra_groups, 1),), dtype="float32", name="extra_group_lrs")
        self._num_groups = self.add_variable(
            shape=(), dtype="int32", initializer=keras.initializers.Constant(1), name="num_param_groups"
        )

    def load_own_variables(self, store):
        """Reads the optimizer's state from a checkpoint; also the first layout (up to
        rskeras commit ca55c67), with one scalar ``_step`` and one ``_group`` variable per
        model variable where this one has the two vectors. A checkpoint of another
        optimizer or model raises ValueError (Keras only warns and keeps a fresh state)."""
        variables = self.variables
        saved = len(store.keys())
        first = next(i for i, v in enumerate(variables) if v is self._param_steps)
        n = int(self._param_steps.shape[0])
        old_layout = saved == len(variables) - 2 + 2 * n and n > 0 and tuple(store[str(first)].shape) == ()
        if saved != len(variables) and not old_layout:
            raise ValueError(f"the saved optimizer has {saved} variables, this one {len(variables)} (another model or optimizer)")
        if not old_layout:
            return super().load_own_variables(store)
        for i in range(first):
            variables[i].assign(store[str(i)])
        self._param_steps.assign(np.asarray([store[str(first + 2 * k)][()] for k in range(n)], np.float32))
        self._param_groups.assign(np.asarray([store[str(first + 2 * k + 1)][()] for k in range(n)], np.int32))
        for i in range(first + 2, len(variables)):
            variables[i].assign(store[str(i - 2 + 2 * n)])
        logger.info("optimizer %s: read a checkpoint of the first layout (per-variable step and group scalars)", self.name)

    # ---- parameter groups (host side) --------------------------------------------------

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise RuntimeError(f"TorchAdamW.{what}: the optimizer is not built yet")

    @property
    def num_param_groups(self) -> int:
        return int(self._num_groups.numpy()) if self.built else 1

    def param_group_lrs(self) -> list[float]:
        """Learning rate of every parameter group, group 0 first."""
        lrs = [float(to_numpy(self.learning_rate))]
        if self.built:
            extra = to_numpy(self._extra_group_lrs)
            lrs += [float(x) for x in extra[: self.num_param_groups - 1]]
        return lrs

    def set_param_group_lr(self, index: int, lr: float) -> None:
        """Sets the learning rate of parameter group ``index``."""
        if index == 0:
            self.learning_rate = lr
            return
        self._require_built("set_param_group_lr")
        if not 0 < index < self.num_param_groups:
            raise IndexError(f"TorchAdamW: no parameter group {index} (there are {self.num_param_groups})")
        values = to_numpy(self._extra_group_lrs).copy()
        values[index - 1] = lr
        self._extra_group_lrs.assign(values)

    def group_of(self, variable) -> int:
        """The parameter group of a model variable (-1: not in the optimizer)."""
        self._require_built("group_of")
        return int(to_numpy(self._param_groups)[optimizer_variable_index(self, variable)])

    def knows(self, variable) -> bool:
        return optimizer_tracks(self, variable)

    def add_param_group(self, variables: Iterable, lr: float) -> int:
        """Puts ``variables`` (known to the optimizer, in no group yet) into a new group."""
        self._require_built("add_param_group")
        variables = list(variables)
        index = self.num_param_groups
        if index > self.max_extra_groups:
            raise RuntimeError(f"TorchAdamW: at most {self.max_extra_groups + 1} parameter groups are supported")
        groups = to_numpy(self._param_groups).copy()
        for variable in variables:
            if not self.knows(variable):
                raise ValueError(f"TorchAdamW.add_param_group: variable {variable.path} is not known to the optimizer")
            slot = optimizer_variable_index(self, variable)
            if groups[slot] >= 0:
                raise ValueError(f"TorchAdamW.add_param_group: variable {variable.path} is already in a parameter group")
            groups[slot] = index
        self._param_groups.assign(groups)
        self._num_groups.assign(index + 1)
        self.set_param_group_lr(index, lr)
        return index

    # ---- update ------------------------------------------------------------------------

    def clip_gradients(self, grads):
        # torch's clip_grad_norm_ / clip_grad_value_ (ClipGradientsHook: where Keras clips).
        if self.clip_grad_norm is not None:
            present = [g for g in grads if g is not None]
            total = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in present]))
            coef = tf.minimum(tf.cast(self.clip_grad_norm, tf.float32) / (total + 1e-6), 1.0)
            return [None if g is None else g * tf.cast(coef, g.dtype) for g in grads]
        if self.clip_grad_value is not None:
            v = self.clip_grad_value
            return [None if g is None else tf.clip_by_value(g, -v, v) for g in grads]
        return grads

    def update_step(self, gradient, variable, learning_rate):
        # Keras' one-variable entry point; a training step updates all its variables
        # through prepare_update / update_variable (StepWideUpdate).
        self.update_variable(variable, gradient, *self.prepare_update([variable], learning_rate)[0])

    def prepare_update(self, variables, learning_rate) -> list[tuple]:
        """The scalar part of torch's update for every variable of a step, as a few vector
        ops (not some thirty scalar ops per variable, which dominated the step's trace):
        advances each variable's step count and returns, per variable, its coefficients
        ``(decay, rate, beta_1, beta_2, epsilon)`` in the variable's dtype.

        Variables in no group (frozen when the optimizer was built, made trainable by a
        callback without joining a group) receive gradients but are not updated: they get
        decay 1, moment coefficients 1 (m and v kept) and rate 0, and their step stays.
        The bias corrections are folded into the fused kernel's rate and epsilon (beta
        powers 0), computed in float64 as torch does on the host:
        ``p -= (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps*sqrt(bc2))``.
        """
        if not variables:
            return []
        indices = [optimizer_variable_index(self, v) for v in variables]
        # Computed for every variable the optimizer knows, in its order; those without a
        # gradient in this step are inactive (their step stays, their coefficients unused).
        present = np.zeros(int(self._param_steps.shape[0]), bool)
        present[indices] = True
        groups = tf.convert_to_tensor(self._param_groups)
        lrs = tf.concat([tf.reshape(tf.cast(learning_rate, tf.float64), [1]), tf.cast(self._extra_group_lrs, tf.float64)], 0)
        active = tf.logical_and(groups >= 0, tf.constant(present))
        lr = tf.where(active, tf.gather(lrs, tf.maximum(groups, 0)), tf.constant(0.0, tf.float64))
        step = tf.cast(tf.convert_to_tensor(self._param_steps), tf.float64) + tf.cast(active, tf.float64)
        self.assign(self._param_steps, tf.cast(step, tf.float32))
        counted = tf.maximum(step, 1.0)  # bias corrections of an inactive, never-updated variable stay finite
        bc1 = 1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), counted)
        bc2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), counted))
        one = tf.ones_like(lr)
        coefficients = tf.stack(
            [
                1.0 - lr * self.decoupled_weight_decay,
                lr * bc2_sqrt / bc1,
                tf.where(active, self.beta_1 * one, one),
                tf.where(active, self.beta_2 * one, one),
                self.epsilon * bc2_sqrt,
            ],
            axis=1,
        )
        per_dtype = {}
        for dtype in {v.dtype for v in variables}:
            columns = [tf.unstack(c) for c in tf.unstack(tf.cast(coefficients, dtype), axis=1)]
            per_dtype[dtype] = list(zip(*columns))
        return [per_dtype[v.dtype][i] for i, v in zip(indices, variables)]

    @tf.autograph.experimental.do_not_convert  # plain ops: no conversion each of the ~200 calls a trace makes
    def update_variable(self, variable, gradient, decay, rate, beta_1, beta_2, epsilon):
        """torch's update of one variable: ``p *= 1 - lr*wd``, then Adam as one fused kernel
        (ResourceApplyAdam: one pass over p, m, v and g instead of about ten ops). Returns
        the Adam op (StepWideUpdate orders the variables' updates on it)."""
        index = optimizer_variable_index(self, variable)
        self.assign(variable, variable * decay)
        zero = tf.zeros([], variable.dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=zero,
            beta2_power=zero,
            lr=rate,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=epsilon,
            grad=tf.cast(tf.convert_to_tensor(gradient), variable.dtype),
            use_locking=False,
            use_nesterov=False,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.decoupled_weight_decay,
                "clip_grad_norm": self.clip_grad_norm,
                "clip_grad_value": self.clip_grad_value,
                "max_param_groups": self.max_extra_groups + 1,
            }
        )
        return config


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (the local component under a
    distribution strategy's update)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


class OptimizerFactory:
    """Builds a Keras optimizer for a model (``build(lightning_module)``)."""

    def build(self, lm) -> keras.optimizers.Optimizer:  # pragma: no cover - interface
        raise NotImplementedError


@dataclasses.dataclass
class AdamW(OptimizerFactory):
    """AdamW with PyTorch's semantics and defaults (rslearn ``AdamW`` factory).

    Args:
        lr: learning rate (default 0.001).
        betas: (beta_1, beta_2) (default (0.9, 0.999)).
        eps: epsilon (None -> torch's 1e-8).
        weight_decay: decoupled weight decay, applied to every parameter including biases
            and norms (None -> torch's 0.01).

    ``build`` returns a ``TorchAdamW``; like rslearn it optimizes the parameters that are
    trainable when the optimizer is built (the trainer builds it after the fine-tuning
    callbacks have frozen their modules).
    """

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None
    weight_decay: float | None = None

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta_1, beta_2), got {list(self.betas)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")

    def build(self, lm=None) -> TorchAdamW:
        return TorchAdamW(
            learning_rate=float(self.lr),
            beta_1=float(self.betas[0]),
            beta_2=float(self.betas[1]),
            epsilon=1e-8 if self.eps is None else float(self.eps),
            weight_decay=0.01 if self.weight_decay is None else float(self.weight_decay),
        )

