#!/usr/bin/env python
"""Start a tf.data service dispatcher or worker for rskeras input pipelines.

    python tools/data_service.py dispatcher --port 5050
    python tools/data_service.py worker --dispatcher 127.0.0.1:5050          # one per CPU machine (or several)
    python tools/train.py fit --config cfg.yaml \\
        --data.init_args.cache_dir /shared/cache \\
        --data.init_args.data_service '{address: grpc://127.0.0.1:5050}'

The dispatcher hands the splits of each epoch to the workers; the workers run the input
pipeline (graph only: the input cache's reads, random crops, task input processing,
transforms, batching) and stream batches to the trainer. Each process prints its address
and serves until interrupted (Ctrl-C / SIGTERM). The servers listen on every interface of
their machine (a tf.data service limitation): run them inside a trusted network. See
docs/scale.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="data_service.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="start the dispatcher")
    d.add_argument("--port", type=int, default=5050, help="port to serve on (0: a free one; default 5050)")
    d.add_argument("--work_dir", default=None, help="journal directory: a restarted dispatcher resumes its jobs (fault-tolerant mode)")
    w = sub.add_parser("worker", help="start a worker")
    w.add_argument("--dispatcher", required=True, help="the dispatcher's host:port (or grpc://host:port)")
    w.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    w.add_argument("--host", default="127.0.0.1", help="the address trainers reach this worker at (default 127.0.0.1)")
    w.add_argument("--heartbeat_ms", type=int, default=1000, help="how often the worker asks the dispatcher for new work (default 1000)")
    args = parser.parse_args(argv)
    if args.port < 0 or args.port > 65535:
        parser.error(f"--port {args.port}: expected 0..65535")

    from rskeras.train.data_service import start_dispatcher, start_worker

    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.work_dir)
        print(f"dispatcher serving at {server.target.replace('localhost', '127.0.0.1')}", flush=True)
    else:
        server = start_worker(args.dispatcher, args.port, args.host, args.heartbeat_ms)
        print(f"worker serving at {args.host}:{server._address.rsplit(':', 1)[-1]} for dispatcher {args.dispatcher}", flush=True)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
