"""The exportable model: raw bands -> pre-processing -> model -> task outputs.

``Exportable`` gathers what every export format needs from a trained
``RslearnLightningModule`` and its data module: the raw inputs (name, bands, dtype,
timesteps), the planned pre-processing, the task's output layer and a JSON description
(written beside every export as ``rskeras_export.json`` so that clients such as
``tools/predict_tflite.py`` know band order, output meanings and class names).

``Exportable.keras_model(...)`` builds a functional ``keras.Model``: dict of raw inputs ->
``Preprocessing`` -> the rskeras model -> ``task.output_layer()`` -> dict of named
outputs (``raw_outputs=True``: the predictor's outputs, flattened with ``_``-joined names).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.export.description import EXPORT_FORMAT_VERSION, describe_task
from rskeras.export.errors import ExportError
from rskeras.export.preprocessing import PlannedTransform, Preprocessing, RawInput, plan_transforms

if TYPE_CHECKING:
    from rskeras.run import Run
    from rskeras.train.data_module import RslearnDataModule

logger = logging.getLogger(__name__)


def flatten_outputs(outputs: Any, prefix: str = "") -> dict[str, Any]:
    """Nested predictor outputs -> flat ``{name: tensor}`` (names joined with ``_``;
    a bare tensor is named ``outputs``)."""
    if isinstance(outputs, dict):
        flat = {}
        for key, value in outputs.items():
            flat.update(flatten_outputs(value, f"{prefix}{key}_"))
        return flat
    if isinstance(outputs, (list, tuple)):
        flat = {}
        for i, value in enumerate(outputs):
            flat.update(flatten_outputs(value, f"{prefix}{i}_"))
        return flat
    return {prefix[:-1] if prefix else "outputs": outputs}


@dataclasses.dataclass
class Exportable:
    """A trained model with everything needed to export it.

    Args:
        model: the rskeras model layer (SingleTaskModel / MultiTaskModel), built.
        task: the task (its ``output_layer()`` post-processes exported outputs).
        raw_inputs: the raw inputs, in signature order.
        planned: the planned pre-processing (``plan_transforms``).
        name: model name (e.g. the config file stem).
        default_size: (height, width) used when a fixed size is needed and none is given.
    """

    model: Any
    task: Any
    raw_inputs: list[RawInput]
    planned: list[PlannedTransform]
    name: str = "model"
    default_size: tuple[int, int] | None = None

    def input_specs(self, height: int | None = None, width: int | None = None, batch: int | None = None) -> dict[str, tf.TensorSpec]:
        return {r.name: r.spec(height, width, batch) for r in self.raw_inputs}

    def keras_model(
        self, height: int | None = None, width: int | None = None, batch: int | None = None, raw_outputs: bool = False
    ) -> keras.Model:
        """Functional model: raw input dict -> named outputs (see module docstring)."""
        inputs = {
            r.name: keras.Input(shape=tuple(r.shape(height, width)[1:]), batch_size=batch, dtype=r.dtype, name=r.name)
            for r in self.raw_inputs
        }
        model_inputs = Preprocessing(self.raw_inputs, self.planned, name="preprocessing")(inputs)
        outputs = self.model(model_inputs, training=False)["outputs"]
        if raw_outputs:
            outputs = flatten_outputs(outputs)
        else:
            outputs = self.task.output_layer()(outputs)
        return keras.Model(inputs, outputs, name=f"{self.name}_raw_outputs" if raw_outputs else self.name)

    def pipeline_inputs(self, example: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
        """The model-input dict of one raw example (``[T, H, W, C]`` arrays) as the data
        pipeline computes it: the per-example transforms, eagerly (batched to 1)."""
        d = {r.name: tf.convert_to_tensor(example[r.name], tf.as_dtype(r.dtype)) for r in self.raw_inputs}
        for step in self.planned:
            if step.action == "apply":
                d, _ = step.transform(dict(d), {})
        return {k: tf.expand_dims(v, 0) for k, v in d.items() if isinstance(v, tf.Tensor)}

    def pipeline_outputs(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named outputs of the Keras model on the pipeline's inputs for one raw example
        (the parity reference)."""
        outputs = self.model(self.pipeline_inputs(example), training=False)["outputs"]
        return {k: np.asarray(v) for k, v in self.task.output_layer()(outputs).items()}

    def description(self) -> dict[str, Any]:
        """The ``rskeras_export.json`` content (without format-specific fields)."""
        return {
            "format_version": EXPORT_FORMAT_VERSION,
            "name": self.name,
            "inputs": [r.to_json() for r in self.raw_inputs],
            "preprocessing": [p.describe() for p in self.planned],
            "task": describe_task(self.task),
        }


def raw_inputs_of(data: RslearnDataModule, stage: str = "predict") -> list[RawInput]:
    """The raw inputs of an exported model: the passthrough raster DataInputs of ``stage``
    (what the pipeline copies into the model-input dict), with their timestep count read
    from the first example."""
    md = data.model_dataset(stage)
    raws = []
    for key, di in md.inputs.items():
        if not di.passthrough:
            continue
        if di.data_type != "raster":
            raise ExportError(f"data.init_args.inputs.{key}: passthrough vector inputs cannot be exported (only raster inputs)")
        dtype = "int32" if np.dtype(di.numpy_dtype()) == np.int32 else "float32"
        raws.append(RawInput(key, tuple(md.bands[key]), dtype, 1))
    if not raws:
        raise ExportError(f"data.init_args.inputs: no passthrough raster input in the {stage} split; nothing for an exported model to take")
    from rskeras.export.examples import raw_examples

    first = next(iter(raw_examples(data, stage, raws, limit=1)))
    return [dataclasses.replace(r, num_timesteps=int(first[r.name].shape[0])) for r in raws]


def exportable_from_run(run: Run, stage: str = "predict", name: str | None = None, where: str | None = None) -> Exportable:
    """The ``Exportable`` of a ``rskeras.run.Run`` (model built, weights loaded).

    Args:
        run: the Run.
        stage: the split whose inputs and transforms define the export (default predict).
        name: model name.
        where: config key of the split's transforms, for error messages.
    """
    data = run.data
    md = data.model_dataset(stage)
    raws = raw_inputs_of(data, stage)
    planned = plan_transforms(md.split.transforms, where or f"data.init_args.{stage}_config.transforms")
    crop = md.split.get_crop_size()
    default_size = (crop[1], crop[0]) if crop else None
    if default_size is None:
        from rskeras.export.examples import raw_examples

        first = next(iter(raw_examples(data, stage, raws, limit=1)))
        shape = first[raws[0].name].shape
        default_size = (int(shape[1]), int(shape[2]))
    exportable = Exportable(run.lm.model, run.lm.task, raws, planned, name or "model", default_size)
    missing = sorted(set(run.input_specs) - set(_model_input_keys(exportable)))
    if missing:
        raise ExportError(f"the model takes inputs {missing} that the exported pre-processing does not produce from {[r.name for r in raws]}")
    return exportable


def _model_input_keys(exportable: Exportable) -> list[str]:
    h, w = exportable.default_size or (32, 32)
    layer = Preprocessing(exportable.raw_inputs, exportable.planned)
    zeros = {r.name: tf.zeros(r.shape(h, w, 1), r.dtype) for r in exportable.raw_inputs}
    return list(layer(zeros))
