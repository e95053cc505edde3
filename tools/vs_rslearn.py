"""rslearn side by side: the machinery behind ``tools/benchmark.py vs-rslearn | step | inference``.

rslearn (PyTorch Lightning) and rskeras run the same six configs (``benchmarks/rslearn/``,
class paths untouched) on the same synthetic dataset (``tools/make_anchor_dataset.py``),
one process at a time, the two systems alternating. rslearn runs in its own Python (a venv
with torch and rslearn 0.1.19, ``--rslearn-python``); rskeras in this one.

Measurements:

* per epoch, from the measurement callback ``anchor_callbacks.EpochStats`` that every
  config names: the rslearn anchor kit's Lightning callback for rslearn (the kit directory
  goes on PYTHONPATH), ``benchmarks/rslearn/rskeras_side/anchor_callbacks.py`` (Keras) for
  rskeras. Train CPU seconds of the process tree, train wall time, samples/s, peak RSS of
  the process tree, the logged metrics;
* per run, from this process: wall time, CPU seconds of the whole child tree, peak RSS of the
  tree (polled every 0.5 s), the 1-minute load average before the run and the CPU that
  *other* processes used during it ("others", in cores: machine busy time from /proc/stat
  minus the run's own CPU, per second).

Runs are stored under ``<work>/results/<config>/<system>/seed<S>-e<N>.json`` and reused on
the next invocation (``--rerun`` to repeat), so a long comparison can be resumed or run one
config at a time (``--configs classification``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks", "rslearn")
RSKERAS_SIDE = os.path.join(BENCH_DIR, "rskeras_side")
TORCH_SIDE = os.path.join(BENCH_DIR, "torch_side", "rslearn_bench.py")
CONFIGS = ["classification", "regression", "segmentation", "per_pixel_regression", "detection", "multitask"]
DEFAULT_KIT = os.environ.get("RSLEARN_ANCHOR_KIT", "/work/shared/rslearn_anchor")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# Metrics compared per config: (logged name, short label). All are "higher is better".
PRIMARY_METRICS: dict[str, list[tuple[str, str]]] = {
    "classification": [("val_accuracy", "accuracy")],
    "regression": [("val_r2", "r2")],
    "segmentation": [("val_mean_iou", "mIoU"), ("val_accuracy", "accuracy")],
    "per_pixel_regression": [("val_r2", "r2")],
    "detection": [("val_mAP", "mAP")],
    "multitask": [("val_regress/r2", "regress r2"), ("val_segment/mean_iou", "segment mIoU")],
}


class BenchmarkError(Exception):
    """A problem with the benchmark's inputs (message is one line for the user)."""


# ---- processes -------------------------------------------------------------------------


def _tree_tools():
    """``benchmarks/rslearn/rskeras_side/proc_tree.py`` (procfs helpers; no Keras import)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rskeras_bench_proc_tree", os.path.join(RSKERAS_SIDE, "proc_tree.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class TreeMonitor(threading.Thread):
    """Polls a process tree: peak summed RSS, CPU seconds per pid (last seen), load."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.cpu_by_pid: dict[int, float] = {}
        self.loads: list[float] = []
        self._stop_event = threading.Event()
        self._tools = _tree_tools()

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self):
        tools = self._tools
        pids = tools.tree_pids(self.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, sum(tools.process_rss_mb(p) for p in pids))
        for p in pids:
            cpu = tools.process_cpu_s(p)
            if cpu > 0:
                self.cpu_by_pid[p] = max(cpu, self.cpu_by_pid.get(p, 0.0))
        self.loads.append(os.getloadavg()[0])

    def stop(self):
        self._stop_event.set()
        self.join(timeout=5)


def wait_for_quiet(max_load: float, settle_s: float) -> float:
    """Waits (up to ``settle_s``) until the 1-minute load average is at most ``max_load``;
    returns the load average when it stopped waiting."""
    deadline = time.time() + settle_s
    load = os.getloadavg()[0]
    announced = False
    while load > max_load and time.time() < deadline:
        if not announced:
            print(f"    waiting for the load average ({load:.2f}) to fall to {max_load} (at most {settle_s:.0f} s) ...", flush=True)
            announced = True
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def run_process(cmd: list[str], env: dict[str, str], log_path: str, timeout_s: float, nice: int = 0) -> dict[str, Any]:
    """Runs ``cmd`` (its own session), logging to ``log_path``; returns wall/CPU/RSS/load
    figures of the process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = machine_busy_s(), time.perf_counter()

    def preexec():
        if nice:
            os.nice(nice)

    def terminated(signum, frame):  # the benchmark itself is stopped: take the run with it
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec, cwd=ROOT)
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            monitor.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    busy = machine_busy_s() - busy0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    own_cpu = max(waited_cpu, sum(monitor.cpu_by_pid.values()))
    return {
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": round(wall, 2),
        "cpu_s": round(own_cpu, 2),
        "peak_rss_mb": round(monitor.peak_rss_mb, 1),
        "load_mean": round(float(np.mean(monitor.loads)), 2) if monitor.loads else None,
        "others_cores": round(max(0.0, busy - own_cpu) / max(wall, 1e-9), 2),
    }


def log_error(path: str) -> str:
    """The most telling line of a failed run's log (an exception or unsupported-op line)."""
    text = log_tail(path, 400).splitlines()
    for marker in ("Detected unsupported operations", "Error:", "error:", "Error", "Traceback"):
        hits = [line.strip() for line in text if marker in line and "error_handler" not in line]
        if hits:
            return hits[-1][:300]
    return (text or ["?"])[-1][:300]


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            content = f.read().splitlines()
    except OSError:
        return ""
    keep = [line for line in content if line.strip() and "oneDNN" not in line and "absl::InitializeLog" not in line]
    return "\n".join(keep[-lines:])


# ---- inputs ----------------------------------------------------------------------------


