"""TorchAdamW: torch.optim.AdamW's update, parameter groups, clipping, frozen variables."""

import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf

from rskeras.train.optimizer import AdamW, TorchAdamW
from memory_helpers import allocator_peak_growth


def torch_adamw_reference(params, grads_seq, lr, betas=(0.9, 0.999), eps=1e-8, wd=0.01, clip_norm=None, lrs=None, steps=None):
    """numpy float64 version of torch.optim.AdamW (single-tensor path) with optional
    clip_grad_norm_ and per-parameter learning rates / starting steps."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = list(steps or [0] * len(params))
    lrs = lrs or [lr] * len(params)
    for grads in grads_seq:
        grads = [g.astype(np.float64) for g in grads]
        if clip_norm is not None:
            total = np.sqrt(sum((g**2).sum() for g in grads))
            coef = min(clip_norm / (total + 1e-6), 1.0)
            grads = [g * coef for g in grads]
        for i, g in enumerate(grads):
            t[i] += 1
            params[i] *= 1 - lrs[i] * wd
            m[i] += (g - m[i]) * (1 - betas[0])
            v[i] = v[i] * betas[1] + g * g * (1 - betas[1])
            step_size = lrs[i] / (1 - betas[0] ** t[i])
            denom = np.sqrt(v[i]) / np.sqrt(1 - betas[1] ** t[i]) + eps
            params[i] -= step_size * m[i] / denom
    return params


def fixed_problem(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) * s for p, s in zip(params, (1.0, 1e-3))] for _ in range(steps)]
    return params, grads


def run_keras(opt, params, grads_seq):
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    for grads in grads_seq:
        opt.apply([tf.constant(g) for g in grads], variables)
    return [v.numpy() for v in variables]


def test_factory_uses_torch_defaults():
    opt = AdamW(lr=0.002).build()
    assert isinstance(opt, TorchAdamW)
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.decoupled_weight_decay) == (0.9, 0.999, 1e-8, 0.01)
    assert np.isclose(float(opt.learning_rate.numpy()), 0.002)
    opt = AdamW(lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0).build()
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.decoupled_weight_decay) == (0.8, 0.99, 1e-6, 0.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(betas=(0.9,))


@pytest.mark.parametrize("clip", [None, 0.5])
def test_matches_torch_adamw_formulas(clip):
    params, grads = fixed_problem()
    got = run_keras(TorchAdamW(learning_rate=0.01, weight_decay=0.05, clip_grad_norm=clip), params, grads)
    want = torch_adamw_reference(params, grads, lr=0.01, wd=0.05, clip_norm=clip)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_clip_value():
    params, grads = fixed_problem(steps=2)
    got = run_keras(TorchAdamW(learning_rate=0.01, clip_grad_value=0.1), params, grads)
    want = torch_adamw_reference(params, [[np.clip(g, -0.1, 0.1) for g in gs] for gs in grads], lr=0.01)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_param_groups_and_frozen_variables():
    params, grads = fixed_problem(steps=4)
    a, b = keras.Variable(params[0]), keras.Variable(params[1])
    b.trainable = False  # frozen when the optimizer is built: in no group
    opt = TorchAdamW(learning_rate=0.01)
    opt.build([a, b])
    assert opt.group_of(a) == 0 and opt.group_of(b) == -1
    # Two steps with only `a` trainable: `b` untouched.
    for g in grads[:2]:
        opt.apply([tf.constant(g[0])], [a])
    np.testing.assert_array_equal(b.numpy(), params[1])
    # `b` joins as group 1 with lr / 10; its own step count starts at 1.
    b.trainable = True
    assert opt.add_param_group([b], 0.001) == 1
    assert opt.param_group_lrs() == pytest.approx([0.01, 0.001])
    for g in grads[2:]:
        opt.apply([tf.constant(x) for x in g], [a, b])
    want_a = torch_adamw_reference([params[0]], [[g[0]] for g in grads], lr=0.01)[0]
    want_b = torch_adamw_reference([params[1]], [[g[1]] for g in grads[2:]], lr=0.001)[0]
    np.testing.assert_allclose(a.numpy(), want_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.numpy(), want_b, rtol=1e-6, atol=1e-7)
    opt.set_param_group_lr(1, 0.5)
    assert opt.param_group_lrs()[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="already in a parameter group"):
        opt.add_param_group([b], 0.1)


def test_variable_in_no_group_is_not_updated():
    a = keras.Variable(np.ones(3, np.float32))
    a.trainable = False
    opt = TorchAdamW(learning_rate=0.1)
    opt.build([a])
    a.trainable = True  # made trainable without joining a group (MultiStageFineTuning)
    opt.apply([tf.ones(3)], [a])
    np.testing.assert_array_equal(a.numpy(), np.ones(3))


def test_gradient_accumulation_averages():
    params, grads = fixed_problem(steps=4)
    opt = TorchAdamW(learning_rate=0.01, gradient_accumulation_steps=2)
    got = run_keras(opt, params, grads)
    mean = [[(x + y) / 2 for x, y in zip(grads[i], grads[i + 1])] for i in (0, 2)]
    want = torch_adamw_reference(params, mean, lr=0.01)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert int(opt.iterations.numpy()) == 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_cross_check_with_torch():
    import torch

    params, grads = fixed_problem(seed=3, steps=6)
    got = run_keras(TorchAdamW(learning_rate=0.003, weight_decay=0.1, clip_grad_norm=1.0), params, grads)
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    topt = torch.optim.AdamW(tparams, lr=0.003, weight_decay=0.1)
    for gs in grads:
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tparams, 1.0)
        topt.step()
    for g, p in zip(got, tparams):
        np.testing.assert_allclose(g, p.detach().numpy(), rtol=1e-6, atol=1e-7)


def _traced_update_ops(num_variables: int) -> int:
    variables = [keras.Variable(np.full((3,), 1.0, np.float32), name=f"v{i}") for i in range(num_variables)]
    opt = TorchAdamW(learning_rate=0.1)
    opt.build(variables)
    grads = [tf.ones((3,)) for _ in variables]
    fn = tf.function(lambda: opt.apply(grads, variables))
    return len(fn.get_concrete_function().graph.get_operations())


def test_update_scalar_arithmetic_is_shared_by_all_variables():
    """The per-variable step counts, groups and bias corrections are computed as vectors once
    per step (StepWideUpdate) from two vector variables: each further variable adds a handful
    of ops to the traced update (captured handles, the decay's read, multiply and write, the
    fused Adam kernel, its coefficients: 9), not the 14 of one step and one group variable
    per model variable, nor the 62 that one update_step per variable built."""
    per_variable = (_traced_update_ops(40) - _traced_update_ops(20)) / 20
    assert per_variable <= 10, per_variable


def test_step_wide_update_matches_one_variable_updates():
    """A step over several variables (with one in no group) equals Keras' one-variable
    ``update_step`` on each of them."""
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(4,)).astype(np.float32) for _ in range(3)]
    grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(3)]

    def run(one_by_one: bool):
        variables = [keras.Variable(v) for v in values]
        opt = TorchAdamW(learning_rate=0.05, weight_decay=0.1)
        opt.build(variables)
        opt._param_groups.assign([0, 0, -1])  # the third in no group
        for _ in range(3):
            if one_by_one:
                for g, v in zip(grads, variables):
                    opt.update_step(tf.constant(g), v.value, opt.learning_rate)
            else:
                opt.apply([tf.constant(g) for g in grads], variables)
        return [v.numpy() for v in variables], [float(s) for s in opt._param_steps.numpy()]

    together, steps_together = run(False)
    alone, steps_alone = run(True)
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)
    assert steps_together == steps_alone == [3.0, 3.0, 0.0]
    np.testing.assert_array_equal(together[2], values[2])


def _apply_graph(num_variables: int, size: int):
    """The traced ``apply`` of TorchAdamW over ``num_variables`` vectors of ``size``, and
    the ResourceApplyAdam op of each variable, in the variables' order."""
    variables = [keras.Variable(np.full((size,), float(i), np.float32)) for i in range(num_variables)]
    opt = TorchAdamW(learning_rate=0.01, weight_decay=0.1)
    opt.build(variables)
    grads = [tf.ones((size,)) for _ in variables]
    fn = tf.function(lambda: opt.apply(grads, variables))
    graph = fn.get_concrete_function().graph
    internal = {id(ext): inner for ext, inner in graph.captures}
    handles = [internal[id(v.value.handle)] for v in variables]
    adam = {op.inputs[0].ref(): op for op in graph.get_operations() if op.type == "ResourceApplyAdam"}
    return fn, variables, [adam[h.ref()] for h in handles]


