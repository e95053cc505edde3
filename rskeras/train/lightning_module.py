"""RslearnLightningModule: the Keras model that trains an rskeras model on a task.

The counterpart of rslearn's Lightning module, as a ``keras.Model`` with custom steps:

* ``train_step`` runs the model with targets, sums the loss dict (rslearn's step loss),
  divides it by the number of replicas that received examples (gradients are summed over
  replicas: by Keras' optimizer, or in the step itself for optimizers with
  ``expects_reduced_gradients`` such as rskeras' TorchAdamW) and logs ``train_loss`` and
  ``train_<loss>`` as batch-size-weighted epoch means.
* ``test_step`` runs the model with targets in inference mode, logs ``loss`` and each loss
  (Keras prefixes ``val_`` during fit; rskeras' trainer prefixes ``test_`` for test) and
  updates the task's metrics.
* At the end of an epoch the task metrics are computed once, eagerly (so host-side metrics
  such as mAP are cheap per batch), flattened with torchmetrics' naming rule.

The optimizer is built over every variable created trainable (``optimizable_variables``),
so that fine-tuning callbacks can unfreeze into parameter groups later;
``trainability_changed`` re-traces the step after freezing. ``load_weights`` reads rskeras
``.weights.h5`` checkpoints (model, and optimizer state once built; never metric state).

The model itself (``SingleTaskModel``/``MultiTaskModel``) is a Keras layer; for export
``inference_model(input_specs)`` assembles a functional ``keras.Model``:
inputs dict -> model -> ``task.output_layer()`` -> dict of named outputs.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.keras_compat import ModelHooks, SingleTraceStepFunctions, created_trainable_variables, in_multi_worker_mode, sublayers
from rskeras.models.step_graph import trainer_step_graph
from rskeras.train.metrics import flatten_metric_results
from rskeras.train.optimizer import AdamW, unwrap_optimizer

logger = logging.getLogger(__name__)


def _supports_jit(layer) -> bool:
    """False when ``layer`` or any layer inside it declares ``supports_jit = False``."""
    return all(getattr(sub, "supports_jit", True) for sub in sublayers(layer))


class RestoreConfig:
    """Initial weights from a PyTorch state dict at the start of a fresh fit.

    Args:
        restore_path: .ckpt/.pth/.npz/.safetensors file.
        restore_path_options: accepted for compatibility (local paths only).
        selector: keys to descend into the loaded object (e.g. ["state_dict"]).
        ignore_prefixes: drop keys starting with any of these.
        remap_prefixes: ``[old, new]`` pairs renaming key prefixes, applied in order.
    """

    def __init__(
        self,
        restore_path: str,
        restore_path_options: dict[str, Any] | None = None,
        selector: list[str] | None = None,
        ignore_prefixes: list[str] | None = None,
        remap_prefixes: list[list[str]] | None = None,
    ):
        self.restore_path = restore_path
        self.selector = list(selector or [])
        self.ignore_prefixes = list(ignore_prefixes or [])
        self.remap_prefixes = [tuple(p) for p in (remap_prefixes or [])]
        for pair in self.remap_prefixes:
            if len(pair) != 2:
                raise ValueError(f"remap_prefixes entries must be [old, new] pairs, got {list(pair)}")


class RslearnLightningModule(SingleTraceStepFunctions, ModelHooks, keras.Model):
    """Trains ``model`` on ``task`` (rslearn ``RslearnLightningModule``).

    Args:
        model: a SingleTaskModel or MultiTaskModel.
        task: the task (in configs linked from ``data.init_args.task``).
        optimizer: an optimizer factory (default AdamW(lr)).
        scheduler: a scheduler factory (see ``rskeras.train.scheduler``).
        visualize_dir: write test-time visualisations here.
        metrics_file: write test metrics (JSON) here.
        write_test_metrics: write test metrics next to the checkpoint's run directory.
        restore_config: initial weights from a PyTorch state dict (fresh fit only).
        print_parameters: log parameter counts per top-level component.
        print_model: log the model summary.
        lr: deprecated default learning rate (used when ``optimizer`` is not given).
        plateau, plateau_factor, plateau_patience, plateau_min_lr, plateau_cooldown:
            deprecated shorthand for a PlateauScheduler.
    """

    def __init__(
        self,
        model: Any,
        task: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        visualize_dir: str | None = None,
        metrics_file: str | None = None,
        write_test_metrics: bool = False,
        restore_config: RestoreConfig | None = None,
        print_parameters: bool = False,
        print_model: bool = False,
        lr: float = 1e-3,
        plateau: bool = False,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        plateau_min_lr: float = 0.0,
        plateau_cooldown: int = 0,
    ):
        super().__init__()
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.lr = lr
        if scheduler is None and plateau:
            from rskeras.train.scheduler import PlateauScheduler

            scheduler = PlateauScheduler(factor=plateau_factor, patience=plateau_patience, min_lr=plateau_min_lr, cooldown=plateau_cooldown)
        self.scheduler_factory = scheduler
        self.visualize_dir = visualize_dir
        self.metrics_file = metrics_file
        self.write_test_metrics = write_test_metrics
        self.restore_config = restore_config
        self.print_parameters = print_parameters
        self.print_model = print_model
        loss_names = list(model.loss_names())
        self.train_trackers = {"train_loss": keras.metrics.Mean(name="train_loss")}
        self.train_trackers.update({f"train_{k}": keras.metrics.Mean(name=f"train_{k}") for k in loss_names})
        self.eval_trackers = {"loss": keras.metrics.Mean(name="loss")}
        self.eval_trackers.update({k: keras.metrics.Mean(name=k) for k in loss_names})
        self.task_metrics = dict(task.get_metrics()) if task is not None else {}
        self.nonscalar_results: dict[str, Any] = {}
        # The built scheduler (rslearn's ``schedulers["scheduler"]``), set by the trainer.
        self.lr_scheduler = None
        # What the train/test/predict steps run under XLA (``configure_jit``): None, "model"
        # or "encoder" (the model has components that XLA cannot compile, e.g. FasterRCNN).
        self.jit_scope: str | None = None
        self._jit_functions: dict[str, Any] = {}

    # ---- Keras plumbing ---------------------------------------------------------------

    @property
    def metrics(self):
        return list(self.train_trackers.values()) + list(self.eval_trackers.values()) + list(self.task_metrics.values())

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)["outputs"]

    def build_from_batch(self, inputs: dict[str, tf.Tensor]) -> None:
        """Creates every weight by running the model once, eagerly, on a real batch.

        Eager building avoids creating variables inside Keras' symbolic tracing (where
        random initializers cannot draw seeds) and gives every layer concrete shapes.
        """
        self.model(inputs, training=False)
        self.built = True

    def inference_model(self, input_specs: dict[str, tf.TensorSpec], with_output_layer: bool = True) -> keras.Model:
        """Functional model: input dict -> model outputs (-> task output layer)."""
        inputs = {
            key: keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=key) for key, spec in input_specs.items()
        }
        outputs = self.model(inputs, training=False)["outputs"]
        if with_output_layer and self.task is not None:
            outputs = self.task.output_layer()(outputs)
        return keras.Model(inputs, outputs, name="rskeras_inference")

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        factory = self.optimizer_factory
        if factory is None:
            logger.warning("no optimizer configured, using AdamW(lr=%s)", self.lr)
            factory = AdamW(lr=self.lr)
        return factory.build(self)

    def optimizable_variables(self) -> list:
        """Every variable of the model created as trainable, frozen or not (fixed order).

        The optimizer is built over all of them so that fine-tuning callbacks can add
        frozen ones to a parameter group later; those frozen at build time are in no group.
        """
        return created_trainable_variables(self.model)

    def build_optimizer(self) -> None:
        """Builds the compiled optimizer (after callbacks froze what they freeze)."""
        optimizer = self.optimizer
        if optimizer is None or optimizer.built:
            return
        if hasattr(unwrap_optimizer(optimizer), "add_param_group"):
            optimizer.build(self.optimizable_variables())
        else:
            optimizer.build(self.trainable_variables)

    def finish_build(self) -> None:
        # Called by Keras before the first step instead of its symbolic build (ModelHooks):
        # the weights are created eagerly by build_from_batch, and Keras' symbolic build
        # would first reduce a distributed batch across replicas, which fails for dict
        # inputs under MultiWorkerMirroredStrategy. Only the optimizer may need building.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.build_optimizer()

    def trainability_changed(self) -> None:
        """Re-traces the training step after variables were frozen or unfrozen."""
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    # ---- XLA ----------------------------------------------------------------------------

    def configure_jit(self, enabled: bool) -> str | None:
        """Runs the model's forward (and, through the tape, its backward) pass under XLA.

        Only the model is compiled: loss trackers, task metrics (host-side ones such as
        AUROC/mAP run ``tf.py_function``), the optimizer update and replica all-reduces stay
        in the ordinary graph. A model with a layer that declares ``supports_jit = False``
        (FasterRCNN: NMS, samplers) compiles only its encoder when every encoder component
        supports XLA. Returns the scope: None, "model" or "encoder".
        """
        scope = None
        if enabled:
            if _supports_jit(self.model):
                scope = "model"
            elif hasattr(self.model, "encode") and all(_supports_jit(c) for c in getattr(self.model, "encoder", [])):
                scope = "encoder"
            else:
                logger.warning("jit_compile: no part of %s supports XLA; running without it", type(self.model).__name__)
        if scope != self.jit_scope:
            self.jit_scope = scope
            self._jit_functions = {}
            self.train_function = self.test_function = self.predict_function = None
        return scope

    def _jitted(self, name: str, fn):
        if name not in self._jit_functions:
            self._jit_functions[name] = tf.function(fn, jit_compile=True, reduce_retracing=True)
        return self._jit_functions[name]

    def forward(self, inputs, targets=None, training=None) -> dict[str, Any]:
        """``self.model(inputs, targets, training)``, under XLA as ``configure_jit`` chose.

        The model is traced inside ``trainer_step_graph()``, with or without XLA: layers
        with two exact implementations take their training form (a detector's RoIAlign on
        ``crop_and_resize``, Swin's shift as a split, under XLA or on a GPU a nearest
        upsampling as a broadcast, whose gradient XLA compiles); exports keep the portable
        forms, see
        ``rskeras.models.step_graph``."""
        with trainer_step_graph(xla=self.jit_scope == "model"):
            if self.jit_scope == "model":
                fn = self._jitted("model", lambda x, y, training: self.model(x, targets=y, training=training))
                return fn(inputs, targets, bool(training))
            if self.jit_scope == "encoder":
                fn = self._jitted("encoder", lambda x, training: self.model.encode(x, training=training))
                with trainer_step_graph(xla=True):
                    features = fn(inputs, bool(training))
                return self.model.decode(features, inputs, targets=targets, training=training)
            return self.model(inputs, targets=targets, training=training)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads model weights (and the optimizer state when the optimizer is built) from an
        rskeras checkpoint; metric accumulators are never loaded."""
        if str(filepath).endswith(".weights.h5") and not skip_mismatch and not kwargs:
            from rskeras.train.callbacks.checkpointing import load_training_checkpoint

            built = self.optimizer is not None and self.optimizer.built
            load_training_checkpoint(self, str(filepath), with_optimizer=built)
            return
        super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)

    @staticmethod
    def batch_size_of(inputs) -> tf.Tensor:
        first = tf.nest.flatten(inputs)[0]
        return tf.cast(tf.shape(first)[0], tf.float32)

    @staticmethod
    def total_loss(loss_dict: dict[str, tf.Tensor]) -> tf.Tensor:
        if not loss_dict:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(v, tf.float32) for v in loss_dict.values()])

    def train_step(self, data):
        inputs, targets = data[0], data[1]
        weight = self.batch_size_of(inputs)
        # Under tf.distribute the last global batch can leave a replica with no example;
        # its (NaN) mean losses are zeroed and the others share the step.
        nonempty = weight > 0
        replica = tf.distribute.get_replica_context()
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replica is not None and num_replicas > 1:
            active = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(nonempty, tf.float32))
        else:
            active = tf.constant(float(num_replicas))
        with tf.GradientTape() as tape:
            out = self.forward(inputs, targets, training=True)
            loss = tf.where(nonempty, self.total_loss(out["loss_dict"]), 0.0)
            scaled = loss / tf.maximum(active, 1.0)
            if hasattr(self.optimizer, "scale_loss"):
                scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if getattr(unwrap_optimizer(self.optimizer), "expects_reduced_gradients", False) and replica is not None:
            # Sum over replicas here, so that loss-scale checks, clipping and the update
            # see the global gradient (rskeras' TorchAdamW does not all-reduce again).
            if num_replicas > 1:
                present = [i for i, g in enumerate(grads) if g is not None]
                reduced = replica.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
                grads = list(grads)
                for i, g in zip(present, reduced):
                    grads[i] = g
        self.optimizer.apply(grads, variables)
        self.train_trackers["train_loss"].update_state(loss, sample_weight=weight)
        for key, value in out["loss_dict"].items():
            self.train_trackers[f"train_{key}"].update_state(tf.where(nonempty, tf.cast(value, tf.float32), 0.0), sample_weight=weight)
        return self._step_logs(self.train_trackers)

    def test_step(self, data):
        inputs, targets = data[0], data[1]
        out = self.forward(inputs, targets, training=False)
        weight = self.batch_size_of(inputs)
        nonempty = weight > 0
        self.eval_trackers["loss"].update_state(tf.where(nonempty, self.total_loss(out["loss_dict"]), 0.0), sample_weight=weight)
        for key, value in out["loss_dict"].items():
            self.eval_trackers[key].update_state(tf.where(nonempty, tf.cast(value, tf.float32), 0.0), sample_weight=weight)
        for metric in self.task_metrics.values():
            metric.update_state(out["outputs"], targets)
        return self._step_logs(self.eval_trackers)

    @staticmethod
    def _step_logs(trackers) -> dict[str, tf.Tensor]:
        logs = {name: tracker.result() for name, tracker in trackers.items()}
        if in_multi_worker_mode(tf.distribute.get_strategy()):
            # Keras reduces multi-worker step outputs with reduce(MEAN, axis=0), which
            # needs at least one dimension (epoch values are read from the metrics).
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def predict_step(self, data):
        inputs = data[0] if isinstance(data, (tuple, list)) else data
        return self.forward(inputs, training=False)["outputs"]

    def epoch_metric_results(self) -> dict[str, float]:
        """Eval losses and task metrics as logged scalars; non-scalars kept aside."""
        out = {name: float(t.result()) for name, t in self.eval_trackers.items()}
        raw = {name: metric.result() for name, metric in self.task_metrics.items()}
        self.nonscalar_results = {}
        for name, value in flatten_metric_results(raw).items():
            array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if array.ndim == 0:
                out[name] = float(array)
            else:
                self.nonscalar_results[name] = array
        return out

    def epoch_logs(self, logs):
        # Keras asks for these (eagerly) at the end of each training epoch and evaluation.
        if logs and any(str(k).startswith("train_") for k in logs):
            return {name: float(t.result()) for name, t in self.train_trackers.items()}
        return self.epoch_metric_results()

    def parameter_counts(self, include_frozen: bool = False) -> dict[str, int]:
        """Trainable (or, with ``include_frozen``, all) parameter count per top-level component."""

        def count(layer) -> int:
            variables = layer.weights if include_frozen else layer.trainable_weights
            return int(sum(np.prod(v.shape) for v in variables))

        counts = {}
        for attr in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(self.model, attr, []) or []):
                counts[f"{attr}.{i}.{type(layer).__name__}"] = count(layer)
        for task, layers in (getattr(self.model, "decoders", None) or {}).items():
            for i, layer in enumerate(layers):
                counts[f"decoders.{task}.{i}.{type(layer).__name__}"] = count(layer)
        return counts