def check_rslearn_python(path: str | None) -> dict[str, str]:
    """Versions of torch/rslearn in ``path``'s Python; BenchmarkError if unusable."""
    if not path:
        raise BenchmarkError("--rslearn-python is required: the Python of a venv with rslearn 0.1.19 and torch (see benchmarks/rslearn/README.md)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise BenchmarkError(f"--rslearn-python {path}: no such executable (install rslearn with benchmarks/rslearn/README.md)")
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ('torch', 'rslearn', 'lightning')}))"
    try:
        out = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchmarkError(f"--rslearn-python {path}: cannot run it ({e})") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchmarkError(f"--rslearn-python {path}: rslearn/torch/lightning not importable ({last})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_kit(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "anchor_callbacks.py")):
        raise BenchmarkError(
            f"--rslearn-callbacks {path}: no anchor_callbacks.py there (the rslearn anchor kit's measurement callback; "
            "set RSLEARN_ANCHOR_KIT or pass the kit directory)"
        )
    return path


def config_path(name: str) -> str:
    path = os.path.join(BENCH_DIR, f"{name}.yaml")
    if not os.path.exists(path):
        raise BenchmarkError(f"--configs {name}: unknown config (expected some of {', '.join(CONFIGS)})")
    return path


def ensure_dataset(path: str, size: int, n_train: int, n_val: int, seed: int) -> dict:
    """Builds the anchor dataset at ``path`` unless it is there; returns its summary args."""
    summary = os.path.join(path, "synthetic_summary.json")
    if not os.path.exists(os.path.join(path, "config.json")):
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from make_anchor_dataset import make_anchor_dataset

        print(f"writing the anchor dataset ({n_train} train + {n_val} val windows of {size}x{size}x12) to {path} ...", flush=True)
        make_anchor_dataset(path, size=size, n_train=n_train, n_val=n_val, seed=seed)
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f).get("args", {})
    return {}


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that limits torch (OpenMP/MKL) and TensorFlow (intra-op) to ``threads``
    compute threads; empty for the libraries' defaults (all cores)."""
    if not threads:
        return {}
    n = str(int(threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n}


def parse_overrides(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        if "=" not in item or item.startswith("="):
            raise BenchmarkError(f"{flag} {item!r}: expected KEY=VALUE (e.g. trainer.precision=bf16-mixed)")
        key, value = item.split("=", 1)
        out.append((key.lstrip("-"), value))
    return out


def variant_label(system: str, overrides: list[tuple[str, str]], tag: str | None) -> str:
    if system != "rskeras" or not (overrides or tag):
        return system
    if tag:
        return f"rskeras-{tag}"
    digest = hashlib.sha1(json.dumps(overrides).encode()).hexdigest()[:8]
    return f"rskeras-{digest}"


# ---- one training run ------------------------------------------------------------------


def read_epoch_stats(path: str) -> tuple[list[dict], dict | None]:
    epochs, fit_end = [], None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                if record.get("event") == "epoch_end":
                    epochs.append(record)
                elif record.get("event") == "fit_end":
                    fit_end = record
    return epochs, fit_end


def fit_command(
    system: str, config: str, seed: int, epochs: int, rslearn_python: str | None, overrides: list[tuple[str, str]], export: bool = False
) -> list[str]:
    common = ["--config", config, f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false"]
    if system == "rslearn":
        script = os.path.join(os.path.dirname(rslearn_python), "rslearn")
        if os.path.exists(script):
            return [rslearn_python, script, "model", "fit"] + common
        launcher = "import sys; from rslearn.main import main; sys.argv[0] = 'rslearn'; sys.exit(main())"
        return [rslearn_python, "-c", launcher, "model", "fit"] + common
    # rskeras' fit exports nothing unless trainer.export_saved_model asks (like rslearn's fit).
    extra = ["--trainer.export_saved_model=true"] if export else []
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), "fit"] + common + extra + [f"--{k}={v}" for k, v in overrides]


def run_fit(args, system: str, name: str, seed: int, dataset: str, overrides: list[tuple[str, str]], label: str) -> dict:
    """One ``fit`` of config ``name`` by ``system``; the stored result if there is one."""
    result_path = os.path.join(args.work, "results", name, label, f"seed{seed}-e{args.epochs}.json")
    if os.path.exists(result_path) and not args.rerun:
        with open(result_path) as f:
            result = json.load(f)
        if result.get("rc") == 0:
            print(f"  {name} {label} seed {seed}: stored result ({result_path})", flush=True)
            return result
    load_start = wait_for_quiet(args.max_load, args.settle_s)
    if load_start > args.max_load and args.strict_load:
        print(f"  {name} {label} seed {seed}: not run, load average {load_start:.2f} > {args.max_load} (--strict-load)", flush=True)
        return {"system": system, "label": label, "config": name, "seed": seed, "skipped": f"load {load_start:.2f}"}
    run_dir = os.path.join(args.work, "runs", name, label, f"seed{seed}-e{args.epochs}")
    shutil.rmtree(run_dir, ignore_errors=True)
    anchor = os.path.join(run_dir, "anchor")
    os.makedirs(anchor)
    os.symlink(os.path.abspath(dataset), os.path.join(anchor, "dataset"))
    env = dict(os.environ)
    env.update(RSLEARN_ANCHOR=anchor, WANDB_MODE="disabled", TF_CPP_MIN_LOG_LEVEL="2", **thread_env(args.threads))
    env["PYTHONPATH"] = args.rslearn_callbacks if system == "rslearn" else os.pathsep.join([RSKERAS_SIDE, ROOT])
    if system == "rskeras":  # the measuring callback is the benchmark's, outside rskeras' allow-list
        env["RSKERAS_ALLOW_CLASS_PREFIX"] = "anchor_callbacks."
    cmd = fit_command(system, config_path(name), seed, args.epochs, args.rslearn_python, overrides, export=args.rskeras_export)
    log_path = os.path.join(run_dir, "log.txt")
    print(f"  {name} {label} seed {seed}: running ({args.epochs} epochs, load {load_start:.2f}) ...", flush=True)
    figures = run_process(cmd, env, log_path, args.timeout_s, args.nice)
    epochs, fit_end = read_epoch_stats(os.path.join(anchor, "runs", name, "epoch_stats.jsonl"))
    result = {
        "system": system,
        "label": label,
        "config": name,
        "seed": seed,
        "epochs_requested": args.epochs,
        "command": cmd,
        "overrides": overrides,
        "threads": args.threads,
        "nice": args.nice,
        "load_start": round(load_start, 2),
        **figures,
        "epochs": epochs,
        "fit_end": fit_end,
        "log": log_path,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    timings_path = os.path.join(anchor, "runs", name, "timings.json")
    if system == "rskeras" and os.path.exists(timings_path):  # the fit's phases (rskeras.train.fit_timings)
        with open(timings_path) as f:
            result["phases"] = json.load(f)["phases"]
    if figures["rc"] != 0 or len(epochs) < args.epochs:
        result["error"] = log_tail(log_path)
        print(f"  {name} {label} seed {seed}: FAILED (rc {figures['rc']}, {len(epochs)} epochs logged); log {log_path}:\n{result['error']}", flush=True)
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, result_path)
    s = summarize(result)
    if s:
        print(
            f"  {name} {label} seed {seed}: {s['cpu_per_epoch']:.1f} CPU-s/epoch, {s['samples_per_s']:.2f} samples/s, "
            f"peak RSS {s['peak_rss_gb']:.2f} GB, {format_metrics(name, s['metrics'][-1])} "
            f"(wall {figures['wall_s']:.0f} s, others {figures['others_cores']:.2f} cores)",
            flush=True,
        )
    return result


def summarize(result: dict) -> dict | None:
    """Per-run figures: steady epochs are those after the first (all if only one)."""
    epochs = result.get("epochs") or []
    if not epochs or result.get("rc") != 0:
        return None
    steady = epochs[1:] or epochs
    cpu = [e["train_cpu_s_tree"] for e in steady if e.get("train_cpu_s_tree") is not None]
    rate = [e["train_samples_per_s"] for e in steady if e.get("train_samples_per_s")]
    walls = [e["train_s"] for e in steady if e.get("train_s")]
    cpu_per_epoch = float(np.mean(cpu)) if cpu else float("nan")
    first = epochs[0]
    peak = max([e.get("peak_tree_rss_mb") or 0 for e in epochs] + [(result.get("fit_end") or {}).get("peak_tree_rss_mb") or 0])
    return {
        "cpu_per_epoch": cpu_per_epoch,
        "samples_per_s": float(np.mean(rate)) if rate else float("nan"),
        "first_epoch_cpu_x": (first.get("train_cpu_s_tree") or float("nan")) / cpu_per_epoch if len(epochs) > 1 else float("nan"),
        "first_epoch_wall_x": (first.get("train_s") or float("nan")) / float(np.mean(walls)) if len(epochs) > 1 and walls else float("nan"),
        "peak_rss_gb": peak / 1024.0,
        "process_peak_rss_gb": (result.get("peak_rss_mb") or 0) / 1024.0,
        "metrics": [e.get("metrics") or {} for e in epochs],
        "load": max(result.get("load_start") or 0.0, result.get("others_cores") or 0.0),
        "load_start": result.get("load_start"),
        "others_cores": result.get("others_cores"),
        "wall_s": result.get("wall_s"),
        "cpu_s": result.get("cpu_s"),
    }


def format_metrics(name: str, metrics: dict) -> str:
    parts = []
    for key, short in PRIMARY_METRICS.get(name, []):
        if key in metrics:
            parts.append(f"{short} {metrics[key]:.3f}")
    if "val_loss" in metrics:
        parts.append(f"loss {metrics['val_loss']:.3f}")
    return ", ".join(parts) if parts else "(no val metrics)"


# ---- the comparison ----------------------------------------------------------------------


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.median(values)) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def _fmt(value: float, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:{width}{spec}}"


