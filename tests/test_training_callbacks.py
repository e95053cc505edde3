"""Callbacks without a training loop: ModelCheckpoint naming and top-k, EarlyStopping,
fine-tuning selections (BatchNorm stays trainable, MultiStageFineTuning), checkpoint files."""

import math
import os

import keras
import numpy as np
import pytest
import yaml

from rskeras.config.instantiate import instantiate
from rskeras.train.callbacks.checkpointing import load_training_checkpoint, read_training_state, save_training_checkpoint
from rskeras.train.callbacks.freeze_unfreeze import FreezeUnfreeze, FTStage, MultiStageFineTuning, named_trainable_variables
from rskeras.train.callbacks.lightning import EarlyStopping, ModelCheckpoint
from tests.training_scripts.checkpoint_files import h5_datasets
from tests.training_scripts.tiny_config import CONFIG


@pytest.fixture(scope="module")
def lm():
    """A built tiny Lightning module (no data)."""
    config = yaml.safe_load(CONFIG.replace("DATASET", "unused"))
    task = instantiate(config["data"]["init_args"]["task"], "task")
    module = instantiate(config["model"], "model", extra={"task": task})
    module.build_from_batch({"image": np.zeros((2, 1, 8, 8, 12), np.float32)})
    module.compile(optimizer=module.make_optimizer(), jit_compile=False)
    module.build_optimizer()
    return module


class FakeTrainer:
    def __init__(self):
        self.step = 0

    def global_step(self):
        return self.step

    def training_state(self, epoch):
        return {"epoch": epoch, "global_step": self.step}


def attach(callback, lm):
    callback.set_model(lm)
    callback.trainer = FakeTrainer()
    return callback


