"""The ``rskeras`` command (also ``python -m rskeras``): one entry point for every tool.

::

    rskeras fit|validate|test|predict --config cfg.yaml [...]   # rskeras.lightning_cli
    rskeras export --config cfg.yaml --checkpoint best.weights.h5 --format tflite
    rskeras predict-tflite --model m.tflite --input scene.tif --output out.tif
    rskeras convert-weights last.ckpt model.npz
    rskeras benchmark input|train-step|detection|all          # needs a source checkout
    rskeras make-sample-dataset data/sample                    # needs a source checkout

``tools/*.py`` are thin wrappers around the same functions. Every command reports a user
error (bad config, dataset, checkpoint, argument) as one line on stderr with exit code 2
(``rskeras.errors``); ``--verbose`` prints the traceback too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
# The developer tools that stay scripts in the source checkout (they use its configs/).
CHECKOUT_TOOLS = {"benchmark": "benchmark.py", "make-sample-dataset": "make_sample_dataset.py"}

USAGE = """\
usage: rskeras COMMAND [ARGS ...]   (rskeras COMMAND --help for a command's arguments)

commands:
  fit, validate, test, predict   train and evaluate with an rslearn-style YAML config
  export                         export a trained model to a SavedModel or TFLite
  predict-tflite                 run an exported .tflite model over a GeoTIFF scene (no TensorFlow)
  convert-weights                convert a PyTorch weights file into a .npz / .safetensors state dict
  benchmark                      throughput figures (source checkout only)
  make-sample-dataset            write the small sample dataset (source checkout only)

--verbose (any command) prints the traceback of an error; see docs/training.md.
"""


def _checkout_tool(name: str) -> Callable[[list[str]], int]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "tools", CHECKOUT_TOOLS[name])

    def run(argv: list[str]) -> int:
        if not os.path.exists(path):
            print(f"rskeras {name}: needs a source checkout of rskeras (tools/{CHECKOUT_TOOLS[name]} not found under {root})", file=sys.stderr)
            return 2
        tools_dir = os.path.dirname(path)
        for entry in (root, tools_dir):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        spec = importlib.util.spec_from_file_location(f"rskeras_tools_{name.replace('-', '_')}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return int(module.main(argv) or 0)

    return run


def command(name: str) -> Callable[..., int] | None:
    """The ``main(argv, prog)`` of command ``name`` (None: no such command)."""
    if name in TRAIN_COMMANDS:
        from rskeras import lightning_cli

        return lambda argv, prog: lightning_cli.main([name] + argv, prog=prog)
    if name == "export":
        from rskeras.export import cli

        return cli.main
    if name == "predict-tflite":
        from rskeras.export import predict_tflite

        return predict_tflite.main
    if name == "convert-weights":
        from rskeras.weights import convert

        return convert.main
    if name in CHECKOUT_TOOLS:
        from rskeras.errors import report_user_errors

        return lambda argv, prog: report_user_errors(_checkout_tool(name), argv, prog)
    return None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``rskeras COMMAND ...``; ``prog`` names the command in messages (the tools pass
    their script name)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name.startswith("-"):
        # `rskeras --config cfg.yaml` means fit, as `train.py --config cfg.yaml` does.
        name, rest = "fit", argv
    main_fn = command(name)
    if main_fn is None:
        import difflib

        names = list(TRAIN_COMMANDS) + ["export", "predict-tflite", "convert-weights"] + list(CHECKOUT_TOOLS)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"rskeras: error: unknown command '{name}'{hint}\n{USAGE}", file=sys.stderr, end="")
        return 2
    return int(main_fn(rest, prog=prog or f"rskeras {name}") or 0)