def run_vs_rslearn(args) -> dict:
    """Alternating fits of every config by both systems, then the table."""
    names = args.configs or CONFIGS
    for name in names:
        config_path(name)
    overrides = parse_overrides(args.rskeras_override, "--rskeras-override")
    if "rslearn" in args.systems:
        versions = check_rslearn_python(args.rslearn_python)
        check_kit(args.rslearn_callbacks)
        print(f"rslearn: {args.rslearn_python} (torch {versions['torch']}, rslearn {versions['rslearn']}, lightning {versions['lightning']})")
    os.makedirs(args.work, exist_ok=True)
    dataset = args.dataset or os.path.join(args.work, "dataset")
    ds_args = ensure_dataset(dataset, args.size, args.n_train, args.n_val, args.dataset_seed)
    labels = {system: variant_label(system, overrides, args.tag) for system in args.systems}
    results: dict[str, dict[str, list[dict]]] = {}
    for i, name in enumerate(names):
        order = list(args.systems) if i % 2 == 0 else list(reversed(args.systems))
        results[name] = {}
        for seed in args.seeds:
            for system in order:
                result = run_fit(args, system, name, seed, dataset, overrides if system == "rskeras" else [], labels[system])
                results[name].setdefault(system, []).append(result)
    # systems not run this time: stored results (e.g. rslearn measured earlier)
    for name in names:
        for system in ("rslearn", "rskeras"):
            if system in results[name]:
                continue
            label = labels.get(system) or variant_label(system, overrides, args.tag)
            stored = []
            for seed in args.seeds:
                path = os.path.join(args.work, "results", name, label, f"seed{seed}-e{args.epochs}.json")
                if os.path.exists(path):
                    with open(path) as f:
                        stored.append(json.load(f))
            if stored:
                results[name][system] = stored
    phases = phase_rows(names, results)
    print_phase_table(phases)
    report = print_vs_table(names, results, args, ds_args, labels)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_tables(names, report, args, labels) + markdown_phase_table(phases))
        print(f"markdown tables written to {args.markdown}", file=sys.stderr)  # stdout ends with the vs-rslearn line
    return {"report": report, "results": results}


# Columns of the phase table: (heading, phases of rskeras.train.fit_timings summed into it).
PHASE_COLUMNS = (
    ("startup", ("startup",)),
    ("setup + sanity val", ("setup", "sanity_validation")),
    ("1st train step", ("train_first_step",)),
    ("other train steps", ("train_other_steps",)),
    ("1st val", ("validation_first",)),
    ("other vals", ("validation_other",)),
    ("epoch ends", ("epoch_end",)),
    ("after fit", ("after_fit", "best_checkpoint", "export")),
)


