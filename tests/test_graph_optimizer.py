"""trainer.graph_optimizer: Grappler off on a CPU-only host by default (auto), forced on or
off by true / false, its function optimizer alone with "functions", anything else one
ConfigError naming the key."""

import pytest
import tensorflow as tf

from rskeras.config.errors import ConfigError
from rskeras.keras_compat import memory_optimizer_enabled, set_memory_optimizer
from rskeras.train.trainer import GRAPPLER_REWRITES, Trainer, grappler_options


@pytest.fixture(autouse=True)
def restore_grappler():
    before = tf.config.optimizer.get_experimental_options()
    yield
    keys = ("disable_meta_optimizer", "function_optimization", *GRAPPLER_REWRITES)
    tf.config.optimizer.set_experimental_options({k: before.get(k, k != "disable_meta_optimizer") for k in keys})
    set_memory_optimizer(True)


@pytest.mark.parametrize(("value", "disabled"), [("auto", not tf.config.list_physical_devices("GPU")), (True, False), (False, True)])
def test_setting_reaches_tensorflow(value, disabled, tmp_path):
    trainer = Trainer(default_root_dir=str(tmp_path), graph_optimizer=value)
    trainer.setup_environment()
    assert tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False) is disabled


def test_functions_mode_keeps_only_the_function_optimizer(tmp_path):
    """"functions" after "on" (one process, two runs): the rewrites the first run turned on are
    off again, the meta optimizer and its function optimizer on."""
    Trainer(default_root_dir=str(tmp_path), graph_optimizer=True).setup_environment()
    Trainer(default_root_dir=str(tmp_path), graph_optimizer="functions").setup_environment()
    options = tf.config.optimizer.get_experimental_options()
    assert options["disable_meta_optimizer"] is False and options["function_optimization"] is True
    assert all(options[name] is False for name in GRAPPLER_REWRITES)
    Trainer(default_root_dir=str(tmp_path), graph_optimizer=True).setup_environment()
    assert all(tf.config.optimizer.get_experimental_options()[name] is True for name in GRAPPLER_REWRITES)


def test_functions_mode_turns_the_memory_optimizer_off(tmp_path):
    """Grappler's memory optimizer (no tf.config.optimizer switch) is off in "functions" mode
    only, and back on for the next run of another mode in the same process."""
    assert memory_optimizer_enabled()
    Trainer(default_root_dir=str(tmp_path), graph_optimizer="functions").setup_environment()
    assert not memory_optimizer_enabled()
    Trainer(default_root_dir=str(tmp_path), graph_optimizer=True).setup_environment()
    assert memory_optimizer_enabled()
    set_memory_optimizer(False)
    assert not memory_optimizer_enabled()
    # The switch reaches the functions TensorFlow runs: same numbers either way.
    f = tf.function(lambda x: tf.reduce_sum(tf.square(x) + 1.0))
    assert float(f(tf.ones([3]))) == 6.0


def test_steps_give_the_same_numbers_with_and_without_grappler():
    x = tf.random.stateless_normal([4, 16, 16, 3], seed=[1, 2])
    kernel = tf.random.stateless_normal([3, 3, 3, 8], seed=[3, 4])

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + 0.1)
            loss = tf.reduce_mean(tf.square(y))
        return loss, tape.gradient(loss, kernel)

    results = []
    for mode in ("on", "off", "functions"):
        tf.config.optimizer.set_experimental_options(grappler_options(mode))
        loss, grad = tf.function(step)(x)
        results.append((loss.numpy(), grad.numpy()))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert abs(grad - results[0][1]).max() <= 1e-5 * abs(results[0][1]).max()


def test_bad_value_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.graph_optimizer must be true, false, auto or functions"):
        Trainer(default_root_dir=str(tmp_path), graph_optimizer="fast")
