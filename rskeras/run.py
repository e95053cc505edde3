"""The composition root: everything one config builds, for every command.

``build_run(config, stage)`` turns a merged config (``model``, ``data``, ``trainer``
sections; see ``rskeras.config.loader``) into a :class:`Run`: the trainer, the
distribution strategy, the data module and the Lightning module with its weights
created and compiled. ``tools/train.py`` (``rskeras.lightning_cli``), ``tools/export.py``
(``rskeras.export.cli``) and scripts build their models this way, so that a model is
the same whichever command builds it.

Order: trainer (precision policy, determinism) -> strategy -> data module -> model in
the strategy scope (``model.init_args.task`` linked from ``data.init_args.task`` as in
rslearn) -> weights created on a real batch of ``stage`` -> compile.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
from typing import TYPE_CHECKING, Any

from rskeras.config.errors import ConfigError
from rskeras.config.loader import TOP_LEVEL_KEYS

if TYPE_CHECKING:
    import tensorflow as tf

    from rskeras.train.data_module import RslearnDataModule
    from rskeras.train.lightning_module import RslearnLightningModule
    from rskeras.train.trainer import Trainer

logger = logging.getLogger(__name__)

STAGES = ("train", "val", "test", "predict")


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


def default_root_dir(config_paths: list[str]) -> str:
    """The run directory of a config given no ``trainer.default_root_dir``:
    ``runs/<stem of the last config file>``."""
    stem = os.path.splitext(os.path.basename(config_paths[-1]))[0]
    return os.path.join("runs", stem)


@dataclasses.dataclass
class Run:
    """What :func:`build_run` builds from one config.

    Attributes:
        config: the merged config it was built from.
        stage: the split whose first batch created the weights (``train``, ``val``,
            ``test`` or ``predict``).
        trainer: the ``trainer:`` section.
        strategy: the ``tf.distribute`` strategy the model lives in.
        data: the data module (``data:``).
        lm: the Lightning module (``model:``), built and compiled.
        input_specs: the model-input dict's ``TensorSpec``s (batched) of ``stage``.
    """

    config: dict[str, Any]
    stage: str
    trainer: Trainer
    strategy: tf.distribute.Strategy
    data: RslearnDataModule
    lm: RslearnLightningModule
    input_specs: dict[str, tf.TensorSpec]

    @property
    def root(self) -> str:
        """The run directory (``trainer.default_root_dir``, per worker)."""
        return self.trainer.root

    def has_validation(self) -> bool:
        """Whether fit validates (a val split with batches, ``limit_val_batches`` not 0)."""
        return self.trainer.has_validation(self.data)

    def load_checkpoint(self, path: str) -> None:
        """Model weights (no optimizer or training state) for validate/test/predict/export:
        an rskeras ``.weights.h5`` checkpoint, or torch weights (``rskeras.weights``)."""
        if path.endswith(".weights.h5"):
            from rskeras.train.callbacks.checkpointing import load_training_checkpoint

            load_training_checkpoint(self.lm, path, with_optimizer=False)
            logger.info("loaded weights from %s", path)
            return
        from rskeras.weights.restore import load_torch_weights

        load_torch_weights(self.lm.model, path)

    def save_config(self) -> None:
        """Writes the config to ``<root>/config.yaml`` (atomically)."""
        import yaml

        from rskeras.utils.fileio import atomic_write_text

        os.makedirs(self.root, exist_ok=True)
        atomic_write_text(os.path.join(self.root, "config.yaml"), yaml.safe_dump(self.config, sort_keys=False))


def check_config(config: dict[str, Any]) -> None:
    """The checks that come before anything is built: top-level keys, the required
    sections, and the class-path allow-list over every section (``subprocess.Popen``
    anywhere is refused before any class is imported or constructed)."""
    from rskeras.config.class_paths import check_class_paths

    if not isinstance(config, dict):
        raise ConfigError(f"the top level of a config must be a mapping, got {type(config).__name__}")
    unknown = set(config) - TOP_LEVEL_KEYS
    if unknown:
        import difflib

        hints = [f"{k} (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(k, TOP_LEVEL_KEYS, n=1)) else k for k in sorted(unknown)]
        raise ConfigError(f"unknown top-level config keys {hints} (expected {sorted(TOP_LEVEL_KEYS)})")
    for section in ("model", "data"):
        if config.get(section) is None:
            raise ConfigError(f"{section}: section is required (a class_path/init_args mapping; see docs/config.md)")
        if not isinstance(config[section], dict):
            raise ConfigError(f"{section}: expected a class_path/init_args mapping, got {type(config[section]).__name__}")
    trainer = config.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ConfigError(f"trainer: expected a mapping of Trainer arguments, got {type(trainer).__name__}")
    check_class_paths(config)


def filled_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config checked against every class it names, without constructing anything,
    with every default filled in (``--print_config``). ``model.init_args.task`` stays out
    when it is linked from ``data.init_args.task``."""
    from rskeras.utils.tf_import import import_tensorflow

    check_config(config)
    import_tensorflow()
    from rskeras.config.instantiate import build, instantiate
    from rskeras.train.trainer import Trainer

    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "model":
            linked = "task" not in (value.get("init_args") or {})
            out[key] = instantiate(value, "model", extra={"task": None} if linked else None, dry=True)
        elif key == "data":
            out[key] = instantiate(value, "data", dry=True)
        elif key == "trainer":
            out[key] = build(Trainer, dict(value or {}), "trainer", dry=True)
        else:
            out[key] = value
    if "trainer" not in out:
        out["trainer"] = build(Trainer, {}, "trainer", dry=True)
    return out