def phase_rows(names: list[str], results: dict) -> list[dict]:
    """Wall seconds by phase of each rskeras fit that recorded them (first seed)."""
    rows = []
    for name in names:
        for result in results.get(name, {}).get("rskeras", [])[:1]:
            phases = result.get("phases")
            if not phases:
                continue
            cells = [sum(phases.get(k, {}).get("wall_s", 0.0) for k in keys) for _, keys in PHASE_COLUMNS]
            rows.append({"config": name, "label": result.get("label", "rskeras"), "cells": cells, "wall_s": result.get("wall_s")})
    return rows


def print_phase_table(rows: list[dict]) -> None:
    if not rows:
        return
    print("\nrskeras fits, wall seconds by phase (timings.json; the rest of the command's wall: interpreter exit)")
    print(f"  {'config':<22}" + "".join(f"{h:>19}" for h, _ in PHASE_COLUMNS) + f"{'command':>10}")
    for r in rows:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        print(f"  {r['config']:<22}" + "".join(f"{c:>19.1f}" for c in r["cells"]) + f"{wall:>10}")


def markdown_phase_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["| config | " + " | ".join(h for h, _ in PHASE_COLUMNS) + " | command wall |", "|---" * (len(PHASE_COLUMNS) + 2) + "|"]
    for r in rows:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        lines.append(f"| {r['config']} | " + " | ".join(f"{c:.1f}" for c in r["cells"]) + f" | {wall} |")
    return "\n" + "\n".join(lines) + "\n"


