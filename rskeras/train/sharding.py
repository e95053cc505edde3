"""Splitting the windows of ``predict`` between independent worker processes.

A shard ``i/N`` holds the windows whose ``sha256("<group>/<name>")`` is ``i`` modulo
``N``: a pure function of the window, so every worker, and every rerun of a worker, agrees
on who predicts what without talking to the others, whatever the other workers have
already written and whichever windows were added since. The union of the N shards is the
window selection of a single-process run (the shard is taken last, after groups, tags,
input availability, ``output_layer_name_skip_inference_if_exists`` and ``num_samples``).

The shard comes from ``--shard i/N`` (Slurm arrays, Kubernetes indexed jobs: ``--shard
$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) or from ``TF_CONFIG``, with the convention
of multi-worker fit: the cluster's ``chief`` (if any) is shard 0, then ``worker`` 0, 1, ...
in order. See docs/scale.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any

from rskeras.config.errors import ConfigError

logger = logging.getLogger(__name__)


class NothingToPredict(ValueError):
    """Every window of the predict split is already completed or in another shard."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self.index}/{self.count}: expected i/N with N >= 1 and 0 <= i < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def contains(self, group: str, name: str) -> bool:
        """Whether window ``group/name`` belongs to this shard."""
        if self.count == 1:
            return True
        digest = hashlib.sha256(f"{group}/{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def parse_shard(text: str | Shard | None, key: str = "--shard") -> Shard | None:
    """``"i/N"`` -> Shard (None stays None)."""
    if text is None or isinstance(text, Shard):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"{key}: expected i/N (e.g. 0/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"{key}: expected i/N with N >= 1 and 0 <= i < N, got {text!r}")
    return Shard(index, count)


def shard_from_tf_config(environ: dict[str, str] | None = None) -> Shard | None:
    """The shard of this process from ``TF_CONFIG`` (None without one, or with a single
    worker): ``chief`` first, then the ``worker`` tasks in order."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster = config.get("cluster") or {}
    task = config.get("task") or {}
    chiefs = len(cluster.get("chief") or [])
    workers = len(cluster.get("worker") or [])
    if chiefs + workers <= 1:
        return None
    task_type, index = task.get("type"), task.get("index", 0)
    if not isinstance(index, int) or task_type not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG: predict needs task.type chief or worker and an integer task.index, got {task!r}")
    position = index if task_type == "chief" else chiefs + index
    limit = chiefs if task_type == "chief" else workers
    if not 0 <= index < limit:
        raise ConfigError(f"TF_CONFIG: task {task_type} {index} is not in the cluster ({limit} {task_type} task(s))")
    return Shard(position, chiefs + workers)


def resolve_shard(cli_value: str | None) -> Shard | None:
    """``--shard`` when given (it must agree with ``TF_CONFIG`` when both are set), else
    the ``TF_CONFIG`` shard."""
    from_cli = parse_shard(cli_value)
    from_env = shard_from_tf_config()
    if from_cli is not None and from_env is not None and from_cli != from_env:
        raise ConfigError(f"--shard {from_cli} disagrees with TF_CONFIG, which makes this process shard {from_env}")
    return from_cli or from_env


def writer_output_layers(config: dict[str, Any]) -> list[str]:
    """Output layers of the RslearnWriter callbacks of a config, in order."""
    layers = []
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("prediction_writer.RslearnWriter"):
            layer = (callback.get("init_args") or {}).get("output_layer")
            if isinstance(layer, str):
                layers.append(layer)
    return layers


def apply_predict_shard(config: dict[str, Any], shard_arg: str | None) -> None:
    """Sharded prediction (``--shard i/N`` or ``TF_CONFIG``): the data module predicts only
    its shard, completed windows are skipped (``output_layer_name_skip_inference_if_exists``
    defaults to the last writer's layer, written last for each window) and TF_CONFIG is
    not used to build a multi-worker strategy: every worker predicts on its own."""
    shard = resolve_shard(shard_arg)
    os.environ.pop("TF_CONFIG", None)
    if shard is None:
        return
    data = config.get("data")
    if not isinstance(data, dict):
        return
    init = data.setdefault("init_args", {})
    init["predict_shard"] = str(shard)
    layers = writer_output_layers(config)
    split = init.get("predict_config")
    if split is None:
        split = init["predict_config"] = {}
    if isinstance(split, dict) and "class_path" in split:
        split = split.setdefault("init_args", {})
    if isinstance(split, dict) and layers and not split.get("output_layer_name_skip_inference_if_exists"):
        split["output_layer_name_skip_inference_if_exists"] = layers[-1]
        logger.info("predict shard %s: skipping windows whose layer %s is completed", shard, layers[-1])
