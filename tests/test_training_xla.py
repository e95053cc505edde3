"""trainer.jit_compile: the model step under XLA gives the same numbers as without it."""

import os

import numpy as np
import pytest
import tensorflow as tf

from rskeras import lightning_cli as cli
from rskeras.run import build_run
from rskeras.config.errors import ConfigError
from rskeras.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/ made tiny; batches of 4 windows of 32x32. Segmentation: the whole model under
# XLA (UNet's nearest x2 resize and its gradient); detection: the encoder only (FasterRCNN
# has NMS). Classification runs the same "model" path as segmentation (test time).
TINY = {
    "segmentation": [
        ("model.init_args.model.init_args.encoder.0.init_args.channels", "[8, 8, 8]"),
        ("model.init_args.model.init_args.decoder.0.init_args.in_channels", "[[2, 8], [4, 8], [8, 8]]"),
    ],
    "detection": [
        ("model.init_args.model.init_args.encoder.0.init_args.channels", "[8, 8, 8]"),
        ("model.init_args.model.init_args.encoder.1.init_args.in_channels", "[8, 8, 8]"),
        ("model.init_args.model.init_args.encoder.1.init_args.out_channels", "8"),
        ("model.init_args.model.init_args.decoder.0.init_args.num_channels", "8"),
    ],
}


def three_steps(name, dataset, root, jit):
    """Train logs after 3 train steps and eval logs of one batch, from the same seed and
    the same (val split, unshuffled) batches."""
    os.environ["DATASET_PATH"] = dataset
    path = os.path.join(ROOT, "configs", f"{name}.yaml")
    overrides = TINY[name] + [
        ("data.init_args.batch_size", "4"),
        ("trainer.default_root_dir", str(root)),
        ("trainer.logger", "false"),
        ("seed_everything", "3"),
    ]
    run = build_run(cli.load_config([path], overrides), "train")
    lm = run.lm
    expected = {"segmentation": "model", "detection": "encoder"}[name]
    assert lm.configure_jit(jit) == (expected if jit else None)
    lm.build_optimizer()
    batches = run.data.tf_dataset("val", shuffle=False).repeat().take(3)
    lm.make_train_function()
    iterator = iter(batches)  # a tf.data iterator, as in fit: one trace for all batches
    for _ in range(3):
        train = lm.train_function(iterator)
    lm.make_test_function()
    test = lm.test_function(iter(batches.take(1)))
    return {k: float(v) for k, v in train.items()}, {k: float(v) for k, v in test.items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_xla_on_and_off_give_the_same_losses(name, sample_dataset, tmp_path):
    train_off, test_off = three_steps(name, sample_dataset, tmp_path / "off", False)
    train_on, test_on = three_steps(name, sample_dataset, tmp_path / "on", True)
    assert np.isfinite(list(train_on.values())).all()
    assert sorted(train_on) == sorted(train_off) and sorted(test_on) == sorted(test_off)
    for key in train_off:
        assert train_on[key] == pytest.approx(train_off[key], abs=1e-5), key
    # Faster R-CNN's eval loss goes through the proposals of the trained weights: with
    # TensorFlow's default thread pools (two threads per op, as when another test started
    # TensorFlow first) two identical runs without XLA already differ by up to ~1e-4
    # (0.7777048, 0.7777104, 0.7778018 measured), from the order of parallel float sums.
    test_tolerance = 2e-4 if name == "detection" else 1e-5
    for key in test_off:
        assert test_on[key] == pytest.approx(test_off[key], abs=test_tolerance), key


def test_jit_compile_key():
    assert Trainer(jit_compile=True).use_jit() and not Trainer(jit_compile=False).use_jit()
    assert Trainer().use_jit() == bool(tf.config.list_physical_devices("GPU"))
    # XLA has no deterministic max-pool gradient: "auto" stays off under deterministic.
    assert not Trainer(deterministic=True).use_jit() and Trainer(jit_compile=True, deterministic=True).use_jit()
    with pytest.raises(ConfigError, match="trainer.jit_compile"):
        Trainer(jit_compile="yes")
