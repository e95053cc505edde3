"""tools/train.py command line: subcommands, overrides, config order, project management,
trainer keys."""

import os
import pytest

from rskeras import lightning_cli as cli
from rskeras.config.command_line import split_command_line
from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import build
from rskeras.config.loader import Override, load_config
from rskeras.export import cli as export_cli
from rskeras.train.trainer import Trainer


def test_subcommands_and_bare_config():
    args, overrides = cli.parse_args(["--config", "a.yaml"])
    assert args.subcommand == "fit" and args.config == ["a.yaml"] and overrides == []
    args, _ = cli.parse_args(["test", "-c", "a.yaml", "--config", "b.yaml", "--ckpt_path", "x.weights.h5"])
    assert args.subcommand == "test" and args.config == ["a.yaml", "b.yaml"] and args.ckpt_path == "x.weights.h5"


def test_override_forms():
    _, overrides = cli.parse_args(
        [
            "fit",
            "--config", "a.yaml",
            "--data.init_args.batch_size", "16",
            "--trainer.max_epochs=3",
            "--model.init_args.scheduler.init_args.milestones", "[2, 4]",
            "--trainer.callbacks.0.init_args.monitor", "val_accuracy",
            "--management_dir", "/tmp/m",
            "--trainer.gradient_clip_val", "-1",
        ]
    )
    assert [(o.key, o.value) for o in overrides] == [
        ("data.init_args.batch_size", "16"),
        ("trainer.max_epochs", "3"),
        ("model.init_args.scheduler.init_args.milestones", "[2, 4]"),
        ("trainer.callbacks.0.init_args.monitor", "val_accuracy"),
        ("management_dir", "/tmp/m"),
        ("trainer.gradient_clip_val", "-1"),
    ]


def test_one_tokenizer_for_both_command_lines():
    argv = ["--config", "--odd.yaml", "--a.b=1", "-c", "x.yaml", "--seed_everything", "3", "--format", "tflite"]
    rest, overrides = split_command_line(argv, prog="export.py")
    assert rest == ["--config", "--odd.yaml", "-c", "x.yaml", "--format", "tflite"]
    assert overrides == [Override("a.b", "1", 1), Override("seed_everything", "3", 2)]
    with pytest.raises(SystemExit, match="export.py: error: override --a.b needs a value"):
        split_command_line(["--a.b"], prog="export.py")
    args, overrides = export_cli.parse_args(["--config", "a.yaml", "--checkpoint", "c.weights.h5", "--data.init_args.batch_size", "2"])
    assert args.config == ["a.yaml"] and args.checkpoint == "c.weights.h5"
    assert overrides == [Override("data.init_args.batch_size", "2", 1)]