def markdown_tables(names: list[str], report: dict, args, labels: dict) -> str:
    """The side-by-side (and learning-curve) tables as markdown, for docs."""

    def num(value, spec):
        return "-" if value is None or value != value else format(value, spec)

    lines = [
        f"| config | system | load | train CPU-s / epoch | samples/s | 1st epoch CPU ×steady | peak RSS GB | val after epoch {args.epochs} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        per = report["configs"].get(name, {})
        for system in ("rslearn", "rskeras"):
            e = per.get(system)
            if not e:
                continue
            metrics = metric_ranges(name, e["metrics_last"]) if len(e["metrics_last"]) > 1 else format_metrics(name, e["metrics_last"][0])
            lines.append(
                f"| {name} | {labels.get(system, system)} | {e['load']:.2f}{'*' if e['load'] > args.max_load else ''} | {num(e['cpu_per_epoch'], '.1f')} | "
                f"{num(e['samples_per_s'], '.2f')} | {num(e['first_epoch_cpu_x'], '.2f')} | {num(e['peak_rss_gb'], '.2f')} | {metrics} |"
            )
        r = per.get("ratios")
        if r:
            lines.append(f"| {name} | rskeras/rslearn | | {num(r['cpu'], '.2f')}× | {num(r['samples_per_s'], '.2f')}× | {num(r['first_epoch'], '.2f')}× | {num(r['rss'], '.2f')}× | |")
    out = "\n".join(lines) + "\n"
    learning = report.get("learning")
    if learning:
        rows = ["| config | metric | epoch | rslearn (seeds) | rskeras (seeds) | verdict |", "|---|---|---|---|---|---|"]
        for name, metrics in learning.items():
            for short, per_epoch in metrics.items():
                for epoch, entry in per_epoch.items():
                    ref = " ".join(f"{v:.3f}" for v in entry["rslearn"]) or "-"
                    ours = " ".join(f"{v:.3f}" for v in entry["rskeras"]) or "-"
                    rows.append(f"| {name} | {short} | {epoch} | {ref} | {ours} | {entry['verdict']} |")
        out += "\n" + "\n".join(rows) + "\n"
    return out


def print_vs_table(names: list[str], results: dict, args, ds_args: dict, labels: dict) -> dict:
    seeds = ", ".join(str(s) for s in args.seeds)
    data = f"{ds_args.get('n_train', '?')} train / {ds_args.get('n_val', '?')} val windows {ds_args.get('size', '?')}x{ds_args.get('size', '?')}x12"
    print(f"\nvs-rslearn: {args.epochs} epochs, seed(s) {seeds}, {data}, {os.cpu_count()} CPUs; timing = median over seeds, epochs after the first")
    print("  load = max(1-min load average before the run, CPU cores used by other processes during it); * = above --max-load")
    header = f"{'config':<21} {'system':<16} {'load':>5}  {'CPU-s/epoch':>11}  {'samples/s':>9}  {'1st epoch':>9}  {'peak RSS GB':>11}  val after epoch {args.epochs}"
    print(header)
    print("-" * len(header))
    report: dict[str, Any] = {"configs": {}}
    worst_cpu = (float("-inf"), None)
    worst_rss = (float("-inf"), None)
    flagged = []
    for name in names:
        per: dict[str, dict] = {}
        for system in ("rslearn", "rskeras"):
            runs = results.get(name, {}).get(system, [])
            summaries = [s for s in (summarize(r) for r in runs) if s]
            failures = [r for r in runs if r.get("rc") not in (0, None) or r.get("skipped")]
            label = labels.get(system, system)
            if not summaries:
                why = "not run" if not runs else ("skipped: " + runs[0]["skipped"] if runs[0].get("skipped") else f"FAILED rc {runs[0].get('rc')}")
                print(f"{name if system == 'rslearn' else '':<21} {label:<16} {why}")
                continue
            load = max(s["load"] for s in summaries)
            star = "*" if load > args.max_load else " "
            if star == "*":
                flagged.append(f"{name}/{system}")
            entry = {
                "load": load,
                "cpu_per_epoch": _median([s["cpu_per_epoch"] for s in summaries]),
                "samples_per_s": _median([s["samples_per_s"] for s in summaries]),
                "first_epoch_cpu_x": _median([s["first_epoch_cpu_x"] for s in summaries]),
                "peak_rss_gb": _median([s["peak_rss_gb"] for s in summaries]),
                "metrics_last": [s["metrics"][-1] for s in summaries],
                "failures": len(failures),
            }
            per[system] = entry
            metrics = format_metrics(name, summaries[0]["metrics"][-1]) if len(summaries) == 1 else metric_ranges(name, [s["metrics"][-1] for s in summaries])
            print(
                f"{name if system == 'rslearn' or 'rslearn' not in per else '':<21} {label:<16} {load:4.2f}{star} "
                f"{_fmt(entry['cpu_per_epoch'], '.1f', 11)}  {_fmt(entry['samples_per_s'], '.2f', 9)}  "
                f"{_fmt(entry['first_epoch_cpu_x'], '.2f', 8)}x  {_fmt(entry['peak_rss_gb'], '.2f', 11)}  {metrics}"
            )
        if "rslearn" in per and "rskeras" in per:
            a, b = per["rskeras"], per["rslearn"]
            ratios = {
                "cpu": _ratio(a["cpu_per_epoch"], b["cpu_per_epoch"]),
                "samples_per_s": _ratio(a["samples_per_s"], b["samples_per_s"]),
                "first_epoch": _ratio(a["first_epoch_cpu_x"], b["first_epoch_cpu_x"]),
                "rss": _ratio(a["peak_rss_gb"], b["peak_rss_gb"]),
            }
            per["ratios"] = ratios
            print(
                f"{'':<21} {'rskeras/rslearn':<16} {'':5}  {_fmt(ratios['cpu'], '.2f', 10)}x  {_fmt(ratios['samples_per_s'], '.2f', 8)}x  "
                f"{_fmt(ratios['first_epoch'], '.2f', 8)}x  {_fmt(ratios['rss'], '.2f', 10)}x"
            )
            if ratios["cpu"] == ratios["cpu"] and ratios["cpu"] > worst_cpu[0]:
                worst_cpu = (ratios["cpu"], name)
            if ratios["rss"] == ratios["rss"] and ratios["rss"] > worst_rss[0]:
                worst_rss = (ratios["rss"], name)
        report["configs"][name] = per
    if len(args.seeds) > 1 or args.epochs > 2:
        report["learning"] = print_learning_table(names, results, args, labels)
    note = f"; flagged (load above {args.max_load}): {', '.join(flagged)}" if flagged else ""
    if worst_cpu[1] is None:
        print(f"\nvs-rslearn: no config with both systems measured{note}")
    else:
        print(
            f"\nvs-rslearn: worst CPU-s ratio {worst_cpu[0]:.2f} ({worst_cpu[1]}), worst RSS ratio {worst_rss[0]:.2f} ({worst_rss[1]}){note}"
        )
    report.update(worst_cpu=list(worst_cpu), worst_rss=list(worst_rss), flagged=flagged)
    return report


def metric_ranges(name: str, metrics: list[dict]) -> str:
    parts = []
    for key, short in PRIMARY_METRICS.get(name, []):
        values = [m[key] for m in metrics if key in m]
        if values:
            parts.append(f"{short} {min(values):.3f}-{max(values):.3f}")
    return ", ".join(parts) if parts else "(no val metrics)"


def print_learning_table(names: list[str], results: dict, args, labels: dict) -> dict:
    """Primary val metrics after epoch 2 and the last epoch: rslearn's range over the seeds
    and rskeras' values; ok when every rskeras value is at least rslearn's minimum."""
    checkpoints = sorted({min(2, args.epochs), args.epochs})
    print(f"\nlearning curves (val metrics per seed; rskeras ok = every seed at or above rslearn's worst seed)")
    header = f"{'config':<21} {'metric':<13} {'epoch':>5}  {'rslearn (seeds)':<26} {'rskeras (seeds)':<26} verdict"
    print(header)
    print("-" * len(header))
    table: dict[str, Any] = {}
    for name in names:
        runs = {s: [r for r in results.get(name, {}).get(s, []) if r.get("rc") == 0] for s in ("rslearn", "rskeras")}
        for key, short in PRIMARY_METRICS.get(name, []):
            for epoch in checkpoints:
                values = {}
                for system, rs in runs.items():
                    values[system] = [
                        (r["epochs"][epoch - 1].get("metrics") or {}).get(key) for r in rs if len(r.get("epochs", [])) >= epoch
                    ]
                    values[system] = [v for v in values[system] if v is not None]
                ref, ours = values["rslearn"], values["rskeras"]
                if ref and ours:
                    verdict = "ok" if min(ours) >= min(ref) - 1e-9 else "BELOW"
                else:
                    verdict = "-"
                table.setdefault(name, {}).setdefault(short, {})[epoch] = {"rslearn": ref, "rskeras": ours, "verdict": verdict}
                print(
                    f"{name:<21} {short:<13} {epoch:>5}  {' '.join(f'{v:.3f}' for v in ref) or '-':<26} "
                    f"{' '.join(f'{v:.3f}' for v in ours) or '-':<26} {verdict}"
                )
    return table


# ---- step and inference: workers ----------------------------------------------------------


def _build_run(config: str, dataset_anchor: str, overrides: list[tuple[str, str]], root: str):
    """rskeras' Run for a benchmark config (no callbacks, no logger)."""
    os.environ["RSLEARN_ANCHOR"] = dataset_anchor
    sys.path.insert(0, ROOT)
    from rskeras.config.loader import load_config
    from rskeras.run import build_run

    base = [("trainer.callbacks", "[]"), ("trainer.logger", "false"), ("trainer.default_root_dir", root)]
    return build_run(load_config([config], base + list(overrides)), "train")


VARIANTS = {
    "fp32": ([], False),
    "bf16": ([("trainer.precision", "bf16-mixed")], False),
    "xla": ([], True),
    "bf16-xla": ([("trainer.precision", "bf16-mixed")], True),
}


def step_worker(opts: dict) -> dict:
    """ms per train step of rskeras on the first val batch held in memory (one variant)."""
    import keras
    import tensorflow as tf

    import inspect

    sys.path.insert(0, ROOT)
    from rskeras.train.trainer import Trainer

    extra, jit = VARIANTS[opts["variant"]]
    # XLA through the trainer's own switch where it has one (the model step under XLA,
    # host-side parts outside), else the whole Keras train step compiled.
    has_key = "jit_compile" in inspect.signature(Trainer.__init__).parameters
    extra = list(extra) + ([("trainer.jit_compile", "true" if jit else "false")] if has_key else [])
    run = _build_run(opts["config"], opts["anchor"], extra + [tuple(o) for o in opts["overrides"]], opts["root"])
    inputs, targets = next(iter(run.data.tf_dataset("val", shuffle=False)))
    np.savez(opts["batch_out"], image=inputs["image"].numpy())
    if jit and not has_key:
        run.lm.compile(optimizer=run.lm.make_optimizer(), jit_compile=True)
    ds = tf.data.Dataset.from_tensors((inputs, targets)).repeat()

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(np.asarray((logs or {}).get("train_loss", np.nan))))
            self.times.append(1000.0 * (time.perf_counter() - self.t0))

    timer = StepTimer()
    start = time.perf_counter()
    run.lm.fit(ds, epochs=1, steps_per_epoch=opts["warmup"], verbose=0, callbacks=[timer])
    first_ms = timer.times[0] if timer.times else float("nan")
    warm_s = time.perf_counter() - start
    timer.times, timer.losses = [], []
    run.lm.fit(ds, epochs=1, steps_per_epoch=opts["steps"], verbose=0, callbacks=[timer])
    return {
        "variant": opts["variant"],
        "xla": ("trainer.jit_compile" if has_key else "keras compile(jit_compile=True)") if jit else None,
        "median_ms": float(np.median(timer.times)),
        "p90_ms": float(np.percentile(timer.times, 90)),
        "first_step_ms": first_ms,
        "warmup_s": warm_s,
        "batch_size": int(inputs["image"].shape[0]),
        "finite_loss": bool(np.all(np.isfinite(timer.losses))),
        "last_loss": timer.losses[-1] if timer.losses else None,
    }