def test_model_checkpoint_top_k_names_and_last(lm, tmp_path):
    cb = attach(ModelCheckpoint(dirpath=str(tmp_path), filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=2, save_last=True), lm)
    for epoch, loss in enumerate([0.5, 0.3, 0.4, 0.6, 0.1]):
        cb.trainer.step = 10 * (epoch + 1)
        cb.on_epoch_end(epoch, {"train_loss": 1.0, "val_loss": loss})
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-val_loss=0.30.weights.h5", "epoch=4-val_loss=0.10.weights.h5", "last.weights.h5"]
    assert cb.best_model_path.endswith("epoch=4-val_loss=0.10.weights.h5") and cb.best_model_score == pytest.approx(0.1)
    assert read_training_state(str(tmp_path / "last.weights.h5"))["epoch"] == 4
    restored = ModelCheckpoint(dirpath=str(tmp_path), monitor="val_loss", save_top_k=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.best_k_models == cb.best_k_models and restored.kth_best_model_path == cb.kth_best_model_path


def test_second_file_of_an_epoch_is_a_copy_with_its_own_state(lm, tmp_path, monkeypatch):
    """``last`` after a top-k save of the same epoch is copied from it: the same datasets a
    full save writes, its own training state; the next epoch's weights reach both files."""
    from rskeras.train.callbacks import checkpointing

    serialized = []
    full_save = checkpointing.save_weights_file
    monkeypatch.setattr(checkpointing, "save_weights_file", lambda lm_, path, skip: serialized.append(path) or full_save(lm_, path, skip))
    cb = attach(ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_loss", save_top_k=1, save_last=True), lm)
    weights = lm.model.weights
    originals = [v.numpy().copy() for v in weights]
    try:
        for epoch in range(2):
            for v in weights:
                v.assign(v.numpy() + 1.0)  # every epoch changes every variable
            cb.trainer.step = epoch + 1
            cb.on_epoch_end(epoch, {"val_loss": 1.0 - epoch})
            assert len(serialized) == 2 * epoch + 1  # one serialization for the two files
            full = str(tmp_path / f"full{epoch}.weights.h5")
            save_training_checkpoint(lm, full, {"epoch": epoch})
            reference = h5_datasets(full)
            for path in (cb.best_model_path, cb.last_model_path):
                copied = h5_datasets(path)
                assert sorted(copied) == sorted(reference) and len(reference) > 10
                for name, value in reference.items():
                    np.testing.assert_array_equal(copied[name], value, err_msg=f"{path}: {name}")
        assert cb.best_model_path.endswith("epoch=1-step=2.weights.h5") and cb.last_model_path.endswith("last.weights.h5")
        state = read_training_state(cb.last_model_path)
        assert state == {"epoch": 1, "global_step": 2}
        assert sorted(os.listdir(tmp_path / "ckpt")) == ["epoch=1-step=2.weights.h5", "last.weights.h5"]
    finally:
        for v, a in zip(weights, originals):
            v.assign(a)


def test_model_checkpoint_latest_default_name_and_versions(lm, tmp_path):
    cb = attach(ModelCheckpoint(dirpath=str(tmp_path)), lm)
    cb.trainer.step = 3
    cb.on_epoch_end(0, {"train_loss": 1.0})
    cb.trainer.step = 6
    cb.on_epoch_end(1, {"train_loss": 1.0})
    assert os.listdir(tmp_path) == ["epoch=1-step=6.weights.h5"]  # save_top_k=1 keeps the latest
    keep_all = attach(ModelCheckpoint(dirpath=str(tmp_path / "all"), filename="fixed", monitor="val_loss", save_top_k=-1, every_n_epochs=2), lm)
    for epoch in range(4):
        keep_all.on_epoch_end(epoch, {"train_loss": 1.0, "val_loss": 1.0})
    assert sorted(os.listdir(tmp_path / "all")) == ["fixed-v1.weights.h5", "fixed.weights.h5"]  # epochs 1 and 3
    with pytest.raises(ValueError, match="could not find the monitored key"):
        attach(ModelCheckpoint(dirpath=str(tmp_path), monitor="val_acc"), lm).on_epoch_end(0, {"train_loss": 1.0, "val_loss": 1.0})
    with pytest.raises(ValueError, match="monitor=None"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(NotImplementedError, match="every_n_train_steps"):
        ModelCheckpoint(every_n_train_steps=100)


def test_early_stopping_rules():
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    decisions = [es.evaluate(v)[0] for v in [1.0, 0.95, 0.85, 0.8, 0.79]]
    assert decisions == [False, False, False, False, True]  # 0.95 and 0.8/0.79 are within min_delta
    assert es.best_score == pytest.approx(0.85)
    es = EarlyStopping(monitor="val_acc", mode="max", stopping_threshold=0.9)
    assert es.evaluate(0.5)[0] is False and es.evaluate(0.95)[0] is True
    es = EarlyStopping(monitor="val_loss", divergence_threshold=5.0)
    assert es.evaluate(1.0)[0] is False and es.evaluate(6.0)[0] is True
    stop, reason = EarlyStopping(monitor="val_loss").evaluate(math.nan)
    assert stop and "is not finite" in reason
    es = EarlyStopping(monitor="val_loss")
    with pytest.raises(RuntimeError, match="not available"):
        es.on_epoch_end(0, {"val_acc": 1.0})
    state = EarlyStopping(monitor="val_loss", patience=4)
    state.load_state_dict({"wait_count": 2, "stopped_epoch": 0, "best_score": 0.5, "patience": 4})
    assert (state.wait_count, state.best_score) == (2, 0.5)


class Holder(keras.layers.Layer):
    """A 'Lightning module' whose model has a conv and a BatchNormalization."""

    def __init__(self):
        super().__init__()
        self.model = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()])
        self.model.build((None, 8, 8, 3))


def test_freeze_keeps_batch_norm_trainable():
    holder = Holder()
    FreezeUnfreeze(["model"]).setup(None, holder)
    conv, bn = holder.model.layers
    assert [v.trainable for v in conv.weights] == [False, False]
    assert [v.trainable for v in bn.trainable_weights] == [True, True] and len(bn.trainable_weights) == 2
    with pytest.raises(ValueError, match="unfreeze_at_epoch cannot be 0"):
        FreezeUnfreeze(["model"], unfreeze_at_epoch=0)
    with pytest.raises(ValueError, match=r"module_selector \['model', 'decoder'\]: model has no attribute 'decoder'"):
        FreezeUnfreeze(["model", "decoder"]).setup(None, holder)


def test_multi_stage_fine_tuning(lm):
    names = [n for n, _ in named_trainable_variables(lm)]
    assert "model.encoder.0.stages.0.0.kernel" in names and any(n.startswith("model.decoder.0.") for n in names)
    optimizer = lm.optimizer
    encoder, decoder = lm.model.encoder[0], lm.model.decoder[0]
    groups = optimizer._param_groups.numpy()
    for v in encoder.trainable_weights:  # as if frozen when the optimizer was built
        groups[optimizer._get_variable_index(v)] = -1
    optimizer._param_groups.assign(groups)
    lm.lr_scheduler = None
    cb = MultiStageFineTuning(
        [
            FTStage(at_epoch=0, freeze_selectors=["encoder"], unfreeze_selectors=["encoder.0.stages.1"]),
            FTStage(at_epoch=2, freeze_selectors=[], unfreeze_selectors=["encoder"], unfreeze_lr_factor=10, scale_existing_groups=0.5),
        ]
    )
    cb.set_model(lm)
    cb.on_epoch_begin(0)
    stage0 = [v.trainable for v in encoder.stages[0][0].weights]
    stage1 = [v.trainable for v in encoder.stages[1][0].weights]
    assert stage0 == [False, False] and stage1 == [True, True]
    assert all(v.trainable for v in decoder.weights)
    assert optimizer.param_group_lrs() == pytest.approx([0.01, 0.01])  # stage 1 convs joined a new group
    assert {optimizer.group_of(v) for v in encoder.stages[1][0].weights} == {1}
    cb.on_epoch_begin(1)  # nothing scheduled
    cb.on_epoch_begin(2)
    assert optimizer.param_group_lrs() == pytest.approx([0.005, 0.005, 0.0005])
    assert {optimizer.group_of(v) for v in encoder.stages[0][0].weights} == {2}
    assert cb.state_dict() == {"applied_epochs": [0, 2]}
    with pytest.raises(ValueError, match="Duplicate at_epoch"):
        MultiStageFineTuning([FTStage(1, [], []), FTStage(1, [], [])])


def test_checkpoint_files_are_atomic_and_complete(lm, tmp_path):
    path = str(tmp_path / "c" / "last.weights.h5")
    os.makedirs(tmp_path / "c")
    stale = tmp_path / "c" / ".tmp-12345-last.weights.h5"
    stale.write_text("partial write of a killed process")
    save_training_checkpoint(lm, path, {"epoch": 3, "callbacks": {"X#0": {"best_value": 0.5}}})
    assert os.listdir(tmp_path / "c") == ["last.weights.h5"]
    assert read_training_state(path)["callbacks"]["X#0"]["best_value"] == 0.5
    before = [v.numpy().copy() for v in lm.model.weights]
    for v in lm.model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    lm.load_weights(path)  # model and optimizer (built) state
    for a, v in zip(before, lm.model.weights):
        np.testing.assert_array_equal(a, v.numpy())
    with pytest.raises(ValueError, match="must end with .weights.h5"):
        save_training_checkpoint(lm, str(tmp_path / "x.h5"))
    with pytest.raises(FileNotFoundError):
        load_training_checkpoint(lm, str(tmp_path / "missing.weights.h5"))


def test_loggers_version_directories(tmp_path):
    from rskeras.train.loggers import CSVLogger, TensorBoardLogger
    from rskeras.train.trainer import MetricsFileLogger, Trainer

    trainer = Trainer(default_root_dir=str(tmp_path))
    os.makedirs(tmp_path / "lightning_logs" / "version_0")
    tb = TensorBoardLogger(save_dir=str(tmp_path))
    assert tb.log_dir == str(tmp_path / "lightning_logs" / "version_1")
    from rskeras.train.loggers import TensorBoardWriter

    assert isinstance(tb.callbacks(trainer)[0], TensorBoardWriter)
    csv = CSVLogger(save_dir=str(tmp_path), name="csv", version="run1")
    (callback,) = csv.callbacks(trainer)
    assert isinstance(callback, MetricsFileLogger) and callback.directory == str(tmp_path / "csv" / "run1")
