"""rskeras.keras_compat: the private Keras internals rskeras relies on still behave as
rskeras expects. A Keras upgrade that changes one of them fails here first."""

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from rskeras import keras_compat as kc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2, name="dense")
        self.norm = keras.layers.BatchNormalization(name="norm")

    def call(self, x, training=None):
        return self.norm(self.dense(x), training=training)


class Tree(keras.layers.Layer):
    """Sub-layers in an attribute, a list and a dict; one layer reachable twice."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = Block(name="head")
        self.items = [Block(name="a"), Block(name="b")]
        self.named = {"c": Block(name="c")}
        self.alias = self.items[0]
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x, training=None):
        for block in [self.head, *self.items, self.named["c"]]:
            x = block(x, training=training)
        return x * self.scale


def built_tree():
    tree = Tree()
    tree(np.zeros((1, 2), np.float32))
    return tree


def test_sublayers_walks_attributes_lists_and_dicts_once():
    tree = built_tree()
    names = [layer.name for layer in kc.sublayers(tree)]
    assert names[0] == tree.name
    assert sorted(names[1:]) == sorted(["head", "a", "b", "c"] + ["dense", "norm"] * 4)
    assert len({id(layer) for layer in kc.sublayers(tree)}) == len(names)
    assert tree not in kc.sublayers(tree, include_self=False)


def test_created_trainable_variables_keep_frozen_ones_and_skip_statistics():
    tree = built_tree()
    tree.items[1].trainable = False
    variables = kc.created_trainable_variables(tree)
    # scale + per block: dense kernel/bias, norm gamma/beta (moving statistics are not trainable)
    assert len(variables) == 1 + 4 * 4 == len({id(v) for v in variables})
    assert not any("moving" in v.path for v in variables)
    assert any(not v.trainable for v in variables)  # frozen ones are kept
    assert len(tree.trainable_weights) == 1 + 3 * 4
    assert kc.created_trainable_variables(tree, recursive=False) == [tree.scale]
    assert [v.path for v in kc.created_trainable_variables(tree)] == [v.path for v in kc.created_trainable_variables(tree)]


class Counting(kc.ModelHooks, keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.finished = 0
        self.epoch_log_calls = 0

    def call(self, x):
        return self.dense(x)

    def finish_build(self):
        self.finished += 1

    def epoch_logs(self, logs):
        self.epoch_log_calls += 1
        return {"answer": 42.0}


def test_model_hooks_replace_symbolic_build_and_epoch_logs():
    x = np.ones((4, 3), np.float32)
    y = np.zeros((4, 1), np.float32)
    model = Counting()
    model.compile(optimizer="sgd", loss="mse")
    model(x)  # built eagerly
    history = model.fit(x, y, epochs=2, verbose=0)
    assert model.finished >= 1
    assert history.history["answer"] == [42.0, 42.0]
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"answer": 42.0}
    # An unbuilt model gets Keras' own symbolic build.
    fresh = Counting()
    fresh.compile(optimizer="sgd", loss="mse")
    fresh.fit(x, y, epochs=1, verbose=0)
    assert fresh.built and fresh.finished == 0


class Linear(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1, kernel_initializer="ones")

    def call(self, x):
        return self.dense(x)


class SingleTrace(kc.SingleTraceStepFunctions, Linear):
    pass


def test_single_trace_step_functions_match_keras_and_trace_one_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12, 1)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # 3 batches per epoch

    def fitted(model_class, steps_per_execution=1):
        keras.utils.set_random_seed(0)
        model = model_class()
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
        history = model.fit(data, epochs=2, verbose=0)
        return model, history.history["loss"], model.evaluate(data, verbose=0)

    model, losses, evaluated = fitted(SingleTrace)
    _, plain_losses, plain_evaluated = fitted(Linear)
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-6)
    np.testing.assert_allclose(evaluated, plain_evaluated, rtol=1e-6)
    # One traced function per step kind, with the step's ops in it (Keras nests a
    # tf.function of the step inside the one of the iterator loop).
    for function, updates in ((model.train_function, True), (model.test_function, False)):
        batches = iter(model.distribute_strategy.experimental_distribute_dataset(data))
        types = {op.type for op in function.on_iterator.get_concrete_function(batches).graph.get_operations()}
        assert not types & {"PartitionedCall", "StatefulPartitionedCall"}, types
        assert "MatMul" in types
        assert any(t.startswith("ResourceApply") or t == "AssignSubVariableOp" for t in types) == updates, types
        # The step's ops were traced with library frames left out of their tracebacks.
        matmul = next(op for op in function.on_iterator.get_concrete_function(batches).graph.get_operations() if op.type == "MatMul")
        files = [frame.filename for frame in matmul.traceback]
        assert __file__ in files, files
        assert not [f for f in files if f"{os.sep}keras{os.sep}" in f or f"{os.sep}tensorflow{os.sep}" in f], files
    # Several batches per execution: Keras' own functions, the same training.
    _, grouped_losses, _ = fitted(SingleTrace, steps_per_execution=2)
    np.testing.assert_allclose(grouped_losses, plain_losses, rtol=1e-6)
    # A Python iterator of batches (not tf.data) gives one batch per call.
    batches = iter([(x[:4], y[:4]), (x[4:8], y[4:8])])
    assert set(model.test_function(batches)) >= {"loss"}
    assert set(model.test_function(batches)) >= {"loss"}
    with pytest.raises(StopIteration):
        model.test_function(batches)


def test_step_functions_keep_only_the_signature_of_their_python_definitions():
    """After a step function's first call its concrete function keeps a Python FunctionDef
    of the signature and attributes only (TensorFlow kept two whole decoded copies); the
    runtime's definition is whole, and later calls and errors inside still work."""
    from tensorflow.python.eager import context

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = SingleTrace()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
    concretes = list(model.train_function.on_iterator._list_all_concrete_functions())
    assert concretes
    kept = [c._inference_function._cached_definition for c in concretes]
    kept = [k for k in kept if k is not None]  # those called (a trace Keras replaced may not be)
    assert kept and all(not k.node_def and len(k.signature.input_arg) > 0 for k in kept)
    assert all(context.context().get_function_def(c._inference_function.name).node_def for c in concretes)
    assert kc.release_function_definitions(model.train_function.on_iterator) == 0  # already released
    # Later calls, with batches of other sizes.
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(3), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    kept = [c._inference_function._cached_definition for c in model.train_function.on_iterator._list_all_concrete_functions()]
    assert any(k is not None for k in kept) and all(k is None or not k.node_def for k in kept)
    # A runtime error inside the released function still names its op.
    checked = kc.single_trace_step_function(model, lambda data: {"loss": tf.debugging.assert_all_finite(data, "not finite")})
    checked(iter(tf.data.Dataset.from_tensors(tf.constant([1.0]))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not finite"):
        checked(iter(tf.data.Dataset.from_tensors(tf.constant([np.nan], tf.float32))))


def test_library_frames_filtered_leaves_out_tensorflow_keras_and_stdlib_frames():
    def frames(op):
        return [frame.filename for frame in op.traceback]

    def library(files):
        return [f for f in files if f"{os.sep}keras{os.sep}" in f or f"{os.sep}tensorflow{os.sep}" in f or os.path.basename(f) == "contextlib.py"]

    dense = keras.layers.Dense(2, name="dense")
    dense.build((1, 3))

    @tf.function
    def f(x):
        outside = tf.abs(x, name="outside")
        with kc.library_frames_filtered():
            inside = dense(tf.square(x, name="inside")[None])
        return outside, inside

    graph = f.get_concrete_function(tf.TensorSpec([3])).graph
    inside, outside = graph.get_operation_by_name("inside"), graph.get_operation_by_name("outside")
    assert __file__ in frames(inside) and not library(frames(inside)), frames(inside)
    # The innermost frame is still the line that made the op (TensorFlow skips the
    # innermost frames of op creation after filtering: framework/ops.py's, kept).
    with open(__file__) as source:
        line = next(i for i, text in enumerate(source, 1) if 'tf.square(x, name="inside")' in text)
    innermost = inside.traceback[-1]
    assert (innermost.filename, innermost.lineno) == (__file__, line), innermost
    assert library(frames(outside)), frames(outside)  # the default: every frame
    matmul = next(op for op in graph.get_operations() if op.type == "MatMul")  # inside Keras' layer
    assert __file__ in frames(matmul) and not library(frames(matmul)), frames(matmul)


def test_weights_file_leaves_out_skipped_objects(tmp_path):
    def model():
        inputs = keras.Input((3,))
        m = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))
        m.compile(optimizer="adam", loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    a, b = model(), model()
    path = str(tmp_path / "a.weights.h5")
    kc.save_weights_file(a, path, [a.optimizer])
    with h5py.File(path) as f:
        assert "optimizer" not in f
    kc.load_weights_file(b, path, [b.optimizer])
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    kc.save_weights_file(a, path)
    with h5py.File(path) as f:
        assert "optimizer" in f
    inputs = keras.Input((3,))
    other = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError):
        kc.load_weights_file(other, path, [])