def inference_worker(opts: dict) -> dict:
    """Per-tile latency (batch 1) of the rskeras model: Keras, SavedModel, TFLite fp32, dynamic-range int8, full int8 and int8-mixed."""
    import tempfile

    import tensorflow as tf

    from rskeras.export.cli import representative_dataset
    from rskeras.export.inference import exportable_from_run
    from rskeras.export.saved_model import export_for_serving
    from rskeras.export.tflite import convert_tflite

    run = _build_run(opts["config"], opts["anchor"], [tuple(o) for o in opts["overrides"]], opts["root"])
    if opts.get("ckpt_path"):
        run.load_checkpoint(opts["ckpt_path"])
    exportable = exportable_from_run(run, "predict", name="benchmark")
    raw, _ = next(iter(run.data.tf_dataset("val", shuffle=False)))
    normalized = raw["image"].numpy()[:1]  # [1, 1, H, W, C], after the config's transforms
    from rskeras.export.examples import raw_examples

    raw_example = next(iter(raw_examples(run.data, "val", exportable.raw_inputs, limit=1)))["image"][None]  # [1, T, H, W, C]
    specs = {k: tf.TensorSpec([None, None, None, None] + list(s.shape[4:]), s.dtype) for k, s in run.input_specs.items()}
    model = run.lm.inference_model(specs)
    keras_fn = tf.function(lambda x: model({"image": x}, training=False), reduce_retracing=True)
    results: dict[str, Any] = {}
    repeats, warmup = opts["repeats"], opts["warmup"]
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory(prefix="rskeras-bench-") as tmp:
        served = tf.saved_model.load(export_for_serving(exportable, os.path.join(tmp, "saved_model"), None)).signatures["serving_default"]
        for size in opts["sizes"]:
            entry: dict[str, Any] = {}

            def tile(x):
                h, w = x.shape[2:4]
                return np.tile(x, (1, 1, -(-size // h), -(-size // w), 1))[:, :, :size, :size, :].astype(np.float32)

            model_in, raw_in = tf.constant(tile(normalized)), tile(raw_example)
            raw_tensor = tf.constant(raw_in)
            entry["keras"] = timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), keras_fn(model_in)), repeats, warmup)
            entry["saved_model"] = timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), served(image=raw_tensor)), repeats, warmup)
            calibration = representative_dataset(run.data, exportable, (size, size), 8, max_tiles=16)
            for quantize, key in (("none", "tflite_fp32"), ("dynamic", "tflite_dynamic"), ("int8", "tflite_int8"), ("int8-mixed", "tflite_int8_mixed")):
                try:
                    content = convert_tflite(exportable, (size, size), quantize, calibration)
                    runner = Interpreter(model_content=content, num_threads=os.cpu_count()).get_signature_runner("serving_default")
                    entry[key] = timed(lambda: runner(image=raw_in), repeats, warmup)
                    entry[key]["bytes"] = len(content)
                except Exception as e:  # noqa: BLE001 - reported in the table
                    entry[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            results[f"{size}x{size}"] = entry
    return results


def timed(fn, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(np.mean(times))}


def run_worker(kind: str, opts: dict, log_path: str, timeout_s: float, nice: int = 0) -> dict:
    """Runs a step/inference worker of rskeras in a fresh Python (its own TF state)."""
    out = opts["result"]
    code = f"import json, sys; sys.path.insert(0, {ROOT!r}); from tools import vs_rslearn as v; json.dump(v.{kind}_worker(json.loads(sys.argv[1])), open({out!r}, 'w'))"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **thread_env(opts.get("threads")))
    figures = run_process([sys.executable, "-c", code, json.dumps(opts)], env, log_path, timeout_s, nice)
    if figures["rc"] != 0 or not os.path.exists(out):
        return {"error": f"rc {figures['rc']}: {log_error(log_path)} (log {log_path})", "log": log_path}
    with open(out) as f:
        return {**json.load(f), "others_cores": figures["others_cores"]}


def run_torch_side(args, what: str, extra: list[str], anchor: str, out: str, log_path: str) -> dict:
    env = dict(os.environ, RSLEARN_ANCHOR=anchor, WANDB_MODE="disabled", PYTHONPATH=args.rslearn_callbacks, **thread_env(args.threads))
    cmd = [args.rslearn_python, TORCH_SIDE, what, "--config", args.config, "--out", out] + extra
    figures = run_process(cmd, env, log_path, args.timeout_s, args.nice)
    if figures["rc"] != 0 or not os.path.exists(out):
        return {"error": f"rc {figures['rc']}: {log_error(log_path)} (log {log_path})", "log": log_path}
    with open(out) as f:
        return {**json.load(f), "others_cores": figures["others_cores"]}


