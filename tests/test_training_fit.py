"""Trainer.fit in-process on the tiny sample dataset: exact resume from a checkpoint,
per-epoch schedulers and learning-rate logging, fine-tuning parameter groups,
restore_config order, non-finite loss detection."""

import json
import os

import keras
import numpy as np
import pytest
import yaml

from rskeras import lightning_cli as cli
from rskeras.run import build_run
from rskeras.train.callbacks.checkpointing import read_training_state
from tests.training_scripts.checkpoint_files import h5_datasets
from tests.training_scripts.tiny_config import CONFIG


def make_run(dataset, root, deterministic=False, subcommand="fit", **changes):
    """A Run of the tiny config; ``changes`` maps dotted keys to values."""
    config = yaml.safe_load(CONFIG.replace("DATASET", dataset))
    config["trainer"].update(default_root_dir=str(root), logger=False)
    config["seed_everything"] = 7
    for key, value in changes.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    run = build_run(config, cli.SUBCOMMAND_STAGES[subcommand])
    if deterministic:
        # The train pipeline reads in parallel without a fixed order; train on the
        # (deterministic) val split so that two runs see identical batches.
        tf_dataset, num_batches = run.data.tf_dataset, run.data.num_batches
        run.data.tf_dataset = lambda stage, **kw: tf_dataset("val" if stage == "train" else stage, **kw)
        run.data.num_batches = lambda stage: num_batches("val" if stage == "train" else stage)
        whole_batches = run.data.whole_batches
        run.data.whole_batches = lambda stage: whole_batches("val" if stage == "train" else stage)
    return run


def rows(root):
    with open(os.path.join(root, "metrics.json")) as f:
        return json.load(f)


SCHEDULER = {"class_path": "rslearn.train.scheduler.PlateauScheduler", "init_args": {"patience": 0, "factor": 0.5}}
CALLBACKS = [
    {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_loss", "patience": 5}},
    {"class_path": "rslearn.train.callbacks.checkpointing.BestLastCheckpoint", "init_args": {"dirpath": "DIR", "monitor": "val_accuracy", "mode": "max"}},
]


def callbacks(root):
    return [dict(c, init_args={k: (str(root) if v == "DIR" else v) for k, v in c["init_args"].items()}) for c in CALLBACKS]


def test_resume_from_checkpoint_matches_continuous_training(sample_dataset, tmp_path):
    changes = {"model.init_args.scheduler": SCHEDULER, "trainer.max_epochs": 3, "trainer.limit_train_batches": 1}
    full = make_run(sample_dataset, tmp_path / "full", True, **changes, **{"trainer.callbacks": callbacks(tmp_path / "full")})
    full.trainer.fit(full.lm, full.data)
    first = make_run(sample_dataset, tmp_path / "first", True, **{**changes, "trainer.max_epochs": 1}, **{"trainer.callbacks": callbacks(tmp_path / "first")})
    first.trainer.fit(first.lm, first.data)
    last = str(tmp_path / "first" / "last.weights.h5")
    state = read_training_state(last)
    assert state["epoch"] == 0 and state["global_step"] == first.trainer.global_step() > 0
    assert not os.path.exists(tmp_path / "first" / "backup")  # removed after a completed fit
    resumed = make_run(sample_dataset, tmp_path / "resumed", True, **changes, **{"trainer.callbacks": callbacks(tmp_path / "resumed")})
    resumed.trainer.fit(resumed.lm, resumed.data, ckpt_path=last)
    assert [r["epoch"] for r in rows(tmp_path / "resumed")] == [1, 2]
    for a, b in zip(full.lm.model.get_weights(), resumed.lm.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(rows(tmp_path / "full")[1:], rows(tmp_path / "resumed")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6) and a["lr"] == b["lr"]
    assert full.lm.optimizer.param_group_lrs() == pytest.approx(resumed.lm.optimizer.param_group_lrs())
    full_state, resumed_state = full.lm.lr_scheduler.state_dict(), resumed.lm.lr_scheduler.state_dict()
    assert sorted(full_state) == sorted(resumed_state)
    for key, value in full_state.items():  # pytest.approx does not take nested containers
        assert value == pytest.approx(resumed_state[key]), key
    es_full, es_resumed = full.trainer.callbacks[0], resumed.trainer.callbacks[0]
    assert (es_full.wait_count, es_full.best_score) == (es_resumed.wait_count, pytest.approx(es_resumed.best_score))
    assert full.trainer.callbacks[1].best == pytest.approx(resumed.trainer.callbacks[1].best)


def test_schedulers_step_per_epoch_and_lr_is_logged(sample_dataset, tmp_path):
    run = make_run(
        sample_dataset,
        tmp_path,
        **{
            "model.init_args.scheduler": {"class_path": "rslearn.train.scheduler.MultiStepScheduler", "init_args": {"milestones": [1, 2], "gamma": 0.5}},
            "trainer.max_epochs": 3,
            "trainer.logger": True,
            "trainer.limit_train_batches": 1,
            "trainer.callbacks": [
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_top_k": 2, "save_last": True}},
            ],
        },
    )
    run.trainer.fit(run.lm, run.data)
    logged = rows(tmp_path)
    assert [r["lr"] for r in logged] == pytest.approx([0.01, 0.005, 0.0025])
    assert [r["lr-AdamW"] for r in logged] == pytest.approx([0.01, 0.005, 0.0025])
    assert run.trainer.global_step() == 3  # limit_train_batches: one batch per epoch
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "last.weights.h5" in names and len(names) == 3
    assert all(n == "last.weights.h5" or n.startswith("epoch=") and "-step=" in n for n in names)
    # TensorBoard: one event file per run, as Lightning's logger writes
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "lightning_logs" / "version_0"))


