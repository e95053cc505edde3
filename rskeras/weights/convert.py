"""The ``tools/convert_weights.py`` command line: a PyTorch weights file -> a torch-free
state dict (``.npz`` or ``.safetensors``).

Inputs: an rslearn Lightning ``.ckpt`` (its ``state_dict`` is selected unless
``--selector`` says otherwise), a SatlasPretrain ``.pth``, a torchvision ``.pth`` (e.g.
Swin ImageNet weights), or any ``.npz`` / ``.safetensors`` state dict. The key rules are
rslearn's ``restore_config`` ones, applied in this order: ``--selector``, ``--ignore``,
``--remap``. torch is used when installed (``torch.load(weights_only=True)``); otherwise,
or with ``--no-torch``, a restricted pure-Python reader handles torch zip files. The
output is written to a temporary file and renamed into place; a key/shape summary is
printed. numpy only: no TensorFlow import.
"""

from __future__ import annotations

import argparse
import sys

from rskeras.weights.errors import CheckpointError
from rskeras.weights.files import read_with_key_rules, summarize, write_state_dict

OUTPUT_SUFFIXES = (".npz", ".safetensors")


def build_parser(prog: str = "convert_weights.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a PyTorch state dict (.ckpt/.pth/.npz/.safetensors) into a torch-free .npz or .safetensors file.",
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


def main(argv: list[str] | None = None, prog: str = "convert_weights.py") -> int:
    """The command: a bad input file is one line on stderr and exit code 2."""
    from rskeras.errors import report_user_errors

    return report_user_errors(lambda args: run(args, prog), argv, prog)


def run(argv: list[str], prog: str = "convert_weights.py") -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.output.lower().endswith(OUTPUT_SUFFIXES):
        print(f"{prog}: error: output {args.output} must end in .npz or .safetensors", file=sys.stderr)
        return 2
    try:
        state = read_with_key_rules(
            args.input, args.selector, args.ignore, args.remap, use_torch=False if args.no_torch else None, lightning_state_dict=True
        )
        write_state_dict(state, args.output)
    except (CheckpointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    summary = summarize(state)
    print(summary.splitlines()[-1] if args.quiet else summary)
    print(f"wrote {args.output}")
    return 0
