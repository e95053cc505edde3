"""Every use of a private Keras (or TensorFlow) internal, behind a named function or class.

rskeras needs a few things Keras 3.15 offers no public API for. Each lives here, and
tests/test_keras_compat.py pins the behaviour rskeras relies on, so that a Keras upgrade
breaks in this one module and its tests rather than across the package:

* weights files with objects left out (``keras.src.saving.saving_lib``):
  :func:`save_weights_file`, :func:`load_weights_file`;
* a layer's sub-layers and the variables created trainable, whatever their current flag
  (``Layer._flatten_layers``, ``Layer._trainable_variables``): :func:`sublayers`,
  :func:`created_trainable_variables`;
* keeping a layer's call arguments in their own dtypes (``Layer._convert_input_args``):
  :func:`keep_input_dtypes`;
* multi-worker mode of a strategy (``extended._in_multi_worker_mode``):
  :func:`in_multi_worker_mode`;
* the model hooks ``Model._maybe_symbolic_build`` and
  ``Model._get_metrics_result_or_logs``, routed to named methods by :class:`ModelHooks`;
* Keras' per-replica output reduction (``keras.src.backend.tensorflow.trainer
  .reduce_per_replica``), for train and test functions traced as one ``tf.function``:
  :class:`SingleTraceStepFunctions`;
* optimizer internals (``_get_variable_index``, ``_var_key``,
  ``_trainable_variables_indices``, ``_clip_gradients``, ``_backend_update_step``,
  ``_distributed_tf_update_step`` and TF's ``maybe_merge_call``):
  :func:`optimizer_variable_index`, :func:`optimizer_tracks`, :class:`ClipGradientsHook`,
  :class:`PreReducedGradients`, :class:`StepWideUpdate`;
* Keras' TensorBoard callback without its learning-rate entry
  (``TensorBoard._collect_learning_rate``): :class:`TensorBoardWithoutLearningRate`;
* Grappler's memory optimizer, which ``tf.config.optimizer`` has no switch for (the eager
  context's ``function_call_options``): :func:`set_memory_optimizer`,
  :func:`memory_optimizer_enabled`;
* the creation tracebacks TensorFlow records for every op it traces
  (``tensorflow.python.util.tf_stack.StackTraceFilter``): :func:`library_frames_filtered`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Sequence

import keras
import tensorflow as tf
from keras.src.saving import saving_lib
from tensorflow.python.util import tf_stack

# ---- weights files ------------------------------------------------------------------------


def save_weights_file(model: keras.Model, path: str, objects_to_skip: Sequence[Any] = ()) -> None:
    """Writes ``model``'s ``.weights.h5`` file (its optimizer's state included when the
    optimizer is built), leaving out the variables of ``objects_to_skip`` (layers, metrics,
    the optimizer). Keras' public ``save_weights`` cannot leave anything out.

    Keras' H5 writer converts each variable with ``np.array(variable)``, which NumPy 2
    answers with a DeprecationWarning per variable (Keras' ``__array__`` takes no ``copy``
    argument); that one warning is silenced here, where it is Keras' and harmless."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning)
        saving_lib.save_weights_only(model, path, objects_to_skip=list(objects_to_skip))


def load_weights_file(model: keras.Model, path: str, objects_to_skip: Sequence[Any] = ()) -> None:
    """Reads a ``.weights.h5`` file written by :func:`save_weights_file` with the same
    ``objects_to_skip``; a file that does not fit raises ``ValueError``."""
    saving_lib.load_weights_only(model, path, objects_to_skip=list(objects_to_skip))


# ---- layers and variables -------------------------------------------------------------------

# Keras base classes whose ``**kwargs`` are internals (input_shape, autocast, ...), by the
# private modules that define them; other Keras classes (callbacks, optimizers) take
# ordinary arguments.
_KERAS_BASE_MODULES = ("keras.src.layers.layer", "keras.src.models.", "keras.src.ops.operation", "keras.src.trainers.", "keras.src.backend.", "tensorflow.")


def is_keras_base_class(klass: type) -> bool:
    """Whether ``klass`` is one of Keras' (or TensorFlow's) base classes of layers and
    models, where the config resolver stops reading constructor arguments."""
    return klass.__module__.startswith(_KERAS_BASE_MODULES)



def sublayers(layer: keras.layers.Layer, include_self: bool = True) -> list[keras.layers.Layer]:
    """Every layer tracked under ``layer`` (attributes, lists, dicts; depth first), each once."""
    return list(layer._flatten_layers(include_self=include_self))


def keep_input_dtypes(layer: keras.layers.Layer) -> None:
    """Stops Keras from casting ``layer``'s floating call arguments to its compute dtype
    (e.g. float64 timestamps, float32 attention biases under mixed precision); the layer
    casts what it needs itself."""
    layer._convert_input_args = False


