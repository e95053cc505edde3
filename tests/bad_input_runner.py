"""Runs many short rskeras commands cheaply: TensorFlow and rskeras are imported once, then
every command runs in a forked child that ends like a real process (``sys.exit`` and the
interpreter's normal finalization, where the data-pipeline hangs happened).

    python tests/bad_input_runner.py SPEC.json

SPEC: ``{"timeout": seconds, "parallel": n, "runs": [{"id", "argv", "cwd", "log_dir",
"repeat", "mode", "fsize"}]}``. ``mode`` "cli" (default): ``argv`` is the command line of
``tools/train.py``; "data": ``argv`` is ``[config, stage]`` and the child only iterates
that split's input pipeline, letting a data error go uncaught to the top level (the
interpreter then exits holding the traceback, and the pipeline, until finalization: the
hardest case for the teardown). Each run's stdout and stderr go to
``<log_dir>/<id>.<k>.out`` / ``.err``. Up to ``parallel`` children run at once. Prints one
JSON object: id -> list of ``{"rc", "seconds", "hung"}`` (``hung``: killed after
``timeout`` seconds, rc null). ``fsize``: a file size limit for the child (bytes), which
makes writes beyond it fail like writes to a full disk.

The children are forked before TensorFlow runs any op (importing it starts no runtime),
which is what makes forking safe here.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.environ.get("RSKERAS_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow  # noqa: E402,F401  - imported once, before the forks

import rskeras.lightning_cli  # noqa: E402
import rskeras.run  # noqa: E402,F401
import rskeras.train.data_module  # noqa: E402,F401
import rskeras.train.lightning_module  # noqa: E402,F401
import rskeras.train.trainer  # noqa: E402,F401


def iterate_split(config_path: str, stage: str) -> int:
    """The "data" mode: the split's input pipeline, batch after batch (errors surfaced as
    in the trainer, not caught)."""
    from rskeras.config.instantiate import instantiate
    from rskeras.config.loader import load_config

    config = load_config([config_path], [])
    data = instantiate(config["data"], "data")
    try:
        from rskeras.train.host_calls import surface_errors
    except ImportError:  # a tree without it (the "before" runs)
        import contextlib

        surface_errors = contextlib.nullcontext
    with surface_errors():
        for _ in data.tf_dataset(stage):
            pass
    return 0


def child(run: dict, out: str) -> None:
    """In the forked child: the command, then the interpreter's normal exit."""
    os.chdir(run["cwd"])
    for fd, suffix in ((1, ".out"), (2, ".err")):
        handle = os.open(out + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    if run.get("fsize"):
        # A file size limit (RLIMIT_FSIZE): writes past it fail with EFBIG, as on a full disk.
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(run["fsize"]), int(run["fsize"])))
    if run.get("mode", "cli") == "data":
        sys.exit(iterate_split(*run["argv"]))
    sys.exit(rskeras.lightning_cli.main(list(run["argv"])))


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    # The imported modules are never garbage: out of the collector's sight, the children's
    # collections (and their exit) do not touch, hence copy, the parent's pages.
    gc.freeze()
    timeout = float(spec.get("timeout", 120))
    parallel = max(1, int(spec.get("parallel", 1)))
    todo = [(run, k) for run in spec["runs"] for k in range(int(run.get("repeat", 1)))]
    results: dict[str, list[dict]] = {run["id"]: [] for run in spec["runs"]}
    running: dict[int, tuple[dict, float]] = {}
    while todo or running:
        while todo and len(running) < parallel:
            run, k = todo.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(run, os.path.join(run["log_dir"], f"{run['id']}.{k}"))
            running[pid] = (run, time.monotonic())
        for pid, (run, start) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.monotonic() - start
            if done:
                rc, hung = os.waitstatus_to_exitcode(status), False
            elif elapsed > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                rc, hung = None, True
            else:
                continue
            del running[pid]
            results[run["id"]].append({"rc": rc, "seconds": round(elapsed, 2), "hung": hung})
        time.sleep(0.02)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
