#!/usr/bin/env python
"""Convert a PyTorch weights file into a torch-free state dict (.npz or .safetensors).

Inputs: an rslearn Lightning ``.ckpt`` (its ``state_dict`` is selected unless
``--selector`` says otherwise), a SatlasPretrain ``.pth``, a torchvision ``.pth`` (e.g.
Swin ImageNet weights), or any ``.npz`` / ``.safetensors`` state dict. The key rules
are rslearn's ``restore_config`` ones, applied in this order: ``--selector``,
``--ignore``, ``--remap``. torch is used when installed (``torch.load(weights_only=True)``);
otherwise, or with ``--no-torch``, a restricted pure-Python reader handles torch zip
files. The output is written to a temporary file and renamed into place; a key/shape
summary is printed.

Examples::

    # whole rslearn model, keys relative to the model (encoder.0..., decoder.0...)
    python tools/convert_weights.py last.ckpt model.npz --selector state_dict --remap model. ""

    # SatlasPretrain weights, loadable by SatlasPretrain(weights_path=...)
    python tools/convert_weights.py sentinel2_swinb_si_ms.pth satlas.safetensors

    # torchvision Swin-v2-B ImageNet weights for Swin(pretrained=True, weights_path=...)
    python tools/convert_weights.py swin_v2_b-781e5279.pth swin_v2_b.npz
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.models.checkpoint import (  # noqa: E402
    CheckpointError,
    apply_restore_config,
    load_torch_file,
    read_state_dict,
    summarize,
    write_state_dict,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch state dict (.ckpt/.pth/.npz/.safetensors) into a torch-free .npz or .safetensors file."
    )
    parser.add_argument("input", help="input weights file (.ckpt, .pth, .pt, .bin, .npz, .safetensors)")
    parser.add_argument("output", help="output file ending in .npz or .safetensors")
    parser.add_argument(
        "--selector",
        nargs="+",
        default=None,
        metavar="KEY",
        help="keys to descend into the loaded torch object (default: 'state_dict' when present)",
    )
    parser.add_argument("--ignore", action="append", default=[], metavar="PREFIX", help="drop keys starting with PREFIX (repeatable)")
    parser.add_argument(
        "--remap",
        nargs=2,
        action="append",
        default=[],
        metavar=("OLD", "NEW"),
        help="rename keys starting with OLD to start with NEW (repeatable, applied in order)",
    )
    parser.add_argument("--no-torch", action="store_true", help="use the pure-Python torch zip reader even if torch is installed")
    parser.add_argument("--quiet", action="store_true", help="print only the totals")
    return parser


def convert(args: argparse.Namespace) -> dict:
    lower = args.input.lower()
    if lower.endswith((".npz", ".safetensors")):
        obj = read_state_dict(args.input)
        selector = args.selector
    else:
        obj = load_torch_file(args.input, use_torch=False if args.no_torch else None)
        selector = args.selector
        if selector is None and isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            selector = ["state_dict"]
    return apply_restore_config(obj, selector, args.ignore, args.remap)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.output.lower().endswith((".npz", ".safetensors")):
        print(f"error: output {args.output} must end in .npz or .safetensors", file=sys.stderr)
        return 2
    try:
        state = convert(args)
        write_state_dict(state, args.output)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = summarize(state)
    print(summary.splitlines()[-1] if args.quiet else summary)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