def test_optimizer_variable_index_and_tracking():
    v1, v2, v3 = (keras.Variable(np.zeros(2, np.float32)) for _ in range(3))
    optimizer = keras.optimizers.SGD()
    assert not kc.optimizer_tracks(optimizer, v1)
    optimizer.build([v1, v2])
    assert [kc.optimizer_variable_index(optimizer, v) for v in (v1, v2)] == [0, 1]
    assert kc.optimizer_tracks(optimizer, v2) and not kc.optimizer_tracks(optimizer, v3)


def test_clip_gradients_hook_is_where_keras_clips():
    class Halving(kc.ClipGradientsHook, keras.optimizers.SGD):
        def clip_gradients(self, grads):
            return [g * 0.5 for g in grads]

    v = keras.Variable(np.zeros(2, np.float32))
    optimizer = Halving(learning_rate=1.0)
    optimizer.apply([tf.constant([1.0, 2.0])], [v])
    np.testing.assert_allclose(v.numpy(), [-0.5, -1.0])
    plain = kc.ClipGradientsHook.clip_gradients  # the default is Keras' own clipping
    clipped = type("C", (kc.ClipGradientsHook, keras.optimizers.SGD), {})(learning_rate=1.0, clipvalue=0.25)
    assert plain is type(clipped).clip_gradients
    w = keras.Variable(np.zeros(2, np.float32))
    clipped.apply([tf.constant([1.0, -2.0])], [w])
    np.testing.assert_allclose(w.numpy(), [-0.25, 0.25])


