"""The ``train.py`` command line: rslearn's ``rslearn model {fit,validate,test,predict}``.

Usage::

    python tools/train.py [fit|validate|test|predict] --config cfg.yaml [--config more.yaml]
        [--ckpt_path PATH] [--section.key value | --section.key=value ...]

A bare ``--config`` means ``fit``. Configs are Lightning-CLI shaped (``model``, ``data``,
``trainer`` sections with ``class_path``/``init_args``); ``rslearn.*`` class paths map to
``rskeras.*``. ``model.init_args.task`` is linked from ``data.init_args.task`` as in
rslearn. Configs and overrides apply in command-line order. Every error names the YAML
key at fault.

Project management (``--management_dir``, ``--project_name``, ``--run_name``, ...) follows
rslearn: the run directory is ``<management_dir>/<project_name>/<run_name>``, checkpoints
there are found by ``load_checkpoint_mode`` (auto/none/last/best) and
``load_checkpoint_required`` (auto/yes/no). See docs/training.md.
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

import yaml

from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import build, instantiate
from rskeras.config.loader import load_config

logger = logging.getLogger("rskeras")

SUBCOMMANDS = ("fit", "validate", "test", "predict")
MANAGEMENT_KEYS = {
    "management_dir",
    "project_name",
    "run_name",
    "run_description",
    "log_mode",
    "load_checkpoint_mode",
    "load_checkpoint_required",
}
TOP_LEVEL_KEYS = {"model", "data", "trainer", "ckpt_path", "seed_everything"} | MANAGEMENT_KEYS
CHECKPOINT_SUFFIXES = (".weights.h5", ".ckpt")

OWN_FLAGS = {"--config", "-c", "--ckpt_path", "--print_config", "-h", "--help"}

EPILOG = """\
config overrides:
  --a.b.c VALUE or --a.b.c=VALUE sets that config key (VALUE is parsed as YAML: 16, 1e-4,
  [1, 2], {k: v}, null); integer parts index lists (--trainer.callbacks.0.init_args.monitor
  val_accuracy). Configs and overrides apply in command-line order.
  e.g. --data.init_args.batch_size 16 --trainer.max_epochs=3

project management (rslearn):
  --management_dir DIR     enable management; the run directory is DIR/<project_name>/<run_name>
  --project_name NAME      required with --management_dir
  --run_name NAME          required with --management_dir
  --run_description TEXT   free text, saved with the config
  --load_checkpoint_mode   auto (last for fit, best otherwise) | none | last | best
  --load_checkpoint_required  auto (no for fit, yes otherwise) | yes | no
  --log_mode               auto (log during fit only) | yes | no
"""


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--a.b.c VALUE`` / ``--a.b.c=VALUE`` overrides from the CLI's own flags.

    Returns the remaining arguments and the overrides, each override tagged with the
    number of ``--config`` flags before it (so configs and overrides keep their order).
    """
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        key = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if not key or item.split("=", 1)[0] in OWN_FLAGS or ("." not in key and key not in TOP_LEVEL_KEYS):
            rest.append(item)
            if item in ("--config", "-c", "--ckpt_path") and i + 1 < len(argv):
                rest.append(argv[i + 1])  # a value, even one that starts with "--"
                i += 1
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