def _prepare_side_dirs(args, section: str) -> tuple[str, str]:
    os.makedirs(args.work, exist_ok=True)
    dataset = args.dataset or os.path.join(args.work, "dataset")
    ensure_dataset(dataset, args.size, args.n_train, args.n_val, args.dataset_seed)
    run_dir = os.path.join(args.work, section)
    shutil.rmtree(run_dir, ignore_errors=True)
    anchor = os.path.join(run_dir, "anchor")
    os.makedirs(anchor)
    os.symlink(os.path.abspath(dataset), os.path.join(anchor, "dataset"))
    return run_dir, anchor


def run_step(args) -> dict:
    """rslearn's and rskeras' train step on the same cached batch (ms/step)."""
    args.config = args.config or config_path("segmentation")
    overrides = parse_overrides(args.rskeras_override, "--rskeras-override")
    for v in args.variants:
        if v not in VARIANTS:
            raise BenchmarkError(f"--variants {v}: unknown (expected some of {', '.join(VARIANTS)})")
    have_torch = bool(args.rslearn_python)
    if have_torch:
        check_rslearn_python(args.rslearn_python)
        check_kit(args.rslearn_callbacks)
    run_dir, anchor = _prepare_side_dirs(args, "step")
    load = wait_for_quiet(args.max_load, args.settle_s)
    report: dict[str, Any] = {"config": args.config, "load_start": round(load, 2), "steps": args.steps}
    if have_torch:
        print("  rslearn step ...", flush=True)
        out = os.path.join(run_dir, "rslearn_step.json")
        report["rslearn"] = run_torch_side(args, "step", ["--steps", str(args.steps), "--warmup", str(args.warmup)], anchor, out, os.path.join(run_dir, "rslearn_step.log"))
    for variant in args.variants:
        print(f"  rskeras step ({variant}) ...", flush=True)
        opts = {
            "variant": variant,
            "config": args.config,
            "anchor": anchor,
            "overrides": overrides,
            "root": os.path.join(run_dir, f"run_{variant}"),
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_out": os.path.join(run_dir, f"rskeras_batch_{variant}.npz"),
            "result": os.path.join(run_dir, f"rskeras_step_{variant}.json"),
            "threads": args.threads,
        }
        report[f"rskeras {variant}"] = run_worker("step", opts, os.path.join(run_dir, f"rskeras_step_{variant}.log"), args.timeout_s, args.nice)
    # the same batch?
    theirs = os.path.join(run_dir, "rslearn_step.json.batch.npz")
    ours = os.path.join(run_dir, f"rskeras_batch_{args.variants[0]}.npz") if args.variants else None
    if have_torch and ours and os.path.exists(theirs) and os.path.exists(ours):
        a, b = np.load(theirs)["image"], np.load(ours)["image"]
        report["same_batch_max_abs_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"
    print_step_report(report, args)
    return report


def print_step_report(report: dict, args) -> None:
    same = report.get("same_batch_max_abs_diff")
    same_text = "" if same is None else f"; batch max |rslearn - rskeras| = {same}" if isinstance(same, str) else f"; batch max |rslearn - rskeras| = {same:.2g}"
    print(f"\nstep: {os.path.basename(report['config'])}, one cached batch, {report['steps']} timed steps, load {report['load_start']:.2f}{same_text}")
    ref = report.get("rslearn", {}).get("median_ms")
    print(f"  {'system':<22} {'ms/step':>9} {'p90':>9}  {'vs rslearn':>10}  notes")
    rows = [("rslearn (torch eager)", report.get("rslearn"))] + [(k, v) for k, v in report.items() if k.startswith("rskeras ")]
    for label, entry in rows:
        if entry is None:
            continue
        if "error" in entry:
            print(f"  {label:<22} {'failed':>9}  {entry['error']}")
            continue
        ratio = _ratio(entry["median_ms"], ref) if ref else float("nan")
        notes = []
        if "first_step_ms" in entry:
            notes.append(f"first step {entry['first_step_ms'] / 1000:.1f} s")
        if entry.get("xla"):
            notes.append(f"XLA via {entry['xla']}")
        if entry.get("finite_loss") is False:
            notes.append("NON-FINITE LOSS")
        if "torch_threads" in entry:
            notes.append(f"{entry['torch_threads']} torch threads")
        if entry.get("others_cores") is not None:
            notes.append(f"others {entry['others_cores']:.2f} cores")
        vs = f"{_fmt(ratio, '.2f', 9)}x" if ratio == ratio else " " * 10
        print(f"  {label:<22} {entry['median_ms']:9.1f} {entry['p90_ms']:9.1f}  {vs}  {', '.join(notes)}")


def run_inference(args) -> dict:
    """Per-tile latency: rslearn eager (torch, batch 1) vs rskeras Keras/SavedModel/TFLite."""
    args.config = args.config or config_path("segmentation")
    overrides = parse_overrides(args.rskeras_override, "--rskeras-override")
    have_torch = bool(args.rslearn_python)
    if have_torch:
        check_rslearn_python(args.rslearn_python)
        check_kit(args.rslearn_callbacks)
    run_dir, anchor = _prepare_side_dirs(args, "inference")
    load = wait_for_quiet(args.max_load, args.settle_s)
    report: dict[str, Any] = {"config": args.config, "load_start": round(load, 2), "sizes": args.sizes}
    sizes = [str(s) for s in args.sizes]
    if have_torch:
        print("  rslearn inference ...", flush=True)
        out = os.path.join(run_dir, "rslearn_inference.json")
        report["rslearn"] = run_torch_side(
            args, "inference", ["--sizes", *sizes, "--repeats", str(args.repeats), "--warmup", str(args.warmup)], anchor, out, os.path.join(run_dir, "rslearn_inference.log")
        )
    print("  rskeras inference ...", flush=True)
    opts = {
        "config": args.config,
        "anchor": anchor,
        "overrides": overrides,
        "root": os.path.join(run_dir, "run"),
        "ckpt_path": args.ckpt_path,
        "sizes": args.sizes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "result": os.path.join(run_dir, "rskeras_inference.json"),
        "threads": args.threads,
    }
    report["rskeras"] = run_worker("inference", opts, os.path.join(run_dir, "rskeras_inference.log"), args.timeout_s, args.nice)
    print_inference_report(report)
    return report


def print_inference_report(report: dict) -> None:
    print(f"\ninference: {os.path.basename(report['config'])}, batch 1, median ms per tile, load {report['load_start']:.2f}")
    backends = [("keras", "Keras"), ("saved_model", "SavedModel"), ("tflite_fp32", "TFLite fp32"), ("tflite_dynamic", "TFLite dyn8"), ("tflite_int8", "TFLite int8"), ("tflite_int8_mixed", "int8-mixed")]
    print(f"  {'size':<9} {'rslearn eager':>13} " + " ".join(f"{label:>12}" for _, label in backends) + "   best TFLite vs rslearn")
    theirs, ours = report.get("rslearn") or {}, report.get("rskeras") or {}
    for err_side, side in (("rslearn", theirs), ("rskeras", ours)):
        if "error" in side:
            print(f"  {err_side} failed: {side['error']}")
    errors = []
    for size in report["sizes"]:
        key = f"{size}x{size}"
        ref = (theirs.get(key) or {}).get("eager", {}).get("median_ms")
        cells, tflite = [], []
        entry = ours.get(key) or {}
        for name, label in backends:
            value = entry.get(name) or {}
            if "median_ms" in value:
                cells.append(f"{value['median_ms']:12.1f}")
                if name.startswith("tflite"):
                    tflite.append(value["median_ms"])
            else:
                cells.append(f"{'failed' if 'error' in value else '-':>12}")
                if "error" in value:
                    errors.append(f"{key} {label}: {value['error']}")
        best = _ratio(ref, min(tflite)) if tflite and ref else float("nan")
        print(f"  {key:<9} {_fmt(ref if ref else float('nan'), '.1f', 13)} " + " ".join(cells) + f"   {_fmt(best, '.2f', 6)}x faster")
    for e in errors:
        print(f"  {e}")


# ---- arguments -------------------------------------------------------------------------------


def add_common_arguments(p: argparse.ArgumentParser, with_rslearn_required: bool) -> None:
    p.add_argument("--rslearn-python", required=False, help="Python of a venv with torch + rslearn 0.1.19" + (" (required)" if with_rslearn_required else " (omit: rskeras only)"))
    p.add_argument("--rslearn-callbacks", default=DEFAULT_KIT, help=f"directory with the kit's anchor_callbacks.py for rslearn (default $RSLEARN_ANCHOR_KIT or {DEFAULT_KIT})")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "vs-rslearn"), help="working directory: dataset, runs, stored results (default runs/vs-rslearn)")
    p.add_argument("--dataset", default=None, help="anchor dataset to use/create (default <work>/dataset)")
    p.add_argument("--size", type=int, default=64, help="window size of a new dataset (default 64)")
    p.add_argument("--n-train", type=int, default=256, help="train windows of a new dataset (default 256)")
    p.add_argument("--n-val", type=int, default=64, help="val windows of a new dataset (default 64)")
    p.add_argument("--dataset-seed", type=int, default=0, help="seed of a new dataset (default 0)")
    p.add_argument("--rskeras-override", action="append", default=[], metavar="KEY=VALUE", help="config override for the rskeras runs only, e.g. trainer.precision=bf16-mixed (repeatable)")
    p.add_argument("--max-load", type=float, default=1.5, help="runs whose load (see the table) is above this are flagged (default 1.5)")
    p.add_argument("--settle-s", type=float, default=120, help="wait up to this long before each run for the load average to fall to --max-load (default 120)")
    p.add_argument("--nice", type=int, default=0, help="run the benchmarked processes at this nice level (e.g. 19 for learning curves on a shared machine)")
    p.add_argument("--timeout-s", type=float, default=8 * 3600, help="kill a run after this long (default 8 h)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads of torch and TensorFlow in the runs (default: the libraries' own, all cores); 1 avoids "
        "torch's spinning threads when the machine is shared (learning curves), never for timing comparisons",
    )