def created_trainable_variables(layer: keras.layers.Layer, recursive: bool = True) -> list[Any]:
    """The variables created as trainable under ``layer``, frozen or not, each once, in a
    fixed order (``layer.trainable_weights`` drops frozen ones, ``layer.weights`` adds
    non-trainable ones such as BatchNorm statistics). ``recursive=False``: the layer's
    own variables only."""
    out, seen = [], set()
    for sub in sublayers(layer) if recursive else [layer]:
        for v in getattr(sub, "_trainable_variables", []):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


# ---- distribution ---------------------------------------------------------------------------


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` is a MultiWorkerMirroredStrategy spanning several workers."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(strategy.extended._in_multi_worker_mode())


# ---- model hooks ----------------------------------------------------------------------------


class ModelHooks:
    """Mixin for a ``keras.Model`` subclass (``class M(ModelHooks, keras.Model)``) that
    routes two private Keras hooks to named methods:

    * before the first step of ``fit`` / ``evaluate`` / ``predict``, Keras builds a model
      symbolically (``_maybe_symbolic_build``). A model that is already built calls
      ``self.finish_build()`` instead; an unbuilt one gets Keras' build.
    * at the end of every training epoch and evaluation Keras computes the logs it
      returns (``_get_metrics_result_or_logs(logs)``, eagerly). The mixin returns
      ``self.epoch_logs(logs)``.
    """

    def finish_build(self) -> None:
        """Called instead of Keras' symbolic build once the model is built."""

    def epoch_logs(self, logs: dict[str, Any] | None) -> dict[str, Any]:
        """The logs of an epoch or evaluation (``logs``: the last step's)."""
        return super()._get_metrics_result_or_logs(logs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.built:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        self.finish_build()

    def _get_metrics_result_or_logs(self, logs):
        return self.epoch_logs(logs)


class SingleTraceStepFunctions:
    """Mixin for a ``keras.Model`` subclass: ``make_train_function`` and
    ``make_test_function`` trace the step once, as one ``tf.function`` over the iterator.

    Keras' TensorFlow trainer traces a step as a ``tf.function`` nested in another one
    (the step on a batch, called by a loop over ``steps_per_execution`` batches of the
    iterator), even for one batch per execution. The outer trace then copies the inner
    step's definition (10 000 nodes for a Swin-v2-T train step) into its own graph, and the
    first call instantiates both: 7.6 against 4.4 CPU-s for the first call of the
    Swin-v2-T classification train step, with the same steady step. With
    ``steps_per_execution == 1``, no Keras ``jit_compile`` and not ``run_eagerly``, this
    mixin traces ``get_next`` + ``strategy.run(step)`` + Keras' per-replica reduction as
    one function (Keras' own behaviour otherwise). The end of the data is Keras' as well:
    ``get_next`` raises ``OutOfRangeError``, which Keras' epoch iterator ends the epoch on.
    """

    def _single_trace_steps(self) -> bool:
        return not self.run_eagerly and self.steps_per_execution == 1 and not self.jit_compile

    def make_train_function(self, force=False):
        return self._make_step_function("train", force)

    def make_test_function(self, force=False):
        return self._make_step_function("test", force)

    def _make_step_function(self, kind: str, force: bool):
        """``<kind>_function`` ("train" or "test"): kept unless ``force``, else traced as one
        function, or Keras' own where single tracing does not apply."""
        attr = f"{kind}_function"
        if getattr(self, attr) is not None and not force:
            return getattr(self, attr)
        if not self._single_trace_steps():
            return getattr(super(), f"make_{kind}_function")(force=force)
        setattr(self, attr, single_trace_step_function(self, getattr(self, f"{kind}_step")))
        return getattr(self, attr)


def single_trace_step_function(model: keras.Model, step_function):
    """``function(iterator) -> logs`` running ``step_function`` on the next batch under the
    model's strategy, as one ``tf.function`` (see :class:`SingleTraceStepFunctions`)."""
    from keras.src.backend.tensorflow.trainer import reduce_per_replica

    strategy = model.distribute_strategy

    @tf.autograph.experimental.do_not_convert
    def one_step_on_data(data):
        # Keras' _autoconvert_optionals: an Optional element of the data stands for None.
        data = tf.nest.map_structure(lambda x: None if isinstance(x, tf.experimental.Optional) else x, data)
        with library_frames_filtered():  # runs while tracing only: shorter op tracebacks
            outputs = strategy.run(step_function, args=(data,))
            return reduce_per_replica(outputs, strategy, reduction="auto")

    @tf.autograph.experimental.do_not_convert
    def one_step_on_iterator(iterator):
        return one_step_on_data(iterator.get_next())

    on_iterator = tf.function(one_step_on_iterator, reduce_retracing=True)
    on_data = tf.function(one_step_on_data, reduce_retracing=True)
    traces = [0]

    def after_call(fn):
        count = on_iterator.experimental_get_tracing_count() + on_data.experimental_get_tracing_count()
        if count != traces[0]:  # a new trace: its definitions are instantiated by now
            traces[0] = count
            release_function_definitions(fn)

    def function(iterator):
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            logs = on_iterator(iterator)
            after_call(on_iterator)
            return logs
        for data in iterator:  # a Python iterator: its next batch (Keras: as many as steps_per_execution)
            logs = on_data(data)
            after_call(on_data)
            return logs
        raise StopIteration  # no batch left: the end of the epoch for Keras' epoch iterator

    function.on_iterator = on_iterator  # the traced function (tests look at its graph)
    return function


def release_function_definitions(function) -> int:
    """Replaces the Python copies of the ``FunctionDef`` that TensorFlow keeps for each
    traced concrete function of the ``tf.function`` ``function`` by copies holding only
    the signature and the attributes, which is all that calling it reads; returns how many
    it replaced.

    TensorFlow decodes a traced function's whole definition into a Python proto twice (for
    its attributes when the concrete function is made, and for the argument count on the
    first call) and keeps both: for the detection anchor config's train step (13 600 ops)
    36 MB, next to the runtime's own copy. The runtime's copy, which it runs, is untouched;
    ``concrete_function.function_def`` then answers the signature only (the runtime's whole
    definition stays at ``context.get_function_def(name)``)."""
    from tensorflow.core.framework import function_pb2

    def slim(definition):
        out = function_pb2.FunctionDef()
        out.signature.CopyFrom(definition.signature)
        for key, value in definition.attr.items():
            out.attr[key].CopyFrom(value)
        return out

    released = 0
    for concrete in function._list_all_concrete_functions():
        atomic = getattr(concrete, "_inference_function", None)
        delayed = getattr(concrete, "_delayed_rewrite_functions", None)
        definition = getattr(atomic, "_cached_definition", None)
        if definition is None or not definition.node_def:
            continue  # not called yet, or already released
        atomic._cached_definition = slim(definition)
        attrs = getattr(delayed, "_attrs", None)
        if attrs is not None:
            holder = function_pb2.FunctionDef()
            for key, value in attrs.items():
                holder.attr[key].CopyFrom(value)
            delayed._attrs = holder.attr  # the attributes alone (a view kept its whole definition)
        released += 1
    return released


# ---- optimizers -----------------------------------------------------------------------------


def optimizer_variable_index(optimizer: keras.optimizers.Optimizer, variable: Any) -> int:
    """The index of a model variable in a built optimizer's variable list (the slot of its
    per-variable state)."""
    return optimizer._get_variable_index(variable)


def optimizer_tracks(optimizer: keras.optimizers.Optimizer, variable: Any) -> bool:
    """Whether a built optimizer was built with ``variable``."""
    return bool(optimizer.built) and optimizer._var_key(variable) in optimizer._trainable_variables_indices


class ClipGradientsHook:
    """Mixin for a ``keras.optimizers.Optimizer`` subclass: Keras clips the gradients in
    ``apply`` (after gradient accumulation, before the weight decay and the update) with
    ``_clip_gradients``; the mixin calls ``self.clip_gradients(grads)`` there instead
    (default: Keras' ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``)."""

    def clip_gradients(self, grads: list[Any]) -> list[Any]:
        return super()._clip_gradients(grads)

    def _clip_gradients(self, grads):
        return self.clip_gradients(grads)


class PreReducedGradients:
    """Mixin for a ``keras.optimizers.Optimizer`` subclass whose ``apply`` receives
    gradients already summed over replicas (the training step all-reduces them itself).

    Keras' TensorFlow optimizer all-reduces the gradients in a cross-replica merge call
    before ``update_step``; with the mixin the merge call applies ``update_step`` to each
    replica's (identical) gradient without reducing again.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        strategy = self._distribution_strategy
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, strategy, list(zip(grads, variables)), learning_rate
        )


class StepWideUpdate:
    """Mixin for a ``keras.optimizers.Optimizer`` subclass whose per-variable scalar
    arithmetic is done once per step, for all variables together.

    Keras' TensorFlow optimizer calls ``update_step(gradient, variable, lr)`` once per
    variable; an optimizer with per-variable state (torch's step counts, parameter groups)
    then builds the same scalar ops once per variable, which for a model of a few hundred
    variables makes most of the traced step. With the mixin, the merge call (cross-replica
    context) first calls ``prepare_update(variables, learning_rate)`` once, which returns
    one tuple of arguments per variable, then updates each variable (on each replica's
    component) with ``update_variable(variable, gradient, *arguments)``, which returns its
    last op.

    The variables are updated one after the other, last ones first: each update has a
    control dependency on the previous one's op. Unordered, TF's executor runs ready ops
    breadth first, so every variable's first op (e.g. the decayed copy ``p * (1 - lr*wd)``)
    runs before any variable's last: temporaries the size of the whole model are alive at
    once (165 MB more at the peak of the Swin-v2-T + UNet train step, 39 M parameters).
    In reverse order (the order in which the backward pass produces the gradients) an
    update can run as soon as its gradient exists, and frees it.
    """

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        grads_and_vars = list(grads_and_vars)
        arguments = self.prepare_update([v for _, v in grads_and_vars], learning_rate)
        previous = None
        for (grad, var), args in reversed(list(zip(grads_and_vars, arguments))):
            with tf.control_dependencies([] if previous is None else [previous]):
                previous = distribution.extended.update(var, self.update_variable, args=(grad, *args), group=True)


# ---- graph functions ------------------------------------------------------------------------


def set_memory_optimizer(enabled: bool) -> None:
    """Turns Grappler's memory optimizer on (TensorFlow's default) or off for the functions
    traced from now on. ``tf.config.optimizer`` has no switch for it, so this sets
    ``memory_optimization`` in the eager context's function-call config, which every
    ``tf.function`` call reads. Off in graph_optimizer "functions" mode: on the Swin-v2-T
    + UNet train step it took 0.9 of the 1.1 CPU-s that Grappler added to the first call,
    and the memory that mode saves (about 100 MB) does not come from it (docs/training.md
    §9.2). The setting is the calling thread's (TensorFlow keeps function-call options per
    thread), and ``tf.config.optimizer.set_experimental_options`` resets it: call it after."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    rewriter = rewriter_config_pb2.RewriterConfig
    ctx, options, config = _function_call_config()
    config.graph_options.rewrite_options.memory_optimization = rewriter.DEFAULT_MEM_OPT if enabled else rewriter.NO_MEM_OPT
    options.config_proto_serialized = config
    ctx.function_call_options = options


def memory_optimizer_enabled() -> bool:
    """Whether Grappler's memory optimizer runs for the functions traced now."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    memory = _function_call_config()[2].graph_options.rewrite_options.memory_optimization
    return memory != rewriter_config_pb2.RewriterConfig.NO_MEM_OPT


def _function_call_config():
    """The eager context, its (this thread's) function-call options and their ConfigProto."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    options = ctx.function_call_options
    config = config_pb2.ConfigProto()
    config.ParseFromString(options.config_proto_serialized)
    return ctx, options, config


class _LibraryFramesFilter(tf_stack.StackTraceFilter):
    def __init__(self, filenames: frozenset):
        super().__init__()
        self._filenames = filenames

    def get_filtered_filenames(self):
        return self._filenames


def _library_filenames() -> frozenset:
    """The source files of the loaded TensorFlow, Keras and standard-library modules, but
    TensorFlow's ``framework/ops.py``: an op's traceback leaves out the innermost frames
    of its creation (``extract_stack(stacklevel=3)``), counted after filtering, and these
    are that file's."""
    import sysconfig

    from tensorflow.python.framework import ops

    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    libraries = tuple(os.path.dirname(m.__file__) + os.sep for m in (tf, keras))
    names = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if isinstance(name, str) and (name.startswith(libraries) or (name.startswith(stdlib) and "site-packages" not in name)):
            names.add(name)
    names.discard(ops.__file__)
    return frozenset(names)


@contextlib.contextmanager
def library_frames_filtered():
    """Ops traced inside record creation tracebacks without TensorFlow's, Keras' and the
    standard library's frames (those of rskeras and of the user's code stay).

    TensorFlow records the whole Python stack of every op it traces, and the function
    runtime turns each into frames when it instantiates the graph: for the ~10 000 ops of a
    Swin-v2-T + UNet train step, whose ops sit some 49 frames deep (the fit loop, Keras,
    tf.function, autograph, the layers), that held about 80 MB. Filtered, they keep about 10
    frames, and TensorFlow's error messages, which leave out its own frames, name the same
    lines. Thread-local, as TensorFlow's filters are.
    """
    with _LibraryFramesFilter(_library_filenames()):
        yield


# ---- callbacks ------------------------------------------------------------------------------


class TensorBoardWithoutLearningRate(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback without its ``learning_rate`` entry (which it reads from
    the optimizer at the end of an epoch, i.e. after rskeras' epoch-end scheduler step:
    the next epoch's rate)."""

    def _collect_learning_rate(self, logs):
        return logs