def _config_positions(argv: list[str]) -> list[int]:
    """For each override in ``argv``, how many configs precede it."""
    positions, configs, i = [], 0, 0
    while i < len(argv):
        item = argv[i]
        flag = item.split("=", 1)[0]
        if flag in ("--config", "-c"):
            configs += 1
            i += 1 if "=" in item else 2
            continue
        if flag == "--ckpt_path":
            i += 1 if "=" in item else 2
            continue
        key = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if key and flag not in OWN_FLAGS and ("." in key or key in TOP_LEVEL_KEYS):
            positions.append(configs)
            i += 1 if "=" in item else 2
            continue
        i += 1
    return positions


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Parses the command line: (the CLI's own arguments, dotted config overrides)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train, evaluate and predict with rskeras models configured by rslearn-style YAML.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subcommand", nargs="?", choices=SUBCOMMANDS, default="fit", help="what to run (default: fit)")
    parser.add_argument("--config", "-c", action="append", required=True, help="YAML config file (repeatable, merged in order)")
    parser.add_argument(
        "--ckpt_path",
        default=None,
        help="fit: resume the complete training state from an rskeras checkpoint (.weights.h5) or start from "
        "the weights of a torch/Lightning .ckpt; validate/test/predict: the weights to use",
    )
    parser.add_argument("--print_config", action="store_true", help="print the merged config and exit")
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    args.override_positions = _config_positions(argv)
    return args, overrides


def load_ordered_config(paths: list[str], overrides: list[tuple[str, str]], positions: list[int]) -> dict[str, Any]:
    """Configs and overrides applied in command-line order: an override given before a
    ``--config`` can be overridden by that file, as with LightningCLI."""
    from rskeras.config.loader import deep_merge, parse_override_value, set_by_path

    if len(positions) != len(overrides):
        return load_config(paths, overrides)
    config: dict[str, Any] = {}
    applied = 0
    for n, path in enumerate(paths):
        while applied < len(overrides) and positions[applied] <= n:
            key, value = overrides[applied]
            set_by_path(config, key, parse_override_value(value))
            applied += 1
        config = deep_merge(config, load_config([path], []))
    for key, value in overrides[applied:]:
        set_by_path(config, key, parse_override_value(value))
    return config


def default_root_dir(config_paths: list[str]) -> str:
    stem = os.path.splitext(os.path.basename(config_paths[-1]))[0]
    return os.path.join("runs", stem)


# ---- project management ------------------------------------------------------------------


def checkpoint_epoch(name: str) -> int:
    """rslearn's ranking of checkpoint names for ``load_checkpoint_mode: best``: the
    ``epoch=<n>`` component, 0 without one, -100 for ``last``."""
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    epoch = -100 if stem == "last" else 0
    for part in stem.split("-"):
        kv = part.split("=")
        if len(kv) == 2 and kv[0] == "epoch":
            try:
                epoch = int(kv[1])
            except ValueError:
                pass
    return epoch


def find_checkpoint(project_dir: str, mode: str, required: str, subcommand: str) -> str | None:
    """The checkpoint that project management loads (rslearn ``_get_checkpoint_path``)."""
    if mode == "auto":
        mode = "last" if subcommand == "fit" else "best"
    if required == "auto":
        required = "no" if subcommand == "fit" else "yes"
    if mode not in ("none", "last", "best"):
        raise ConfigError(f"load_checkpoint_mode: expected auto, none, last or best, got {mode!r}")
    if required not in ("yes", "no"):
        raise ConfigError(f"load_checkpoint_required: expected auto, yes or no, got {required!r}")
    if required == "yes" and mode == "none":
        raise ConfigError("load_checkpoint_required cannot be set when load_checkpoint_mode is none")
    path = None
    if mode == "best":
        names = sorted(os.listdir(project_dir)) if os.path.isdir(project_dir) else []
        best, best_epoch = None, None
        for name in names:
            if not name.endswith(CHECKPOINT_SUFFIXES) or not os.path.isfile(os.path.join(project_dir, name)):
                continue
            epoch = checkpoint_epoch(name)
            if best_epoch is None or epoch > best_epoch:
                best, best_epoch = name, epoch
        if best is not None:
            path = os.path.join(project_dir, best)
    elif mode == "last":
        for name in ("last.weights.h5", "last.ckpt"):
            if os.path.exists(os.path.join(project_dir, name)):
                path = os.path.join(project_dir, name)
                break
    if required == "yes" and path is None:
        raise ConfigError(f"load_checkpoint_required is set but no checkpoint was found under {project_dir}")
    return path


def apply_project_management(config: dict[str, Any], subcommand: str) -> None:
    """rslearn project management: run directory, checkpoint discovery, logging switch."""
    management_dir = config.get("management_dir")
    if not management_dir:
        return
    for key in ("project_name", "run_name"):
        if not config.get(key):
            raise ConfigError(f"{key}: required when management_dir is set (project name and run name must be set)")
    project_dir = os.path.join(str(management_dir), str(config["project_name"]), str(config["run_name"]))
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    trainer["default_root_dir"] = project_dir
    # Checkpoints are the user's ManagedBestLastCheckpoint; no default ModelCheckpoint.
    trainer["enable_checkpointing"] = False
    log_mode = config.get("log_mode", "auto") or "auto"
    if log_mode not in ("auto", "yes", "no"):
        raise ConfigError(f"log_mode: expected auto, yes or no, got {log_mode!r}")
    should_log = log_mode == "yes" or (log_mode == "auto" and subcommand == "fit")
    if not should_log:
        if trainer.get("logger") not in (None, False, True):
            logger.warning("log_mode says no logging but trainer.logger is configured; it is kept")
        else:
            trainer["logger"] = False
    path = find_checkpoint(
        project_dir,
        config.get("load_checkpoint_mode", "auto") or "auto",
        config.get("load_checkpoint_required", "auto") or "auto",
        subcommand,
    )
    if path is not None:
        if config.get("ckpt_path") and config["ckpt_path"] != path:
            logger.warning("project management replaces ckpt_path %s with %s", config["ckpt_path"], path)
        logger.info("found checkpoint to resume from at %s", path)
        config["ckpt_path"] = path


# ---- the run -------------------------------------------------------------------------------


def seed_everything(seed: Any) -> int | None:
    """``seed_everything``: an int seeds Python/NumPy/TF and the train input pipeline
    (``rskeras.train.randomness``); true picks (and logs) a random seed."""
    from rskeras.train import randomness

    if seed is None or seed is False:
        randomness.set_seed(None)
        return None
    if seed is True:
        seed = random.randrange(2**31)
        logger.info("seed_everything: true -> seed %d", seed)
    if not isinstance(seed, int):
        raise ConfigError(f"seed_everything: expected an int or a bool, got {seed!r}")
    import keras

    keras.utils.set_random_seed(seed)
    random.seed(seed)
    randomness.set_seed(seed)
    return seed


class Run:
    """Everything built from one config: trainer, strategy, data module, model.

    Order: trainer (precision policy, determinism) -> strategy -> data module -> model in
    the strategy scope -> weights created on a real batch -> compile.
    """

    def __init__(self, config: dict[str, Any], config_paths: list[str], subcommand: str):
        unknown = set(config) - TOP_LEVEL_KEYS
        if unknown:
            raise ConfigError(f"unknown top-level config keys {sorted(unknown)} (expected {sorted(TOP_LEVEL_KEYS)})")
        for section in ("model", "data"):
            if section not in config:
                raise ConfigError(f"{section}: section is required")
        self.config = config
        self.subcommand = subcommand
        seed = seed_everything(config.get("seed_everything"))
        from rskeras.train.trainer import Trainer

        trainer_cfg = dict(config.get("trainer") or {})
        if not trainer_cfg.get("default_root_dir"):
            trainer_cfg["default_root_dir"] = default_root_dir(config_paths)
        self.trainer = build(Trainer, trainer_cfg, "trainer")
        if self.trainer.deterministic and seed is None:
            # TF's op determinism refuses unseeded random ops.
            logger.info("trainer.deterministic without seed_everything: seeding with 0")
            seed_everything(0)
        self.trainer.setup_environment()
        try:
            self.strategy = self.trainer.make_strategy()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.data = instantiate(config["data"], "data")
        model_cfg = copy.deepcopy(config["model"])
        extra = {}
        if "task" not in (model_cfg.get("init_args") or {}):
            extra["task"] = self.data.task
        with self.strategy.scope():
            self.lm = instantiate(model_cfg, "model", extra=extra)
            stage = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[subcommand]
            # One pipeline gives both the input specs and the batch that builds the weights.
            dataset = self.data.tf_dataset(stage, shuffle=False)
            self.input_specs = dataset.element_spec[0]
            self.lm.build_from_batch(next(iter(dataset))[0])
            self.lm.compile(optimizer=self.lm.make_optimizer(), jit_compile=False)

    @property
    def root(self) -> str:
        return self.trainer.root

    def load_checkpoint(self, path: str) -> None:
        """Model weights (no optimizer or training state) for validate/test/predict."""
        if path.endswith(".weights.h5"):
            from rskeras.train.callbacks.checkpointing import load_training_checkpoint

            load_training_checkpoint(self.lm, path, with_optimizer=False)
            logger.info("loaded weights from %s", path)
            return
        from rskeras.train.trainer import load_torch_checkpoint

        load_torch_checkpoint(self.lm, path)

    def save_config(self) -> None:
        from rskeras.utils.fileio import atomic_write_text

        os.makedirs(self.root, exist_ok=True)
        atomic_write_text(os.path.join(self.root, "config.yaml"), yaml.safe_dump(self.config, sort_keys=False))


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"\n{title}")
    for key in sorted(metrics):
        print(f"  {key}: {metrics[key]:.4f}")


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_ordered_config(args.config, overrides, args.override_positions)
    if args.ckpt_path:
        config["ckpt_path"] = args.ckpt_path
    apply_project_management(config, args.subcommand)
    if args.print_config:
        print(yaml.safe_dump(config, sort_keys=False))
        return 0
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is not None and not isinstance(ckpt_path, str):
        raise ConfigError(f"ckpt_path: expected a path, got {ckpt_path!r}")
    r = Run(config, args.config, args.subcommand)
    if r.trainer.is_chief:
        r.save_config()
    if args.subcommand == "fit":
        start = time.time()
        r.trainer.fit(r.lm, r.data, ckpt_path=ckpt_path)
        elapsed = time.time() - start
        best = r.trainer.best_checkpoint()
        if best:
            r.load_checkpoint(best)
            print(f"\nloaded best checkpoint {best}")
        metrics = r.trainer.evaluate(r.lm, r.data, "val") if r.trainer._has_validation(r.data) else {}
        print_metrics(f"validation metrics ({'best' if best else 'last'} weights, fit took {elapsed:.1f}s):", metrics)
        if r.trainer.is_chief:
            from rskeras.export.saved_model import export_run_saved_model

            path = export_run_saved_model(r, os.path.join(r.root, "saved_model"))
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
            if path and r.trainer.is_chief:
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
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from rskeras.train.trainer import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError):
            raise
        print(f"\ntraining stopped: {e}", file=sys.stderr)
        return 3
