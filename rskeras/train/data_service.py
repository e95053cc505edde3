"""The input pipeline on a ``tf.data`` service (``tf.data.experimental.service``).

For machines whose CPUs cannot prepare examples as fast as their accelerators consume
them: a dispatcher and any number of workers (``tools/data_service.py dispatcher`` /
``worker``, on this or other machines) run the pipeline, the trainer only receives
batches. Configured by the data module's ``data_service`` key::

    data:
      init_args:
        cache_dir: /shared/cache          # required: see below
        data_service:
          address: grpc://10.0.0.5:5050   # the dispatcher
          processing_mode: distributed_epoch   # each example once per epoch (default)
          job_name: null                  # share one job between trainers (optional)
          stages: [train]                 # stages served (default: train)

The workers are plain TensorFlow processes that execute the serialized pipeline graph,
so the pipeline must be graph-only: that is the input cache's (``cache_dir``: the first
run decodes every window's GeoTIFFs once into unit files, in parallel on the trainer's
machine; the workers read those files, draw the random crops and item groups, run the
task's input processing, the transforms and the batching). The cache directory must be
readable by the workers at the same path. Samplers (``RandomSamplerFactory`` /
``WeightedRandomSamplerFactory``) draw in Python and cannot be served.

``distributed_epoch`` splits the window index range between the workers: every example
is produced exactly once per epoch (the same multiset as the local pipeline; the order
and the batch composition differ). ``parallel_epochs`` gives every worker the whole
dataset (each example once per worker and epoch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

STAGES = ("train", "val", "test", "predict")
MODES = ("distributed_epoch", "parallel_epochs")


@dataclasses.dataclass(frozen=True)
class DataServiceConfig:
    """The ``data.init_args.data_service`` settings."""

    address: str
    processing_mode: str = "distributed_epoch"
    job_name: str | None = None
    stages: tuple[str, ...] = ("train",)

    @classmethod
    def parse(cls, value: Any, key: str = "data.init_args.data_service") -> "DataServiceConfig":
        if isinstance(value, str):
            value = {"address": value}
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping with 'address' (grpc://host:port), got {value!r}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown} (expected address, processing_mode, job_name, stages)")
        address = value.get("address")
        if not isinstance(address, str) or not address:
            raise ValueError(f"{key}.address: expected the dispatcher address, e.g. grpc://127.0.0.1:5050")
        if "://" not in address:
            address = "grpc://" + address
        mode = value.get("processing_mode", "distributed_epoch")
        if mode not in MODES:
            raise ValueError(f"{key}.processing_mode: expected one of {list(MODES)}, got {mode!r}")
        job_name = value.get("job_name")
        if job_name is not None and not isinstance(job_name, str):
            raise ValueError(f"{key}.job_name: expected a string or null, got {job_name!r}")
        stages = value.get("stages", ["train"])
        if isinstance(stages, str):
            stages = [stages]
        if not isinstance(stages, (list, tuple)) or not stages or any(s not in STAGES for s in stages):
            raise ValueError(f"{key}.stages: expected a list of {list(STAGES)}, got {stages!r}")
        return cls(address, mode, job_name, tuple(stages))

    def distribute(self, dataset: Any, stage: str, md: Any = None) -> Any:
        """``dataset`` produced by the service's workers instead of this process."""
        import tensorflow as tf

        if md is not None and md.split.sampler is not None:
            raise ValueError(
                f"data.init_args.data_service: the {stage} split has a sampler, which draws examples in Python and "
                "cannot run on tf.data service workers (remove the sampler or the stage from data_service.stages)"
            )
        job_name = f"{self.job_name}_{stage}" if self.job_name else None
        return dataset.apply(tf.data.experimental.service.distribute(processing_mode=self.processing_mode, service=self.address, job_name=job_name))


def start_dispatcher(port: int = 0, work_dir: str | None = None) -> Any:
    """Starts a dispatcher in this process (``port`` 0: a free one); returns the server
    (its ``target`` is the address for ``data_service.address``)."""
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, host: str = "127.0.0.1", heartbeat_ms: int = 1000) -> Any:
    """Starts a worker in this process registered with ``dispatcher`` (host:port); clients
    reach it at ``host``:its port. The worker learns of new jobs (every epoch is one) at
    its heartbeat: TensorFlow's default of 30 s would idle every epoch's start."""
    import tensorflow as tf

    address = dispatcher.split("://", 1)[-1]
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=address, worker_address=f"{host}:%port%", port=port, heartbeat_interval_ms=heartbeat_ms
    )
    return tf.data.experimental.service.WorkerServer(config)
