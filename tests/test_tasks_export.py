"""Task export layers inside a functional keras.Model (the export path), their config
round trip, and visualization PNG writing."""

import numpy as np
import keras
import tensorflow as tf

from rskeras.train.tasks.classification import ClassificationTask
from rskeras.train.tasks.detection import DetectionTask
from rskeras.train.tasks.embedding import EmbeddingTask
from rskeras.train.tasks.multi_task import MultiTask, MultiTaskOutput
from rskeras.train.tasks.per_pixel_regression import PerPixelRegressionTask
from rskeras.train.tasks.regression import RegressionTask
from rskeras.train.tasks.segmentation import SegmentationTask
from rskeras.train.tasks.task import save_visualizations


def functional(layer, inputs):
    model = keras.Model(inputs, layer(inputs))
    return model


def test_single_task_export_layers_in_functional_model():
    cases = [
        (ClassificationTask(property_name="c", classes=["a", "b", "c"]), keras.Input((3,)), {"probabilities": (None, 3), "class_ids": (None,)}),
        (RegressionTask(property_name="v", scale_factor=0.5), keras.Input(()), {"value": (None,)}),
        (PerPixelRegressionTask(scale_factor=2.0), keras.Input((8, 8)), {"values": (None, 8, 8)}),
        (SegmentationTask(num_classes=4, prob_scales=[1, 2, 1, 1]), keras.Input((8, 8, 4)), {"class_ids": (None, 8, 8), "probabilities": (None, 8, 8, 4)}),
        (SegmentationTask(num_classes=4, output_class_idx=2), keras.Input((8, 8, 4)), {"class_ids": (None, 8, 8), "probabilities": (None, 8, 8, 1)}),
        (EmbeddingTask(), keras.Input((4, 4, 16)), {"embeddings": (None, 4, 4, 16)}),
    ]
    for task, inputs, shapes in cases:
        model = functional(task.output_layer(), inputs)
        assert {k: tuple(v.shape) for k, v in model.output.items()} == shapes, type(task).__name__
    det_inputs = {
        "boxes": keras.Input((100, 4), name="boxes"),
        "scores": keras.Input((100,), name="scores"),
        "labels": keras.Input((100,), dtype="int32", name="labels"),
        "num_detections": keras.Input((), dtype="int32", name="num_detections"),
    }
    model = functional(DetectionTask(property_name="c", classes=["bg", "a"]).output_layer(), det_inputs)
    assert tuple(model.output["boxes"].shape) == (None, 100, 4)


def test_multi_task_export_names_and_config():
    task = MultiTask(
        {"seg": SegmentationTask(num_classes=2), "cls": ClassificationTask(property_name="c", classes=["a", "b"])},
        {"seg": {"s": "targets"}, "cls": {"c": "targets"}},
    )
    inputs = {"seg": keras.Input((4, 4, 2), name="seg"), "cls": keras.Input((2,), name="cls")}
    layer = task.output_layer()
    model = functional(layer, inputs)
    assert sorted(model.output) == ["cls_class_ids", "cls_probabilities", "seg_class_ids", "seg_probabilities"]
    clone = MultiTaskOutput.from_config(layer.get_config())
    probs = np.array([[0.3, 0.7]], np.float32)
    out = clone({"cls": tf.constant(probs)})
    np.testing.assert_array_equal(out["cls_class_ids"].numpy(), [1])


def test_save_visualizations(tmp_path):
    images = {"gt": np.zeros((4, 5, 3), np.uint8), "pred": np.full((4, 5), 200, np.uint8)}
    paths = save_visualizations(images, str(tmp_path), "win_0_0")
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["win_0_0_gt.png", "win_0_0_pred.png"]
    decoded = tf.io.decode_png(tf.io.read_file(paths[1])).numpy()
    assert decoded.shape == (4, 5, 1) and decoded[0, 0, 0] == 200


def test_building_tasks_creates_no_tf_state():
    import subprocess
    import sys

    from conftest import ROOT

    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "import tensorflow as tf\n"
        "from tensorflow.python.eager import context\n"
        "from rskeras.train.tasks.classification import ClassificationTask\n"
        "from rskeras.train.tasks.segmentation import SegmentationTask\n"
        "from rskeras.train.tasks.detection import DetectionTask\n"
        "ClassificationTask(property_name='c', classes=['a', 'b'], enable_f1_metric=True, enable_auroc=True)\n"
        "SegmentationTask(num_classes=3, enable_miou_metric=True, enable_f1_metric=True)\n"
        "DetectionTask(property_name='c', classes=['bg', 'a'], enable_f1_metric=True)\n"
        "assert not context.context()._initialized, 'TF runtime initialized'\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "print('OK')\n"
    ) % str(ROOT)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "OK" in proc.stdout, proc.stderr[-2000:]
