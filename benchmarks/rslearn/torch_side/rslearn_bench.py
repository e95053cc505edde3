"""The rslearn (PyTorch) half of ``tools/benchmark.py step`` / ``inference`` / parity checks.

Runs inside the rslearn venv (torch + rslearn 0.1.19), never in rskeras' Python: the
rskeras package and its tests must not need torch. The model and data module come from
an rslearn config exactly as ``rslearn model fit`` builds them (RslearnLightningCLI with
``run=False``, callbacks and logger dropped).

    python rslearn_bench.py step      --config CFG --out OUT.json [--steps 20] [--warmup 3]
    python rslearn_bench.py inference --config CFG --out OUT.json [--sizes 64 256] [--repeats 20]
    python rslearn_bench.py init      --config CFG --out OUT.npz [--seed 0]
    python rslearn_bench.py trajectory --config CFG --out OUT.json [--steps 16] [--seed 0]

* ``step``: ms per training step (forward + backward + AdamW step, train mode) on one batch
  held in memory: the first batch of the val split (not shuffled, so rskeras can take the
  same windows). The batch's images (NHWC) are saved next to OUT as ``<OUT>.batch.npz``
  so that the caller can check both systems timed the same data.
* ``inference``: per-tile latency, batch 1, eager torch in eval mode under
  ``torch.inference_mode`` (what ``rslearn model predict`` runs), of the first val image
  tiled to each size.
* ``init``: the freshly initialised model's state dict (keys of rslearn's module tree
  without the Lightning ``model.`` prefix) as .npz, after ``seed_everything(seed)``; the
  first val batch's NHWC images, targets and the eval-mode loss and gradients go to
  ``<OUT>.batch.npz`` (for layer-by-layer comparisons with rskeras).

* ``trajectory``: the training loss of ``--steps`` AdamW steps from the seeded fresh
  weights (saved as ``<OUT>.init.npz``) on the val batches in order (repeated), in train
  mode with stochastic depth switched off, so that rskeras can replay exactly the same
  steps (``benchmarks/rslearn/compare_training.py``).

Environment: ``RSLEARN_ANCHOR`` as the configs need; ``WANDB_MODE=disabled``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def build(config: str, seed: int | None = None):
    """(lightning module, data module) of an rslearn config, set up for fit."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from rslearn.arg_parser import RslearnArgumentParser
    from rslearn.lightning_cli import RslearnLightningCLI
    from rslearn.utils.jsonargparse import init_jsonargparse

    init_jsonargparse()
    args = ["--config", config, "--trainer.callbacks=[]", "--trainer.logger=false"]
    if seed is not None:
        args.append(f"--seed_everything={seed}")
    cli = RslearnLightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        args=args,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=RslearnArgumentParser,
        run=False,
    )
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


def first_val_batch(dm):
    loader = dm.val_dataloader()
    return next(iter(loader))


def context_of(inputs, metadatas):
    from rslearn.train.model_context import ModelContext

    return ModelContext(inputs=inputs, metadatas=metadatas)


def images_nhwc(inputs, key: str = "image") -> np.ndarray:
    """``[B, T, H, W, C]`` numpy of the batch's raster input ``key`` (rslearn holds CTHW)."""
    return torch.stack([i[key].image for i in inputs]).numpy().transpose(0, 2, 3, 4, 1)


def timed_ms(fn, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(np.mean(times)), "repeats": repeats}


def run_step(args) -> dict:
    lm, dm = build(args.config, seed=0)
    inputs, targets, metadatas = first_val_batch(dm)
    np.savez(args.out + ".batch.npz", image=images_nhwc(inputs))
    optimizer = lm.configure_optimizers()["optimizer"]
    lm.train()
    context = context_of(inputs, metadatas)

    def step():
        optimizer.zero_grad()
        output = lm.model(context, targets)
        loss = sum(output.loss_dict.values())
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    result = timed_ms(step, args.steps, args.warmup)
    result.update(batch_size=len(inputs), torch_threads=torch.get_num_threads(), loss_after=step())
    return result


def tile(image: torch.Tensor, size: int) -> torch.Tensor:
    """CTHW image tiled and cut to ``size`` x ``size``."""
    h, w = image.shape[-2:]
    reps = (1, 1, -(-size // h), -(-size // w))
    return image.repeat(*reps)[..., :size, :size].contiguous()


def run_inference(args) -> dict:
    from rslearn.train.model_context import RasterImage

    lm, dm = build(args.config, seed=0)
    inputs, _targets, metadatas = first_val_batch(dm)
    lm.eval()
    results = {"torch_threads": torch.get_num_threads()}
    for size in args.sizes:
        image = RasterImage(tile(inputs[0]["image"].image, size), inputs[0]["image"].timestamps)
        context = context_of([{"image": image}], metadatas[:1])

        def infer():
            with torch.inference_mode():
                return lm.model(context).outputs

        results[f"{size}x{size}"] = {"eager": timed_ms(infer, args.repeats, args.warmup)}
    return results


def run_init(args) -> dict:
    lm, dm = build(args.config, seed=args.seed)
    state = {k[len("model.") :]: v.detach().numpy() for k, v in lm.state_dict().items() if k.startswith("model.")}
    np.savez(args.out, **state)
    inputs, targets, metadatas = first_val_batch(dm)
    lm.eval()
    output = lm.model(context_of(inputs, metadatas), targets)
    loss = sum(output.loss_dict.values())
    if isinstance(loss, torch.Tensor) and loss.requires_grad:  # FasterRCNN has no eval losses
        loss.backward()
    loss = torch.as_tensor(loss, dtype=torch.float32)
    extra = {}
    for key, value in targets[0].items():
        if isinstance(value, torch.Tensor):
            extra["target/" + key] = torch.stack([t[key] for t in targets]).numpy()
    grads = {"grad/" + k[len("model.") :]: p.grad.numpy() for k, p in lm.named_parameters() if p.grad is not None}
    np.savez(args.out + ".batch.npz", image=images_nhwc(inputs), loss=loss.detach().numpy(), **extra, **grads)
    return {"loss": float(loss), "tensors": len(state)}


def run_trajectory(args) -> dict:
    lm, dm = build(args.config, seed=args.seed)
    state = {k[len("model.") :]: v.detach().numpy() for k, v in lm.state_dict().items() if k.startswith("model.")}
    np.savez(args.out + ".init.npz", **state)
    disabled = 0
    for module in lm.modules():
        if type(module).__name__ == "StochasticDepth":
            module.p = 0.0
            disabled += 1
    optimizer = lm.configure_optimizers()["optimizer"]
    lm.train()
    batches = list(dm.val_dataloader())
    losses = []
    for step in range(args.steps):
        inputs, targets, metadatas = batches[step % len(batches)]
        optimizer.zero_grad()
        output = lm.model(context_of(inputs, metadatas), targets)
        loss = sum(output.loss_dict.values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"losses": losses, "stochastic_depth_disabled": disabled, "batches": len(batches)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("step", "inference", "init", "trajectory"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
        p.add_argument("--repeats", type=int, default=20)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = {"step": run_step, "inference": run_inference, "init": run_init, "trajectory": run_trajectory}[args.what](args)
    if args.what != "init":
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