def test_override_errors():
    with pytest.raises(SystemExit):
        cli.parse_args(["--config", "a.yaml", "--trainer.max_epochs"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--config", "a.yaml", "--bogus", "1"])


def test_configs_and_overrides_apply_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("trainer:\n  max_epochs: 1\n  callbacks:\n    - class_path: X\n      init_args: {monitor: val_loss}\n")
    b.write_text("trainer:\n  max_epochs: 2\n")
    argv = ["--trainer.max_epochs", "7", "-c", str(a), "--trainer.callbacks.0.init_args.monitor=val_acc", "-c", str(b), "--trainer.devices", "[0, 1]"]
    args, overrides = cli.parse_args(argv)
    assert [o.after_configs for o in overrides] == [0, 1, 2]
    config = load_config(args.config, overrides)
    assert config["trainer"]["max_epochs"] == 2  # b.yaml comes after the override
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val_acc"
    assert config["trainer"]["devices"] == [0, 1]
    with pytest.raises(ConfigError, match=r"trainer\.callbacks\.3"):
        load_config([str(a)], [Override("trainer.callbacks.3.init_args.monitor", "x", 1)])


def test_help_lists_overrides_and_management(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("fit,validate,test,predict", "--ckpt_path", "--a.b.c VALUE", "--management_dir", "load_checkpoint_mode"):
        assert text in out


def touch(directory, *names):
    os.makedirs(directory, exist_ok=True)
    for name in names:
        open(os.path.join(directory, name), "w").close()


def test_checkpoint_selection_rule(tmp_path):
    d = str(tmp_path / "p" / "r")
    assert cli.checkpoint_epoch("epoch=12-step=40.weights.h5") == 12
    assert cli.checkpoint_epoch("best.weights.h5") == 0 and cli.checkpoint_epoch("last.weights.h5") == -100
    assert cli.find_checkpoint(d, "auto", "auto", "fit") is None
    with pytest.raises(ConfigError, match="no checkpoint was found"):
        cli.find_checkpoint(d, "auto", "auto", "test")
    touch(d, "last.weights.h5")
    assert cli.find_checkpoint(d, "best", "yes", "test").endswith("last.weights.h5")
    touch(d, "best.weights.h5", "notes.txt")
    assert cli.find_checkpoint(d, "auto", "auto", "validate").endswith("best.weights.h5")  # best beats last
    assert cli.find_checkpoint(d, "auto", "auto", "fit").endswith("last.weights.h5")
    touch(d, "epoch=3-step=9.weights.h5", "epoch=12-step=40.weights.h5")
    assert cli.find_checkpoint(d, "best", "auto", "test").endswith("epoch=12-step=40.weights.h5")
    assert cli.find_checkpoint(d, "none", "no", "test") is None
    with pytest.raises(ConfigError, match="cannot be set when load_checkpoint_mode is none"):
        cli.find_checkpoint(d, "none", "yes", "fit")
    with pytest.raises(ConfigError, match="load_checkpoint_mode"):
        cli.find_checkpoint(d, "newest", "auto", "fit")


def test_project_management(tmp_path):
    config = {"management_dir": str(tmp_path), "project_name": "proj", "run_name": "run1", "trainer": {"max_epochs": 2}}
    cli.apply_project_management(config, "fit")
    project = os.path.join(str(tmp_path), "proj", "run1")
    assert config["trainer"]["default_root_dir"] == project
    assert config["trainer"]["enable_checkpointing"] is False
    assert "logger" not in config["trainer"] and "ckpt_path" not in config  # fit logs; nothing to resume
    touch(project, "last.weights.h5", "best.weights.h5")
    config = {"management_dir": str(tmp_path), "project_name": "proj", "run_name": "run1"}
    cli.apply_project_management(config, "fit")
    assert config["ckpt_path"].endswith("last.weights.h5")
    config = {"management_dir": str(tmp_path), "project_name": "proj", "run_name": "run1", "ckpt_path": "other"}
    cli.apply_project_management(config, "test")
    assert config["ckpt_path"].endswith("best.weights.h5") and config["trainer"]["logger"] is False
    with pytest.raises(ConfigError, match="run_name"):
        cli.apply_project_management({"management_dir": str(tmp_path), "project_name": "p"}, "fit")


def test_unsupported_trainer_keys_name_the_key():
    with pytest.raises(ConfigError, match=r"^trainer\.val_check_interval: this Lightning Trainer argument is not supported"):
        build(Trainer, {"val_check_interval": 0.5}, "trainer")
    # Type-aware: True is not False/0 and 1 is not 1.0. (fast_dev_run and overfit_batches
    # are implemented: tests/test_cli_conformance.py.)
    for key, value in (("sync_batchnorm", True), ("val_check_interval", 1), ("min_steps", 1)):
        with pytest.raises(ConfigError, match=rf"^trainer\.{key}: this Lightning Trainer argument is not supported .*got {value!r}"):
            build(Trainer, {key: value}, "trainer")
    # The values a LightningCLI-saved config holds for them (Lightning's defaults) are accepted.
    lightning_defaults = {
        "val_check_interval": None, "fast_dev_run": False, "overfit_batches": 0.0, "min_steps": None, "max_time": None,
        "profiler": None, "plugins": None, "detect_anomaly": False, "barebones": False,
        "reload_dataloaders_every_n_epochs": 0, "sync_batchnorm": False, "model_registry": None,
    }
    build(Trainer, {**lightning_defaults, "val_check_interval": 1.0, "fast_dev_run": 0, "overfit_batches": 0}, "trainer")
    build(Trainer, lightning_defaults, "trainer")
    with pytest.raises(ConfigError, match=r"^trainer\.max_epoch: unknown argument .*\(did you mean 'max_epochs'\?\)"):
        build(Trainer, {"max_epoch": 3}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.precision='64-true' is not supported"):
        build(Trainer, {"precision": "64-true"}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.gradient_clip_algorithm"):
        build(Trainer, {"gradient_clip_algorithm": "l1"}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.limit_val_batches"):
        build(Trainer, {"limit_val_batches": 1.5}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        build(Trainer, {"max_epochs": "3"}, "trainer")


def test_lightning_trainer_keys_accepted():
    trainer = build(
        Trainer,
        {
            "max_epochs": 3,
            "accelerator": "cpu",
            "devices": 1,
            "num_nodes": 1,
            "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"find_unused_parameters": True}},
            "precision": "bf16-mixed",
            "logger": False,
            "accumulate_grad_batches": 2,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "value",
            "limit_train_batches": 0.5,
            "check_val_every_n_epoch": 2,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 10,
            "use_distributed_sampler": False,
            "deterministic": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
                {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_loss", "patience": 2}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_top_k": 2, "save_last": True}},
            ],
        },
        "trainer",
    )
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 2
    assert [type(c).__name__ for c in trainer.callbacks] == ["LearningRateMonitor", "EarlyStopping", "ModelCheckpoint"]
    with pytest.raises(ConfigError, match="fsdp"):
        build(Trainer, {"strategy": "fsdp"}, "trainer")
    with pytest.raises(ConfigError, match="WandbLogger"):
        build(Trainer, {"logger": {"class_path": "lightning.pytorch.loggers.WandbLogger"}}, "trainer")
