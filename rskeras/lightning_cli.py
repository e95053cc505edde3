"""The ``train.py`` command line: rslearn's ``rslearn model {fit,validate,test,predict}``.

Usage::

    python tools/train.py [fit|validate|test|predict] --config cfg.yaml [--config more.yaml]
        [--ckpt_path PATH] [--section.key value ...]

A bare ``--config`` means ``fit``. Configs are Lightning-CLI shaped (``model``, ``data``,
``trainer`` sections with ``class_path``/``init_args``); ``rslearn.*`` class paths map to
``rskeras.*``. ``model.init_args.task`` is linked from ``data.init_args.task`` as in
rslearn. Every error names the YAML key at fault.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import sys
import time
from typing import Any

import tensorflow as tf
import yaml

from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import build, instantiate
from rskeras.config.loader import load_config

logger = logging.getLogger("rskeras")

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TOP_LEVEL_KEYS = {
    "model",
    "data",
    "trainer",
    "ckpt_path",
    "seed_everything",
    "management_dir",
    "project_name",
    "run_name",
    "run_description",
    "log_mode",
    "load_checkpoint_mode",
    "load_checkpoint_required",
}


OWN_FLAGS = {"--config", "-c", "--ckpt_path", "--print_config", "-h", "--help"}


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--a.b.c VALUE`` / ``--a.b.c=VALUE`` overrides from the CLI's own flags."""
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        key = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if not key or item.split("=", 1)[0] in OWN_FLAGS or ("." not in key and key not in TOP_LEVEL_KEYS):
            rest.append(item)
            i += 1
            continue
        if "=" in item:
            overrides.append((key, item.split("=", 1)[1]))
            i += 1
        else:
            if i + 1 >= len(argv):
                raise SystemExit(f"train.py: error: override {item} needs a value")
            overrides.append((key, argv[i + 1]))
            i += 2
    return rest, overrides


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Parses the command line: (the CLI's own arguments, dotted config overrides)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train, evaluate and predict with rskeras models configured by rslearn-style YAML.",
        epilog=(
            "Any other --a.b.c VALUE (or --a.b.c=VALUE) overrides that config key, e.g. "
            "--data.init_args.batch_size 16 --trainer.max_epochs 3. Several --config files are merged in order."
        ),
    )
    parser.add_argument("subcommand", nargs="?", choices=SUBCOMMANDS, default="fit", help="what to run (default: fit)")
    parser.add_argument("--config", "-c", action="append", required=True, help="YAML config file (repeatable)")
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to resume from / evaluate (.weights.h5, or a torch .ckpt)")
    parser.add_argument("--print_config", action="store_true", help="print the merged config and exit")
    rest, overrides = split_overrides(argv)
    return parser.parse_args(rest), overrides


def default_root_dir(config_paths: list[str]) -> str:
    stem = os.path.splitext(os.path.basename(config_paths[-1]))[0]
    return os.path.join("runs", stem)


