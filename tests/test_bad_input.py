"""The bad-input fuzz suite (issues 13 and 17): every bad input is built from the sample
dataset, run through the command under a timeout, and must give the right exit code, one
error line naming the culprit, no traceback, no hang, nothing changed outside the run
directory, and no ``completed`` marker for an incomplete output.

The commands run as children of ``tests/bad_input_runner.py`` (TensorFlow imported once,
each command forked and ending with the interpreter's normal exit, where the data-error
hangs happened); the data errors that hung are run 10 times each, as input pipelines whose
error goes uncaught to the top level (the hardest teardown). The fit-lifecycle cases use
real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from bad_input_cases import DATA_CASES, WARN_CASES, Case, Spec, make_sample, prepare, weights_cases, windows_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "bad_input_runner.py")
TIMEOUT = 180  # seconds per command: far above what any of them needs, even on a busy machine
# Runs of each data error that once hung at exit: 3 in the suite (21 process exits); the
# closing measurement of issue 17 used RSKERAS_HANG_REPEATS=10 (70 of 70 exited).
HANG_REPEATS = int(os.environ.get("RSKERAS_HANG_REPEATS", "3"))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- helpers --------------------------------------------------------------------------


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def run_all(runs: list[dict], log_dir: str, parallel: int = 2) -> dict[str, list[dict]]:
    """Runs commands through the runner; id -> results (rc, seconds, hung)."""
    spec_path = os.path.join(log_dir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump({"timeout": TIMEOUT, "parallel": parallel, "runs": runs}, f)
    total = sum(int(r.get("repeat", 1)) for r in runs)
    proc = subprocess.run(
        [sys.executable, RUNNER, spec_path], capture_output=True, text=True, env=env(), timeout=120 + total * TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_log(log_dir: str, run_id: str, k: int = 0) -> tuple[str, str]:
    with open(os.path.join(log_dir, f"{run_id}.{k}.out")) as f:
        out = f.read()
    with open(os.path.join(log_dir, f"{run_id}.{k}.err")) as f:
        err = f.read()
    return out, err


NOISE = ("I0000", "WARNING: All log messages", "W0000", "E0000")


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)]
    return lines[-1] if lines else ""


def snapshot(root: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``root`` outside ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.normpath(os.path.relpath(path, root))] = (st.st_size, st.st_mtime_ns)
    return out


def check_error(case: Case, result: dict, out: str, err: str) -> None:
    """The shared contract: no hang, the exit code, the culprit named, no traceback."""
    assert not result["hung"], f"{case.name}: hung (killed after {TIMEOUT} s)\n{err[-2000:]}"
    text = error_line(err) if case.rc != 0 else out + err
    assert result["rc"] == case.rc, f"{case.name}: rc {result['rc']}, expected {case.rc}\n{err[-3000:]}"
    for name in case.names:
        assert name in text, f"{case.name}: {name!r} not in {text[-1500:]!r}"
    if case.rc == 2:
        assert "Traceback" not in err, f"{case.name}: traceback on stderr\n{err[-3000:]}"


def no_false_markers(dataset: str, layer: str) -> None:
    """Every ``completed`` marker of ``layer`` sits next to a complete output."""
    for group in os.listdir(os.path.join(dataset, "windows")):
        for name in os.listdir(os.path.join(dataset, "windows", group)):
            layer_dir = os.path.join(dataset, "windows", group, name, "layers", layer)
            if os.path.exists(os.path.join(layer_dir, "completed")):
                files = [os.path.join(d, f) for d, _, fs in os.walk(layer_dir) for f in fs if f != "completed"]
                assert files and all(os.path.getsize(f) > 0 for f in files), f"{layer_dir}: completed without its output"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(str(tmp_path_factory.mktemp("bad_input_sample") / "ds"))


# ---- data cases: validate on the val split ------------------------------------------


@pytest.fixture(scope="module")
def data_runs(sample, tmp_path_factory):
    """Every data case once through the command, and the hang cases 10 more times as an
    uncaught pipeline error; returns name -> (case, results, snapshot before)."""
    base = str(tmp_path_factory.mktemp("bad_data"))
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir)
    cases, runs, before = {}, [], {}
    for name, spec in {**DATA_CASES, **WARN_CASES}.items():
        case = prepare(name, spec, sample, base)
        cases[name] = (case, spec)
        before[name] = snapshot(case.dir, skip=("run",))
        runs.append({"id": name, "argv": case.argv, "cwd": case.dir, "log_dir": log_dir})
        if spec.hang:
            runs.append({"id": name + "@pipeline", "argv": [case.config, "val"], "cwd": case.dir, "log_dir": log_dir, "mode": "data", "repeat": HANG_REPEATS})
    results = run_all(runs, log_dir)
    return cases, results, before, log_dir


@pytest.mark.parametrize("name", list(DATA_CASES) + list(WARN_CASES))
def test_data_case(name, data_runs):
    cases, results, before, log_dir = data_runs
    case, _ = cases[name]
    out, err = read_log(log_dir, name)
    check_error(case, results[name][0], out, err)
    # validate writes nothing but its run directory (config.yaml).
    assert snapshot(case.dir, skip=("run",)) == before[name], f"{name}: files outside the run directory changed"


@pytest.mark.parametrize("name", [n for n, s in DATA_CASES.items() if s.hang])
def test_data_error_exits_every_time(name, data_runs):
    """17.3: the data errors that hung at exit, HANG_REPEATS times each: every run ends (rc 1: the
    error is left uncaught on purpose), printing the error naming the window."""
    cases, results, _, log_dir = data_runs
    case, _ = cases[name]
    runs = results[name + "@pipeline"]
    assert len(runs) == HANG_REPEATS
    hung = [k for k, r in enumerate(runs) if r["hung"]]
    assert not hung, f"{name}: runs {hung} of {HANG_REPEATS} hung at exit"
    for k, r in enumerate(runs):
        _, err = read_log(log_dir, name + "@pipeline", k)
        assert r["rc"] == 1, f"{name} run {k}: rc {r['rc']}\n{err[-2000:]}"
        # The uncaught error's last traceback line names the culprit; a warning of another
        # pipeline thread (e.g. other windows' dtype) may be printed after it.
        lines = [line for line in err.splitlines() if "DataReadError" in line or "Error:" in line]
        assert any(all(n in line for n in case.names) for line in lines), f"{name} run {k}: {err[-1500:]!r}"


# ---- weights files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(sample, tmp_path_factory):
    """A real .weights.h5 of the tiny model (built in this process)."""
    from training_scripts.tiny_config import tiny_config

    from rskeras.run import build_run
    from rskeras.train.callbacks.checkpointing import save_training_checkpoint

    path = str(tmp_path_factory.mktemp("ckpt") / "model.weights.h5")
    r = build_run(tiny_config(sample), "val")
    save_training_checkpoint(r.lm, path, {"epoch": 0})
    return path


def test_weights_files(sample, real_checkpoint, tmp_path):
    specs = weights_cases(real_checkpoint)
    log_dir = str(tmp_path / "logs")
    os.makedirs(log_dir)
    cases, runs, before = {}, [], {}
    for name, spec in specs.items():
        case = prepare(name, spec, sample, str(tmp_path))
        cases[name] = case
        before[name] = snapshot(case.dir, skip=("run",))
        runs.append({"id": name, "argv": case.argv, "cwd": case.dir, "log_dir": log_dir})
    results = run_all(runs, log_dir)
    failures = []
    for name, case in cases.items():
        out, err = read_log(log_dir, name)
        try:
            check_error(case, results[name][0], out, err)
            assert snapshot(case.dir, skip=("run",)) == before[name], "files outside the run directory changed"
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n\n".join(failures)


def test_corrupt_tflite(tmp_path):
    """A corrupt .tflite given to predict_tflite: one line naming the file, rc 2."""
    scene = tmp_path / "scene.tif"
    for name, data in (("zero.tflite", b""), ("random.tflite", np.random.default_rng(2).bytes(3000)), ("fake.tflite", b"\x1c\0\0\0TFL3" + bytes(200))):
        model = tmp_path / name
        model.write_bytes(data)
        (tmp_path / (name + ".json")).write_text("{}")
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "predict_tflite.py"), "--model", str(model), "--input", str(scene), "--output", str(tmp_path / "out.tif")],
            capture_output=True,
            text=True,
            env=env(),
            timeout=TIMEOUT,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert name in error_line(proc.stderr) and "not a valid TFLite model" in error_line(proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out.tif").exists()


# ---- fit lifecycle ----------------------------------------------------------------------


def fit_case(sample: str, base: str, name: str, spec: Spec) -> Case:
    return prepare(name, spec, sample, base)


def checkpoint_bytes(run_dir: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(run_dir):
        for f in files:
            if f.endswith(".weights.h5"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(dirpath, f), run_dir)] = fh.read()
    return out


def test_fit_lifecycle(sample, tmp_path):
    """Lock (a second fit refused naming the first's PID, nothing written), a finished fit
    rerun after a kill during its export (not retrained, checkpoints untouched, leftovers
    removed), a NaN loss naming the windows with NaN pixels, a full disk during fit."""
    base = str(tmp_path)
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir)
    fit = Spec(lambda c: None, (), command="fit", rc=0, trainer={"limit_train_batches": 1, "limit_val_batches": 1, "export_saved_model": True})
    done = fit_case(sample, base, "finished", fit)
    locked = fit_case(sample, base, "locked", fit)

    def nan_in_train_window(case: Case) -> None:
        from bad_input_cases import float_pixels

        case.victim = windows_of(case.dataset, "train")[0]
        # +Inf, not NaN: on CPU the tiny SimpleCNN's ReLU and MaxPooling2D (oneDNN) drop a
        # NaN pixel, so it never reaches the loss; +Inf survives them and the loss diverges.
        # The note names the windows with non-finite pixels (NaN or Inf) either way.
        float_pixels(float("inf"))(case)

    nan = prepare("nan_loss", Spec(nan_in_train_window, ("non-finite training loss", "{victim}", "check_nan"), command="fit", rc=3, trainer={"max_epochs": 1}), sample, base)
    nan.names = tuple(n.replace("default/" + os.path.basename(windows_of(nan.dataset, "val")[0]), "default/" + os.path.basename(nan.victim)) for n in nan.names)
    full = fit_case(sample, base, "disk_full", Spec(lambda c: None, ("cannot write", "weights.h5", "no space left"), command="fit", rc=2, trainer={"limit_train_batches": 1, "limit_val_batches": 1}))

    # The lock: a process holding it, then the fit.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from rskeras.train.run_dir import lock_run_dir; lock_run_dir({locked.run_dir!r}); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked_before = snapshot(locked.dir)
        runs = [
            {"id": "finished", "argv": done.argv, "cwd": done.dir, "log_dir": log_dir},
            {"id": "locked", "argv": locked.argv, "cwd": locked.dir, "log_dir": log_dir},
            {"id": "nan_loss", "argv": nan.argv, "cwd": nan.dir, "log_dir": log_dir},
        ]
        results = run_all(runs, log_dir)
        results_nan = results["nan_loss"][0]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    # A second fit on a locked run directory: refused, naming the holder, writing nothing.
    out, err = read_log(log_dir, "locked")
    locked.rc, locked.names = 2, ("in use by another fit", f"PID {holder.pid}", locked.run_dir)
    check_error(locked, results["locked"][0], out, err)
    assert snapshot(locked.dir) == locked_before

    # NaN loss: rc 3, the message names the window holding NaN pixels (checked last: see
    # the end of the test).
    nan_out, nan_err = read_log(log_dir, "nan_loss")

    # A finished fit, then the aftermath of a kill -9 during its SavedModel export.
    out, err = read_log(log_dir, "finished")
    assert results["finished"][0]["rc"] == 0, err[-3000:]
    state = json.load(open(os.path.join(done.run_dir, "fit_state.json")))
    assert state["finished"] is True and os.path.exists(state["final_checkpoint"])
    saved = checkpoint_bytes(done.run_dir)
    assert saved
    metrics = open(os.path.join(done.run_dir, "metrics.csv")).read()
    shutil.rmtree(os.path.join(done.run_dir, "saved_model"), ignore_errors=True)
    os.makedirs(os.path.join(done.run_dir, ".saved_model-x1y2z3", "variables"))
    open(os.path.join(done.run_dir, ".config.yaml.ab12cd.tmp.yaml"), "w").close()
    rerun = run_all([{"id": "rerun", "argv": done.argv, "cwd": done.dir, "log_dir": log_dir}], log_dir)
    out, err = read_log(log_dir, "rerun")
    assert rerun["rerun"][0]["rc"] == 0, err[-3000:]
    assert "already finished" in out, out[-2000:]
    assert checkpoint_bytes(done.run_dir) == saved, "the rerun rewrote the finished fit's checkpoints"
    assert open(os.path.join(done.run_dir, "metrics.csv")).read() == metrics
    assert not [n for n in os.listdir(done.run_dir) if n.startswith(".saved_model-") or n.endswith(".tmp.yaml")]
    assert os.path.exists(os.path.join(done.run_dir, "saved_model", "saved_model.pb"))

    # Disk full during fit: a file size limit makes every checkpoint write fail.
    runs = [{"id": "disk_full", "argv": full.argv, "cwd": full.dir, "log_dir": log_dir, "fsize": 40000}]
    results = run_all(runs, log_dir, parallel=1)
    out, err = read_log(log_dir, "disk_full")
    check_error(full, results["disk_full"][0], out, err)
    leftovers = [f for d, _, fs in os.walk(full.run_dir) for f in fs if f.startswith(".tmp-")]
    assert not leftovers

    check_error(nan, results_nan, nan_out, nan_err)


def test_two_fits_race_for_one_run_directory(sample, tmp_path):
    """Two fits started together on one run directory: one trains, the other is refused
    naming the first's PID; the winner's checkpoints and metrics are whole."""
    case = prepare("race", Spec(lambda c: None, (), command="fit", rc=0, trainer={"limit_train_batches": 1, "limit_val_batches": 1}), sample, str(tmp_path))
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), *case.argv]
    procs = [subprocess.Popen(command, cwd=case.dir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=3 * TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    loser = next(i for i, p in enumerate(procs) if p.returncode == 2)
    winner = procs[1 - loser]
    assert f"in use by another fit (PID {winner.pid}" in error_line(outs[loser][1])
    assert json.load(open(os.path.join(case.run_dir, "fit_state.json")))["finished"] is True


# ---- non-ASCII names: fit and predict round trip ----------------------------------------


def test_non_ascii_names_round_trip(sample, tmp_path):
    """17.1: windows and groups named with accents and spaces train, validate and get
    their predictions written."""
    base = str(tmp_path)
    case = prepare("unicode", Spec(lambda c: None, (), command="fit", rc=0, trainer={"limit_train_batches": 2, "limit_val_batches": 1}), sample, base)
    windows = os.path.join(case.dataset, "windows")
    train = windows_of(case.dataset, "train")[0]
    os.rename(train, os.path.join(os.path.dirname(train), "praça 01"))
    os.rename(os.path.join(windows, "predict"), os.path.join(windows, "prévision été"))
    with open(case.config) as f:
        config = yaml.safe_load(f)
    config["data"]["init_args"]["predict_config"] = {"groups": ["prévision été"], "skip_targets": True}
    config["trainer"]["callbacks"] = [{"class_path": "rslearn.train.prediction_writer.RslearnWriter", "init_args": {"output_layer": "output_classification"}}]
    with open(case.config, "w") as f:
        yaml.safe_dump(config, f, allow_unicode=True)
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir)
    best = os.path.join(case.run_dir, "checkpoints")
    results = run_all([{"id": "fit", "argv": case.argv, "cwd": case.dir, "log_dir": log_dir}], log_dir)
    out, err = read_log(log_dir, "fit")
    assert results["fit"][0]["rc"] == 0, err[-3000:]
    ckpt = sorted(os.path.join(best, f) for f in os.listdir(best) if f.endswith(".weights.h5"))[0]
    argv = ["predict", "--config", case.config, "--ckpt_path", ckpt]
    results = run_all([{"id": "predict", "argv": argv, "cwd": case.dir, "log_dir": log_dir}], log_dir)
    out, err = read_log(log_dir, "predict")
    assert results["predict"][0]["rc"] == 0, err[-3000:]
    scenes = os.listdir(os.path.join(windows, "prévision été"))
    assert scenes
    for scene in scenes:
        layer = os.path.join(windows, "prévision été", scene, "layers", "output_classification")
        assert os.path.exists(os.path.join(layer, "completed")), os.listdir(os.path.join(windows, "prévision été", scene))
        with open(os.path.join(layer, "data.geojson")) as f:
            assert json.load(f)["features"]
    no_false_markers(case.dataset, "output_classification")