def _ancestors(op) -> set:
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def test_variable_updates_run_one_at_a_time_last_variable_first():
    """StepWideUpdate orders the variables' updates (each after the previous one's Adam op,
    last variable first), so that TF's breadth-first executor does not hold every
    variable's decayed copy at once; the values are those of unordered updates."""
    _, _, adam = _apply_graph(5, 4)
    for k in range(4):
        assert adam[k + 1] in _ancestors(adam[k]), k
    assert adam[0] not in _ancestors(adam[4])


def test_variable_updates_add_little_to_the_backward_peak():
    """A train step of a chain of 16 layers with 4 MB weights: TorchAdamW's update adds at
    most two weights' size to the peak of the backward pass alone (unordered updates added
    56 MB: the decayed copies of most weights at once). Measured with TF's CPU allocator
    statistics, which oneDNN's allocator keeps."""
    size = 1 << 20
    variables = [keras.Variable(np.full((size,), 0.1 * (i + 1), np.float32)) for i in range(16)]
    opt = TorchAdamW(learning_rate=0.01, weight_decay=0.1)
    opt.build(variables)
    x = tf.ones((size,))

    def gradients():
        with tf.GradientTape() as tape:
            h = x
            for v in variables:
                h = tf.tanh(h * v.value)
            loss = tf.reduce_sum(h)
        return tape.gradient(loss, [v.value for v in variables])

    backward = tf.function(lambda: tf.add_n([tf.reduce_sum(g) for g in gradients()]))
    step = tf.function(lambda: opt.apply(gradients(), variables))
    backward(), step()  # traced and instantiated
    backward_peak, step_peak = allocator_peak_growth(backward), allocator_peak_growth(step)
    assert step_peak <= backward_peak + 2 * 4 * size, (step_peak / 2**20, backward_peak / 2**20)
