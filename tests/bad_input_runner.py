"""Runs many short rskeras commands cheaply: TensorFlow and rskeras are imported once, then
every command runs in a forked child that ends like a real process (``sys.exit`` and the
interpreter's normal finalization, where the data-pipeline hangs happened).

    python tests/bad_input_runner.py SPEC.json

SPEC: ``{"timeout": seconds, "runs": [{"id", "argv", "cwd", "log_dir", "repeat"}]}``;
``argv`` is the command line of ``tools/train.py``. Each run's stdout and stderr go to
``<log_dir>/<id>.<k>.out`` / ``.err``. Prints one JSON object: id -> list of
``{"rc", "seconds", "hung"}`` (``hung``: killed after ``timeout`` seconds, rc null).

The children are forked before TensorFlow runs any op (importing it starts no runtime),
which is what makes forking safe here.
"""

from __future__ import annotations

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


def wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, True
        time.sleep(0.02)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    results: dict[str, list[dict]] = {}
    for run in spec["runs"]:
        for k in range(int(run.get("repeat", 1))):
            out = os.path.join(run["log_dir"], f"{run['id']}.{k}")
            start = time.monotonic()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                # The child: the command, then the interpreter's normal exit.
                os.chdir(run["cwd"])
                for fd, suffix in ((1, ".out"), (2, ".err")):
                    handle = os.open(out + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(handle, fd)
                    os.close(handle)
                sys.exit(rskeras.lightning_cli.main(list(run["argv"])))
            rc, hung = wait(pid, float(spec.get("timeout", 120)))
            results.setdefault(run["id"], []).append({"rc": rc, "seconds": round(time.monotonic() - start, 2), "hung": hung})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
