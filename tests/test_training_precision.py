"""precision: bf16-mixed computes in bfloat16 but keeps losses, outputs and metrics in
float32, for every task kind (configs/ on the tiny sample dataset)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rskeras import lightning_cli as cli
from rskeras.run import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# multi_task covers the classification and segmentation heads (test time).
CONFIGS = ["regression", "per_pixel_regression", "detection", "multi_task"]


def build(name, dataset, root, precision):
    os.environ["DATASET_PATH"] = dataset
    path = os.path.join(ROOT, "configs", f"{name}.yaml")
    overrides = [("data.init_args.batch_size", "4"), ("trainer.default_root_dir", str(root)), ("trainer.logger", "false"), ("seed_everything", "1"), ("trainer.precision", precision)]
    return build_run(cli.load_config([path], overrides), "train")


def floats(structure):
    return [t for t in tf.nest.flatten(structure) if t.dtype.is_floating]


@pytest.mark.parametrize("name", CONFIGS)
def test_bf16_mixed_keeps_losses_outputs_and_metrics_in_float32(name, sample_dataset, tmp_path):
    try:
        reference = build(name, sample_dataset, tmp_path / "fp32", "32-true")
        inputs, targets = next(iter(reference.data.tf_dataset("val", shuffle=False)))
        want = reference.lm.model(inputs, targets=targets, training=False)
        run = build(name, sample_dataset, tmp_path / "bf16", "bf16-mixed")
        lm = run.lm
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
        assert {v.dtype for v in lm.model.weights} == {"float32"}
        lm.model.set_weights(reference.lm.model.get_weights())
        got = lm.model(inputs, targets=targets, training=False)
        assert sorted(got["loss_dict"]) == sorted(want["loss_dict"])
        for key, value in got["loss_dict"].items():
            assert value.dtype == tf.float32, key
            expected = float(want["loss_dict"][key])
            # bfloat16 has 8 bits of mantissa: ~1e-2 relative error through a small model
            assert float(value) == pytest.approx(expected, rel=5e-2, abs=2e-3), key
        outputs = lm.predict_step((inputs,))
        assert floats(outputs) and all(t.dtype == tf.float32 for t in floats(outputs))
        lm.reset_metrics()
        lm.test_step((inputs, targets))
        results = lm.epoch_metric_results()
        assert results and all(np.isfinite(v) for v in results.values())
        assert {np.asarray(m.result() if not isinstance(m.result(), dict) else 0).dtype.kind for m in lm.task_metrics.values()} <= {"f", "i"}
    finally:
        keras.mixed_precision.set_global_policy("float32")