def build_run(config: dict[str, Any], stage: str, default_root: str | None = None) -> Run:
    """Builds the :class:`Run` of a merged config.

    Args:
        config: the config (top-level keys of ``rskeras.config.loader.TOP_LEVEL_KEYS``;
            ``model`` and ``data`` are required).
        stage: the split whose first batch creates the weights and gives the input specs
            (``train`` for fit, ``val``, ``test``, ``predict``).
        default_root: the run directory when the config sets no
            ``trainer.default_root_dir`` (the CLIs pass :func:`default_root_dir`); else
            the trainer's default, ``runs/default``.
    """
    if stage not in STAGES:
        raise ValueError(f"build_run: stage must be one of {STAGES}, got {stage!r}")
    check_config(config)
    from rskeras.utils.tf_import import import_tensorflow

    import_tensorflow()
    from rskeras.config.instantiate import build, instantiate
    from rskeras.train.host_calls import surface_errors
    from rskeras.train.trainer import Trainer

    seed = seed_everything(config.get("seed_everything"))
    trainer_cfg = dict(config.get("trainer") or {})
    if not trainer_cfg.get("default_root_dir") and default_root:
        trainer_cfg["default_root_dir"] = default_root
    trainer = build(Trainer, trainer_cfg, "trainer")
    from rskeras.errors import note_run_dir

    note_run_dir(trainer.root)  # where a user error's traceback goes (error.log)
    if trainer.deterministic and seed is None:
        # TF's op determinism refuses unseeded random ops.
        logger.info("trainer.deterministic without seed_everything: seeding with 0")
        seed_everything(0)
    trainer.setup_environment(stage, config.get("model"))
    try:
        strategy = trainer.make_strategy()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data = instantiate(config["data"], "data")
    model_cfg = copy.deepcopy(config["model"])
    extra = {}
    if "task" not in (model_cfg.get("init_args") or {}):
        extra["task"] = data.task
    with strategy.scope():
        lm = instantiate(model_cfg, "model", extra=extra)
        # One pipeline gives both the input specs and the batch that builds the weights.
        dataset = data.tf_dataset(stage, shuffle=False)
        input_specs = dataset.element_spec[0]
        with surface_errors():
            batch = next(iter(dataset))[0]
        # The weights' shapes do not depend on the batch size: one example builds them
        # (an eager forward pass of a whole batch costs seconds on CPU for big models).
        import tensorflow as tf

        lm.build_from_batch(tf.nest.map_structure(lambda t: t[:1], batch))
        lm.compile(optimizer=lm.make_optimizer(), jit_compile=False)
    return Run(config, stage, trainer, strategy, data, lm, input_specs)