def test_freeze_unfreeze_and_restore_config_order(sample_dataset, tmp_path, monkeypatch):
    calls = []

    def fake_restore(model, restore_config):
        lm = run.lm
        assert model is lm.model
        calls.append((lm.optimizer.built, int(lm.optimizer.iterations.numpy()), restore_config.restore_path))

    monkeypatch.setattr("rskeras.train.trainer.restore_from_config", fake_restore)
    run = make_run(
        sample_dataset,
        tmp_path,
        **{
            "model.init_args.restore_config": {"restore_path": "weights.pth", "remap_prefixes": [["a.", "b."]]},
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 2,
            "trainer.callbacks": [
                {"class_path": "rslearn.train.callbacks.freeze_unfreeze.FreezeUnfreeze", "init_args": {"module_selector": ["model", "encoder", 0], "unfreeze_at_epoch": 1, "unfreeze_lr_factor": 10}},
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
            ],
        },
    )
    encoder = run.lm.model.encoder[0]
    decoder = run.lm.model.decoder[0]
    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = ([v.numpy().copy() for v in encoder.weights], [v.numpy().copy() for v in decoder.weights])

    start = ([v.numpy().copy() for v in encoder.weights], [v.numpy().copy() for v in decoder.weights])
    run.trainer.callbacks.append(Snapshot())
    run.trainer.fit(run.lm, run.data)
    assert calls == [(True, 0, "weights.pth")]  # fresh fit: after the build, before any step
    for a, b in zip(start[0], snapshots[0][0]):
        np.testing.assert_array_equal(a, b)  # frozen during epoch 0
    assert any(np.abs(a - b).max() > 0 for a, b in zip(start[1], snapshots[0][1]))
    assert any(np.abs(a - b).max() > 0 for a, b in zip(snapshots[0][0], snapshots[1][0]))  # trained in epoch 1
    optimizer = run.lm.optimizer
    assert optimizer.param_group_lrs() == pytest.approx([0.01, 0.001])
    assert {optimizer.group_of(v) for v in encoder.trainable_weights} == {1}
    assert {optimizer.group_of(v) for v in decoder.trainable_weights} == {0}
    logged = rows(tmp_path)
    assert logged[0]["lr-AdamW"] == pytest.approx(0.01)
    assert (logged[1]["lr-AdamW/pg1"], logged[1]["lr-AdamW/pg2"]) == pytest.approx((0.01, 0.001))
    # A resumed fit does not apply restore_config.
    run2 = make_run(sample_dataset, tmp_path / "again", **{"model.init_args.restore_config": {"restore_path": "weights.pth"}, "trainer.max_epochs": 1})
    run2.trainer.fit(run2.lm, run2.data, ckpt_path=str(next((tmp_path / "checkpoints").glob("*.weights.h5"))))
    assert len(calls) == 1