def add_vs_rslearn_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, True)
    p.add_argument("--configs", nargs="+", default=None, metavar="NAME", help=f"configs of benchmarks/rslearn (default all: {' '.join(CONFIGS)})")
    p.add_argument("--epochs", type=int, default=2, help="epochs per fit (default 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seed_everything values; one fit per seed and system (default 0)")
    p.add_argument("--systems", nargs="+", default=["rslearn", "rskeras"], choices=["rslearn", "rskeras"], help="systems to run now (stored results of the others are reused)")
    p.add_argument("--tag", default=None, help="name of this rskeras variant in stored results (default: a hash of --rskeras-override)")
    p.add_argument("--rerun", action="store_true", help="run again even if a stored result exists")
    p.add_argument("--markdown", default=None, metavar="PATH", help="also write the tables as markdown to PATH")
    p.add_argument("--rskeras-export", action="store_true", help="rskeras runs also export their SavedModel after fit (trainer.export_saved_model; default off, as rslearn's fit exports nothing)")
    p.add_argument("--strict-load", action="store_true", help="do not run (report 'skipped') when the load stays above --max-load")


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, False)
    p.add_argument("--config", default=None, help="config (default benchmarks/rslearn/segmentation.yaml)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3; the first traces)")
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16", "xla"], help=f"rskeras variants (some of {', '.join(VARIANTS)})")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, False)
    p.add_argument("--config", default=None, help="config (default benchmarks/rslearn/segmentation.yaml)")
    p.add_argument("--ckpt_path", default=None, help="rskeras weights (.weights.h5) to load; default fresh (both systems)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="tile sizes (default 64 256)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per size and backend (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")


def guarded(fn):
    """Runs a section; a BenchmarkError becomes one line on stderr and exit code 2."""

    def wrapper(args):
        try:
            return fn(args)
        except BenchmarkError as e:
            print(f"benchmark.py: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
