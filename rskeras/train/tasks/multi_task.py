"""MultiTask: several tasks trained together (one decoder per task in MultiTaskModel)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.task import Task


def static_dataset_source(metadata: dict[str, Any]) -> str | None:
    """The dataset source when it is known while tracing (a Python string or a constant
    tensor), else None. "" means None (rskeras' encoding of rslearn's None)."""
    source = metadata.get("dataset_source") if isinstance(metadata, dict) else getattr(metadata, "dataset_source", None)
    if source is None:
        return None
    if isinstance(source, (str, bytes)):
        value = source
    else:
        value = tf.get_static_value(source) if tf.is_tensor(source) else source
        if value is None:
            return None
    value = value.decode() if isinstance(value, bytes) else str(value)
    return value or None


class MultiTask(Task):
    """Wraps named tasks; each sees its own raw inputs through ``input_mapping``.

    Args:
        tasks: task name -> Task.
        input_mapping: task name -> {raw input key: key seen by that task} (typically
            ``{"<layer input>": "targets"}``). Missing raw keys are skipped; unmapped
            inputs are invisible to the task.

    ``process_inputs`` returns nested dicts ``({task: inputs}, {task: targets})``, for
    every task, or only for the task named by ``metadata["dataset_source"]`` when that is
    known while tracing (a Python string or constant). A dataset source carried as a
    runtime tensor cannot change the structure of a ``tf.data`` element, so then all
    tasks are processed: build one pipeline per dataset source to select tasks.

    Metrics are renamed ``<task>/<metric>`` (dict results get ``<task>/<key>`` keys);
    a metric skips batches whose outputs or targets lack its task. Export outputs are
    named ``<task>_<output>`` (a ``/`` is not a valid SavedModel/TFLite output name).
    """

    def __init__(self, tasks: dict[str, Task], input_mapping: dict[str, dict[str, str]] | None = None):
        if not tasks:
            raise ValueError("MultiTask: tasks must name at least one task")
        self.tasks = dict(tasks)
        self.input_mapping = {name: dict(m) for name, m in (input_mapping or {}).items()}
        unknown = set(self.input_mapping) - set(self.tasks)
        if unknown:
            raise ValueError(f"MultiTask: input_mapping names unknown tasks {sorted(unknown)} (tasks: {sorted(self.tasks)})")

    def selected_tasks(self, metadata: dict[str, Any]) -> list[str]:
        source = static_dataset_source(metadata)
        if source is None:
            return list(self.tasks)
        if source not in self.tasks:
            raise KeyError(f"MultiTask: dataset_source {source!r} is not a task (tasks: {sorted(self.tasks)})")
        return [source]

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        input_dict: dict[str, Any] = {}
        target_dict: dict[str, Any] = {}
        for name in self.selected_tasks(metadata):
            mapping = self.input_mapping.get(name, {})
            task_inputs = {dst: raw_inputs[src] for src, dst in mapping.items() if src in raw_inputs}
            try:
                input_dict[name], target_dict[name] = self.tasks[name].process_inputs(task_inputs, metadata, load_targets)
            except KeyError as e:
                raise KeyError(f"MultiTask task {name!r}: {e.args[0] if e.args else e} (input_mapping: {mapping})") from e
        return input_dict, target_dict

    def vector_property_names(self) -> list[str]:
        names: list[str] = []
        for task in self.tasks.values():
            for n in task.vector_property_names():
                if n not in names:
                    names.append(n)
        return names

    def target_padding_values(self) -> dict[str, Any]:
        return {name: task.target_padding_values() for name, task in self.tasks.items() if task.target_padding_values()}

    def process_output(self, raw_output, metadata: SampleMetadata) -> dict[str, Any]:
        """``{task: one example's output}`` -> ``{task: processed}`` for the tasks present."""
        return {
            name: task.process_output(raw_output[name], metadata) for name, task in self.tasks.items() if name in raw_output
        }

    def output_layer(self) -> keras.layers.Layer:
        return MultiTaskOutput({name: task.output_layer() for name, task in self.tasks.items()})

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {"kind": "multi_task", "tasks": {name: task.export_description(f"{prefix}{name}_") for name, task in self.tasks.items()}}

    def visualize(self, input_dict, target_dict, output):
        images = {}
        for name, task in self.tasks.items():
            task_targets = target_dict[name] if target_dict else None
            for label, image in task.visualize(input_dict, task_targets, output[name]).items():
                images[f"{name}_{label}"] = image
        return images

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        metrics = {}
        for name, task in self.tasks.items():
            for metric_name, metric in task.get_metrics().items():
                full = f"{name}/{metric_name}"
                metrics[full] = MultiTaskMetric(name, metric, name=full)
        return metrics


@keras.saving.register_keras_serializable(package="rskeras")
class MultiTaskOutput(keras.layers.Layer):
    """Export post-processing of MultiTaskModel outputs ``{task: outputs}``: applies each
    task's output layer and names the results ``<task>_<output>``.

    Args:
        layers: task name -> that task's output layer.
    """

    def __init__(self, layers: dict[str, keras.layers.Layer], **kwargs):
        super().__init__(**kwargs)
        self.task_layers = dict(layers)

    def build(self, input_shape):
        for name, layer in self.task_layers.items():
            if isinstance(input_shape, dict) and name in input_shape and not layer.built:
                layer.build(input_shape[name])
        self.built = True

    def call(self, outputs):
        named = {}
        for name, layer in self.task_layers.items():
            if name not in outputs:
                continue
            for key, value in layer(outputs[name]).items():
                named[f"{name}_{key}"] = value
        return named

    def get_config(self):
        return {
            **super().get_config(),
            "layers": {name: keras.saving.serialize_keras_object(layer) for name, layer in self.task_layers.items()},
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = {name: keras.saving.deserialize_keras_object(c) for name, c in config["layers"].items()}
        return cls(**config)


class MultiTaskMetric(keras.metrics.Metric):
    """One sub-task metric fed with ``outputs[task]`` / ``targets[task]``; a batch
    lacking the task (multi-dataset training) is skipped. Dict results get ``<task>/``
    key prefixes.

    Args:
        task_name: the task's name.
        metric: the sub-task metric.
    """

    def __init__(self, task_name: str, metric: keras.metrics.Metric, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{task_name}/{metric.name}", **kwargs)
        self.task_name = task_name
        self.metric = metric
        self.non_scalar = getattr(metric, "non_scalar", False)
        self.host_side = getattr(metric, "host_side", False)

    def update_state(self, outputs, targets, sample_weight=None):
        if not isinstance(outputs, dict) or not isinstance(targets, dict):
            return
        if self.task_name not in outputs or self.task_name not in targets:
            return
        self.metric.update_state(outputs[self.task_name], targets[self.task_name])

    def result(self):
        value = self.metric.result()
        if isinstance(value, dict):
            return {f"{self.task_name}/{k}": v for k, v in value.items()}
        return value

    def reset_state(self):
        self.metric.reset_state()