def test_nonfinite_loss_stops_naming_step_and_term(sample_dataset, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.replace("DATASET", sample_dataset))
    code = cli.main(
        [
            "fit",
            "--config", str(path),
            "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.logger=false",
            "--model.init_args.optimizer.init_args.lr", "1.0e+38",  # the first step blows the weights up
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite training loss at epoch 0, batch 1 (global step 2)" in err
    assert "train_cls=nan" in err and "loss term(s) at fault: cls" in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_backup_is_a_copy_of_the_epochs_checkpoint_with_its_own_state(sample_dataset, tmp_path, monkeypatch):
    """One serialization per epoch for ModelCheckpoint's top-k file, its ``last`` and the
    trainer's backup: the backup is copied from this epoch's checkpoint, with the same
    datasets as a full save of the model at that point and its own training state."""
    from rskeras.train import trainer as trainer_module
    from rskeras.train.callbacks import checkpointing

    serialized = []
    full_save = checkpointing.save_weights_file
    monkeypatch.setattr(checkpointing, "save_weights_file", lambda lm_, path, skip: serialized.append(path) or full_save(lm_, path, skip))

    checked = []
    backup_epoch_end = trainer_module._Backup.on_epoch_end

    def check_backup(self, epoch, logs=None):
        before = len(serialized)
        backup_epoch_end(self, epoch, logs)
        assert len(serialized) == before, "the backup serialized the variables again"
        reference_path = str(tmp_path / f"reference{epoch}.weights.h5")
        full_save(self.model, reference_path, checkpointing._objects_to_skip(self.model, True))
        reference, backup = h5_datasets(reference_path), h5_datasets(self.path)
        assert sorted(backup) == sorted(reference) and len(reference) > 10
        for name, value in reference.items():
            np.testing.assert_array_equal(backup[name], value, err_msg=name)
        assert read_training_state(self.path) == json.loads(json.dumps(self.trainer.training_state(epoch)))
        checked.append(epoch)

    monkeypatch.setattr(trainer_module._Backup, "on_epoch_end", check_backup)
    model_checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_top_k": 1, "save_last": True}}
    run = make_run(sample_dataset, tmp_path / "run", **{"trainer.max_epochs": 2, "trainer.limit_train_batches": 1, "trainer.callbacks": [model_checkpoint]})
    run.trainer.fit(run.lm, run.data)
    assert checked == [0, 1]
    assert len(serialized) == 2, serialized  # one per epoch: top-k file; last and backup are copies


def test_fit_batches_whole_splits_with_a_static_batch_size(sample_dataset, tmp_path):
    run = make_run(sample_dataset, tmp_path / "run", **{"trainer.max_epochs": 1, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1})
    asked = {}
    tf_dataset = run.data.tf_dataset

    def recording(stage, **kwargs):
        asked[stage] = kwargs.get("drop_remainder", False)
        return tf_dataset(stage, **kwargs)

    run.data.tf_dataset = recording
    whole = {"train": True, "val": False}
    run.data.whole_batches = lambda stage: whole[stage]
    run.trainer.fit(run.lm, run.data)
    assert asked == {"train": True, "val": False}
    # The traced train step saw the static batch size.
    (concrete,) = run.lm.train_function.on_iterator._list_all_concrete_functions()
    (get_next,) = [op for op in concrete.graph.get_operations() if op.type.startswith("IteratorGetNext")]
    assert {t.shape[0] for t in get_next.outputs if t.shape.rank} == {run.data.batch_size}
