"""The ``train.py`` command line: rslearn's ``rslearn model {fit,validate,test,predict}``.

Usage::

    python tools/train.py [fit|validate|test|predict] --config cfg.yaml [--config more.yaml]
        [--ckpt_path PATH] [--section.key value | --section.key=value ...]

A bare ``--config`` means ``fit``. Configs are Lightning-CLI shaped (``model``, ``data``,
``trainer`` sections with ``class_path``/``init_args``); ``rslearn.*`` class paths map to
``rskeras.*``. ``model.init_args.task`` is linked from ``data.init_args.task`` as in
rslearn. Configs and overrides apply in command-line order
(``rskeras.config.command_line``). Every error names the YAML key at fault. The model is
built by ``rskeras.run.build_run``, as for every other command.

Project management (``--management_dir``, ``--project_name``, ``--run_name``, ...) follows
rslearn: the run directory is ``<management_dir>/<project_name>/<run_name>``, checkpoints
there are found by ``load_checkpoint_mode`` (auto/none/last/best) and
``load_checkpoint_required`` (auto/yes/no). See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import yaml

from rskeras.config.command_line import split_command_line
from rskeras.config.errors import ConfigError
from rskeras.config.loader import Override, load_config
from rskeras.run import Run, build_run, default_root_dir

logger = logging.getLogger("rskeras")

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# The split whose first batch builds the model of each subcommand.
SUBCOMMAND_STAGES = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}
CHECKPOINT_SUFFIXES = (".weights.h5", ".ckpt")

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


SUBCOMMAND_HELP = {
    "fit": "Train a model (resuming an interrupted run of the same run directory), reload the best checkpoint, "
    "validate it (and, with --trainer.export_saved_model true, export a SavedModel into the run directory).",
    "validate": "Compute the validation metrics of a checkpoint (--ckpt_path).",
    "test": "Compute the test metrics of a checkpoint (--ckpt_path); writes visualisations and the metrics file "
    "when the model asks for them.",
    "predict": "Run a checkpoint (--ckpt_path) over the predict split; the config's prediction writer "
    "(rslearn.train.prediction_writer.RslearnWriter) writes the outputs into each window.",
}

CLASS_HELP = """class help:
  --trainer.help              the trainer keys, with types, defaults and descriptions
  --model.help CLASS          the arguments of a class at that config key, e.g.
                              --model.init_args.model.init_args.encoder.0.help rslearn.models.swin.Swin
  --data.help CLASS           e.g. --data.help rslearn.train.data_module.RslearnDataModule
"""


def build_parser(prog: str = "train.py", subcommand: str | None = None) -> argparse.ArgumentParser:
    """The parser of the CLI's own arguments (config overrides are split off first)."""
    from rskeras.config.class_paths import ALLOW_ENV, ALLOW_FLAG

    description = "Train, evaluate and predict with rskeras models configured by rslearn-style YAML."
    if subcommand:
        description = f"{subcommand}: {SUBCOMMAND_HELP[subcommand]}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=EPILOG + "\n" + CLASS_HELP,
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
    parser.add_argument(
        "--print_config",
        action="store_true",
        help="check the merged config against every class it names (nothing is built) and print it with every "
        "default filled in; a misspelled key or a wrong type is an error (exit code 2)",
    )
    parser.add_argument(
        ALLOW_FLAG,
        dest="allow_class_prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="let the config build classes whose path starts with PREFIX (repeatable; also $"
        f"{ALLOW_ENV}). By default only rskeras classes, the rslearn/Lightning/torch.nn names mapped onto "
        "them and a few Keras callbacks are allowed",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="predict: only shard I of N (0-based) of the windows, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT "
        "(TF_CONFIG with several workers sets it too); completed windows are skipped (see docs/scale.md)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error (else it goes to <run dir>/error.log)")
    return parser


def parse_args(argv: list[str], prog: str = "train.py") -> tuple[argparse.Namespace, list[Override]]:
    """Parses the command line: (the CLI's own arguments, dotted config overrides)."""
    rest, overrides = split_command_line(argv, prog=prog)
    subcommand = rest[0] if rest and rest[0] in SUBCOMMANDS else None
    return build_parser(prog, subcommand).parse_args(rest), overrides


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


# ---- the commands ------------------------------------------------------------------------


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """The values of a repeatable ``--flag VALUE`` / ``--flag=VALUE`` in ``argv``."""
    values = []
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif item.startswith(flag + "="):
            values.append(item.split("=", 1)[1])
    return values


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"\n{title}")
    for key in sorted(metrics):
        print(f"  {key}: {metrics[key]:.4f}")