def test_in_multi_worker_mode():
    assert not kc.in_multi_worker_mode(tf.distribute.get_strategy())
    assert not kc.in_multi_worker_mode(tf.distribute.OneDeviceStrategy("/cpu:0"))
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert callable(CollectiveAllReduceExtended._in_multi_worker_mode)


def test_tensorboard_without_learning_rate(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    plain = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "plain"))
    plain.set_model(model)
    assert plain._collect_learning_rate({})["learning_rate"] == 0.5  # what Keras would log
    ours = kc.TensorBoardWithoutLearningRate(log_dir=str(tmp_path / "ours"))
    ours.set_model(model)
    assert ours._collect_learning_rate({}) == {}


PRE_REDUCED_SCRIPT = """
import json
import keras
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from rskeras.keras_compat import PreReducedGradients

class Plain(keras.optimizers.Optimizer):
    def update_step(self, gradient, variable, learning_rate):
        self.assign_sub(variable, gradient * learning_rate)

class Reduced(PreReducedGradients, Plain):
    pass

out = {}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for cls in (Plain, Reduced):
    with strategy.scope():
        v = keras.Variable(0.0)
        opt = cls(learning_rate=1.0)
        opt.build([v])
    strategy.run(tf.function(lambda: opt.apply([tf.constant(1.0)], [v])))
    out[cls.__name__] = float(v.numpy())
print(json.dumps(out))
"""


def test_pre_reduced_gradients_are_not_summed_again():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", PRE_REDUCED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Keras sums the two replicas' gradients of 1; with the mixin each replica applies its own.
    assert result == {"Plain": -2.0, "Reduced": -1.0}


def test_is_keras_base_class_stops_at_layers_and_models_only():
    from rskeras.keras_compat import is_keras_base_class

    assert is_keras_base_class(keras.layers.Layer) and is_keras_base_class(keras.Model)
    assert not is_keras_base_class(keras.callbacks.EarlyStopping)  # ordinary arguments
    assert not is_keras_base_class(keras.layers.Dense)