class Run:
    """Everything built from one config: trainer, strategy, data module, model."""

    def __init__(self, config: dict[str, Any], config_paths: list[str], subcommand: str):
        unknown = set(config) - TOP_LEVEL_KEYS
        if unknown:
            raise ConfigError(f"unknown top-level config keys {sorted(unknown)} (expected {sorted(TOP_LEVEL_KEYS)})")
        for section in ("model", "data"):
            if section not in config:
                raise ConfigError(f"{section}: section is required")
        self.config = config
        self.subcommand = subcommand
        seed = config.get("seed_everything")
        if seed is not None:
            import keras

            keras.utils.set_random_seed(int(seed))
            random.seed(int(seed))
        from rskeras.train.trainer import Trainer

        trainer_cfg = dict(config.get("trainer") or {})
        trainer_cfg.setdefault("default_root_dir", default_root_dir(config_paths))
        if config.get("management_dir"):
            for key in ("project_name", "run_name"):
                if not config.get(key):
                    raise ConfigError(f"{key}: required when management_dir is set")
            trainer_cfg["default_root_dir"] = os.path.join(config["management_dir"], config["project_name"], config["run_name"])
        self.trainer = build(Trainer, trainer_cfg, "trainer")

        from rskeras.train.distribute import make_strategy

        self.strategy = make_strategy(self.trainer.devices, self.trainer.accelerator)
        self.data = instantiate(config["data"], "data")
        model_cfg = copy.deepcopy(config["model"])
        extra = {}
        if "task" not in (model_cfg.get("init_args") or {}):
            extra["task"] = self.data.task
        with self.strategy.scope():
            self.lm = instantiate(model_cfg, "model", extra=extra)
            stage = "predict" if subcommand == "predict" else "train" if subcommand == "fit" else "val" if subcommand == "validate" else "test"
            batch = next(iter(self.data.tf_dataset(stage, shuffle=False)))
            self.input_specs = self.data.input_specs(stage)
            self.lm.build_from_batch(batch[0])
            self.lm.compile(optimizer=self.lm.make_optimizer(), jit_compile=False)

    @property
    def root(self) -> str:
        return self.trainer.root

    def load_checkpoint(self, path: str) -> None:
        if path.endswith(".weights.h5"):
            self.lm.load_weights(path)
            logger.info("loaded weights from %s", path)
            return
        from rskeras.models.checkpoint import load_checkpoint_into

        load_checkpoint_into(self.lm, path)

    def save_config(self) -> None:
        from rskeras.utils.fileio import atomic_write_text

        os.makedirs(self.root, exist_ok=True)
        atomic_write_text(os.path.join(self.root, "config.yaml"), yaml.safe_dump(self.config, sort_keys=False))


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"\n{title}")
    for key in sorted(metrics):
        print(f"  {key}: {metrics[key]:.4f}")


def run(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(config, sort_keys=False))
        return 0
    ckpt_path = args.ckpt_path or config.get("ckpt_path")
    r = Run(config, args.config, args.subcommand)
    r.save_config()
    if args.subcommand == "fit":
        if ckpt_path:
            r.load_checkpoint(ckpt_path)
        elif r.lm.restore_config is not None:
            from rskeras.models.checkpoint import apply_restore_config_to

            apply_restore_config_to(r.lm, r.lm.restore_config)
        start = time.time()
        r.trainer.fit(r.lm, r.data)
        elapsed = time.time() - start
        best = r.trainer.best_checkpoint()
        if best:
            r.lm.load_weights(best)
            print(f"\nloaded best checkpoint {best}")
        metrics = r.trainer.evaluate(r.lm, r.data, "val")
        print_metrics(f"validation metrics ({'best' if best else 'last'} weights, fit took {elapsed:.1f}s):", metrics)
        from rskeras.export.saved_model import export_saved_model

        path = export_saved_model(r.lm.inference_model(r.input_specs), r.input_specs, os.path.join(r.root, "saved_model"))
        print(f"SavedModel written to {path}")
        return 0
    if ckpt_path:
        r.load_checkpoint(ckpt_path)
    else:
        logger.warning("no --ckpt_path given: %s uses freshly initialised weights", args.subcommand)
    if args.subcommand in ("validate", "test"):
        stage = "val" if args.subcommand == "validate" else "test"
        metrics = r.trainer.evaluate(r.lm, r.data, stage)
        print_metrics(f"{stage} metrics:", metrics)
        if stage == "test" and r.lm.visualize_dir:
            from rskeras.train.visualize import write_visualizations

            write_visualizations(r.lm, r.data, r.lm.visualize_dir, "test", r.trainer.steps(r.data, "test"))
        if stage == "test":
            path = r.lm.metrics_file
            if path is None and r.lm.write_test_metrics:
                if not ckpt_path:
                    raise ConfigError("model.init_args.write_test_metrics: needs --ckpt_path")
                path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path))), "test_metrics.json")
            if path:
                from rskeras.utils.fileio import atomic_write_text

                content = dict(metrics)
                if ckpt_path:
                    content["_checkpoint_path"] = ckpt_path
                atomic_write_text(path, json.dumps(content, indent=4))
                print(f"test metrics written to {path}")
        return 0
    from rskeras.train.prediction_writer import run_predict

    run_predict(r)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