def fit(r: Run, ckpt_path: str | None) -> None:
    """``fit``: train, reload the best checkpoint, validate; export a SavedModel when
    ``trainer.export_saved_model`` asks for it (off by default: ``rskeras export`` does it
    from a checkpoint later)."""
    from rskeras.train.fit_timings import seconds_since_process_start

    startup_wall, startup_cpu = seconds_since_process_start(), time.process_time()
    start = time.time()
    r.trainer.fit(r.lm, r.data, ckpt_path=ckpt_path)
    elapsed = time.time() - start
    timings = r.trainer.timings
    if startup_wall is not None:
        timings.add("startup", startup_wall, startup_cpu)
    timings.start("best_checkpoint")
    best = r.trainer.best_checkpoint()
    metrics = None
    if best:
        r.load_checkpoint(best)
        print(f"\nloaded best checkpoint {best}")
        # The metrics this fit logged for the best epoch are those of these weights: no
        # second validation pass (it would compute the same numbers).
        metrics = r.trainer.logged_val_metrics(best)
    if metrics is None:
        metrics = r.trainer.evaluate(r.lm, r.data, "val") if r.has_validation() else {}
    timings.stop("best_checkpoint")
    print_metrics(f"validation metrics ({'best' if best else 'last'} weights, fit took {elapsed:.1f}s):", metrics)
    if r.trainer.fast_dev_run:
        print("fast_dev_run: nothing written (no checkpoints, logs, metrics or SavedModel)")
        return
    if r.trainer.export_saved_model and r.trainer.is_chief:
        from rskeras.export.saved_model import export_run_saved_model

        timings.start("export")
        path = export_run_saved_model(r, os.path.join(r.root, "saved_model"))
        timings.stop("export")
        print(f"SavedModel written to {path}")
    r.trainer.write_timings()


def evaluate(r: Run, stage: str, ckpt_path: str | None) -> None:
    """``validate`` / ``test``: metrics of a split; for test, visualisations and the
    metrics file."""
    metrics = r.trainer.evaluate(r.lm, r.data, stage)
    print_metrics(f"{stage} metrics:", metrics)
    if stage != "test":
        return
    if r.lm.visualize_dir:
        from rskeras.train.visualize import write_visualizations

        write_visualizations(r.lm, r.data, r.lm.visualize_dir, "test", r.trainer.steps(r.data, "test"))
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


def run(argv: list[str] | None = None, prog: str = "train.py") -> int:
    argv = sys.argv[1:] if argv is None else argv
    from rskeras.config.class_paths import set_allowed_prefixes
    from rskeras.config.help import help_for, help_request

    if "--trainer.help" in argv:  # takes no class (and so no value)
        print(help_for("trainer", ""))
        return 0
    rest, overrides = split_command_line(argv, prog=prog)
    request = help_request(overrides)
    if request is not None:
        set_allowed_prefixes(_flag_values(rest, "--allow-class-prefix"))
        print(help_for(*request))
        return 0
    args, overrides = parse_args(argv, prog)
    set_allowed_prefixes(args.allow_class_prefix)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, overrides)
    if args.ckpt_path:
        config["ckpt_path"] = args.ckpt_path
    apply_project_management(config, args.subcommand)
    if args.shard is not None and args.subcommand != "predict":
        raise ConfigError(f"--shard is for predict, not {args.subcommand}")
    if args.subcommand == "predict":
        from rskeras.train.sharding import apply_predict_shard

        apply_predict_shard(config, args.shard)
    if args.print_config:
        from rskeras.run import filled_config

        print(yaml.safe_dump(filled_config(config), sort_keys=False, default_flow_style=None), end="")
        return 0
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is not None and not isinstance(ckpt_path, str):
        raise ConfigError(f"ckpt_path: expected a path, got {ckpt_path!r}")
    from rskeras.train.sharding import NothingToPredict

    try:
        r = build_run(config, SUBCOMMAND_STAGES[args.subcommand], default_root_dir(args.config))
    except NothingToPredict as e:
        print(e)
        return 0
    if args.subcommand == "fit" and not r.trainer.fast_dev_run:
        r.trainer.lock_run_dir()  # before anything is written to the run directory
    if r.trainer.is_chief and not r.trainer.fast_dev_run:
        r.save_config()
    if args.subcommand == "fit":
        fit(r, ckpt_path)
        return 0
    if ckpt_path:
        r.load_checkpoint(ckpt_path)
    else:
        logger.warning("no --ckpt_path given: %s uses freshly initialised weights", args.subcommand)
    if args.subcommand == "predict":
        from rskeras.train.prediction_writer import run_predict

        run_predict(r.trainer, r.lm, r.data)
    else:
        evaluate(r, SUBCOMMAND_STAGES[args.subcommand], ckpt_path)
    return 0


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """The command: a user error is one line on stderr and exit code 2 (the traceback in
    ``<run dir>/error.log``, or on stderr with ``--verbose``); a non-finite training loss
    exits with code 3."""
    from rskeras.errors import EXIT_TRAINING_STOPPED, report_user_errors

    def guarded(args: list[str]) -> int:
        try:
            return run(args, prog=prog)
        except RuntimeError as e:
            trainer = sys.modules.get("rskeras.train.trainer")  # imported once training ran
            if trainer is None or not isinstance(e, trainer.NonFiniteLossError):
                raise
            print(f"\ntraining stopped: {e}", file=sys.stderr)
            return EXIT_TRAINING_STOPPED

    return report_user_errors(guarded, argv, prog)
