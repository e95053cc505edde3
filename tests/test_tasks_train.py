"""Every non-detection example config trains through the CLI with the loss going down; fit
writes its SavedModel only when ``trainer.export_saved_model`` asks for it."""

import json

import pytest

from rskeras import lightning_cli

CONFIGS = ["classification", "regression", "segmentation", "per_pixel_regression", "multi_task"]


@pytest.mark.parametrize("name", CONFIGS)
def test_example_config_trains(name, sample_dataset, tmp_path, monkeypatch, capsys):
    root = tmp_path / name
    args = [
        "fit",
        "--config", f"configs/{name}.yaml",
        "--data.init_args.path", sample_dataset,
        "--data.init_args.batch_size", "8",
        "--trainer.max_epochs", "4",
        "--trainer.callbacks", "[]",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--seed_everything", "0",
        # a smaller encoder keeps the test fast
        "--model.init_args.model.init_args.encoder.0.init_args.channels", "[16, 32, 64]",
    ]
    export = name == "segmentation"  # one config exports (asked); the others must not
    if export:
        args += ["--trainer.export_saved_model", "true"]
    if name in ("classification", "regression"):
        args += ["--model.init_args.model.init_args.decoder.0.init_args.in_channels", "64"]
    elif name in ("segmentation", "per_pixel_regression"):
        args += ["--model.init_args.model.init_args.decoder.0.init_args.in_channels", "[[2, 16], [4, 32], [8, 64]]"]
    else:
        args += [
            "--model.init_args.model.init_args.decoders.segment.0.init_args.in_channels", "[[2, 16], [4, 32], [8, 64]]",
            "--model.init_args.model.init_args.decoders.classify.0.init_args.in_channels", "64",
        ]
    from rskeras.train.trainer import Trainer

    evaluations = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: evaluations.append(a) or evaluate(self, *a, **k))
    assert lightning_cli.main(args) == 0
    # The printed val metrics are the ones logged for the best (here: last) epoch: no
    # second validation pass after fit.
    assert not evaluations
    printed = capsys.readouterr().out.split("validation metrics", 1)[1]
    rows = json.loads((root / "metrics.json").read_text())
    assert f"val_loss: {rows[-1]['val_loss']:.4f}" in printed, printed
    assert len(rows) == 4
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], [r["train_loss"] for r in rows]
    assert (root / "saved_model" / "saved_model.pb").exists() == export, "fit exported without being asked" if not export else "no SavedModel"
    assert not [n for n in root.iterdir() if "saved_model" in n.name] or export


def test_export_saved_model_key():
    from rskeras.config.errors import ConfigError
    from rskeras.train.trainer import Trainer

    assert Trainer().export_saved_model is False  # a fit is training: no export unless asked
    assert Trainer(export_saved_model=True).export_saved_model is True
    assert Trainer(export_saved_model=True, fast_dev_run=True).export_saved_model is False  # fast_dev_run writes nothing
    with pytest.raises(ConfigError, match="trainer.export_saved_model"):
        Trainer(export_saved_model="yes")
