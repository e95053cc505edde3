"""Run as a script: MirroredStrategy over 2 logical CPU devices vs one replica.

Both train the same tiny classifier from the same weights for 2 steps of the same
global batches (gradient clipping active, so clipping must see the all-reduced
gradient), in float32 and in mixed_float16 (dynamic loss scaling), and print JSON per
precision: the max weight difference, the largest update, both epoch train losses, the
loss scales and the number of replicas. Logical devices must be configured before any TF op, hence a
separate process.
"""

import json
import os
import sys

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from rskeras.config.instantiate import instantiate  # noqa: E402
from tests.training_scripts.tiny_config import CONFIG  # noqa: E402

GLOBAL_BATCH = 8
keras.utils.set_random_seed(0)
config = yaml.safe_load(CONFIG.replace("DATASET", "unused"))
rng = np.random.default_rng(0)
images = rng.uniform(0, 1, size=(2 * GLOBAL_BATCH, 1, 16, 16, 12)).astype(np.float32)
classes = rng.integers(0, 4, size=(2 * GLOBAL_BATCH,)).astype(np.int32)
valid = np.ones(2 * GLOBAL_BATCH, np.float32)
valid[3] = 0.0


def dataset():
    ds = tf.data.Dataset.from_tensor_slices(({"image": images}, {"class": classes, "valid": valid}))
    return ds.batch(GLOBAL_BATCH)


def train(strategy, weights=None):
    task = instantiate(config["data"]["init_args"]["task"], "data.init_args.task")
    with strategy.scope():
        lm = instantiate(config["model"], "model", extra={"task": task})
        lm.build_from_batch({"image": images[:2]})
        if weights is not None:
            lm.model.set_weights(weights)
        start = lm.model.get_weights()
        optimizer = lm.make_optimizer()
        optimizer.clip_grad_norm = 0.05
        lm.compile(optimizer=optimizer, jit_compile=False)
        lm.build_optimizer()
    history = lm.fit(dataset(), epochs=1, verbose=0, shuffle=False)
    scale = float(lm.optimizer.dynamic_scale.numpy()) if hasattr(lm.optimizer, "dynamic_scale") else None
    return start, lm.model.get_weights(), float(history.history["train_loss"][0]), strategy.num_replicas_in_sync, scale


results = {}
for policy in ("float32", "mixed_float16"):
    keras.mixed_precision.set_dtype_policy(policy)
    start, single, loss_single, _, scale_single = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    _, mirrored, loss_mirrored, replicas, scale_mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), weights=start)
    results[policy] = {
        "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored)),
        "max_update": max(float(np.abs(a - b).max()) for a, b in zip(start, single)),
        "loss_single": loss_single,
        "loss_mirrored": loss_mirrored,
        "loss_scale_single": scale_single,
        "loss_scale_mirrored": scale_mirrored,
        "replicas": replicas,
    }
print(json.dumps(results))
