"""Bad configs and command lines (issues 13, 14.9, 17.4, 17.5): each is one line on stderr
naming the key or file, exit code 2, no traceback, no hang, and nothing it names is run."""

import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from rskeras.config import class_paths
from rskeras.config.errors import ConfigError
from rskeras.config.loader import load_yaml_text

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "tools" / "train.py")
EXPORT = str(ROOT / "tools" / "export.py")
CLASSIFICATION = str(ROOT / "configs" / "classification.yaml")


def run(args, cwd, env=None, timeout=180):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    full_env.pop("RSKERAS_ALLOW_CLASS_PREFIX", None)
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=timeout, cwd=str(cwd), env=full_env)


def one_line_error(done, *fragments):
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    # The run's own log lines (INFO/WARNING records) may come first; the error is one line.
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_config(tmp_path, mutate, name="bad.yaml"):
    config = yaml.safe_load(open(CLASSIFICATION))
    mutate(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_popen_as_data_class_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"

    def mutate(config):
        config["data"] = {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}

    done = run([TRAIN, "fit", "--config", write_config(tmp_path, mutate)], tmp_path)
    one_line_error(done, "data.class_path: 'subprocess.Popen' is not allowed", "--allow-class-prefix subprocess.")
    assert not marker.exists()


@pytest.mark.parametrize(
    "section",
    [
        "trainer.callbacks",
        "model.init_args.model.init_args.encoder",
        "data.init_args.default_config.transforms",
    ],
)
def test_foreign_classes_are_refused_in_every_section(tmp_path, section):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    marker = tmp_path / "pwned"

    def mutate(config):
        node = config
        parts = section.split(".")
        for part in parts[:-1]:
            node = node[part]
        # Listed last, after every allowed class: still refused before anything is built.
        node[parts[-1]] = list(node.get(parts[-1]) or []) + [
            {"class_path": "logging.FileHandler", "init_args": {"filename": str(victim), "mode": "w"}},
            {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}},
        ]

    done = run([TRAIN, "fit", "--config", write_config(tmp_path, mutate), "--print_config"], tmp_path)
    one_line_error(done, f"{section}.", "'logging.FileHandler' is not allowed")
    assert victim.read_text() == "keep me" and not marker.exists()


def test_allow_list_opt_in_and_the_defaults():
    assert class_paths.is_allowed("rslearn.models.swin.Swin")
    assert class_paths.is_allowed("lightning.pytorch.callbacks.EarlyStopping")
    assert class_paths.is_allowed("torch.nn.ReLU")
    assert class_paths.is_allowed("keras.callbacks.EarlyStopping")
    # writes or deletes at a path of the config's choosing: opt-in only
    assert not class_paths.is_allowed("keras.callbacks.BackupAndRestore")
    assert not class_paths.is_allowed("subprocess.Popen") and not class_paths.is_allowed("builtins.eval")
    try:
        class_paths.set_allowed_prefixes(["collections."])
        assert class_paths.is_allowed("collections.OrderedDict") and not class_paths.is_allowed("subprocess.Popen")
    finally:
        class_paths.set_allowed_prefixes([])
    # an rskeras module's import of a foreign class is not an rskeras class
    from rskeras.config.instantiate import resolve_class

    with pytest.raises(ConfigError, match="is not allowed"):
        resolve_class("rskeras.train.trainer.Any", "x")


def test_alias_bomb_is_refused_fast(tmp_path):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 8):  # 10^7 leaves once expanded
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: YAML aliases expand to more than 100000 nodes"):
        load_yaml_text(path.read_text(), str(path))
    assert time.monotonic() - start < 5
    done = run([TRAIN, "fit", "--config", str(path)], tmp_path, timeout=60)
    one_line_error(done, "bomb.yaml", "alias")
    # a few aliases stay fine
    assert load_yaml_text("t: &t {a: 1}\nu: [*t, *t]\n") == {"t": {"a": 1}, "u": [{"a": 1}, {"a": 1}]}


def test_missing_data_section(tmp_path):
    done = run([TRAIN, "fit", "--config", write_config(tmp_path, lambda c: c.pop("data"))], tmp_path)
    one_line_error(done, "data: section is required")


def test_misspelled_top_level_key(tmp_path):
    def mutate(config):
        config["trainr"] = config.pop("trainer")

    done = run([TRAIN, "fit", "--config", write_config(tmp_path, mutate)], tmp_path)
    one_line_error(done, "unknown top-level config keys", "did you mean 'trainer'")


def test_export_negative_input_size(tmp_path):
    done = run([EXPORT, "--config", CLASSIFICATION, "--checkpoint", "x.weights.h5", "--format", "tflite", "--input-size", "-5", "7"], tmp_path)
    one_line_error(done, "--input-size -5 7: height and width must be positive")


def test_missing_dataset_path_with_verbose_and_error_log(tmp_path):
    args = [TRAIN, "fit", "--config", CLASSIFICATION, "--data.init_args.path", str(tmp_path / "nowhere"), "--trainer.default_root_dir", str(tmp_path / "run")]
    line = one_line_error(run(args, tmp_path), "nowhere", "traceback: ")
    log = tmp_path / "run" / "error.log"
    assert str(log) in line and "Traceback" in log.read_text()
    verbose = run(args + ["--verbose"], tmp_path)
    assert verbose.returncode == 2 and "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("train.py: error: ")


def test_unknown_detection_category_is_one_line(sample_dataset, tmp_path):
    # The sample dataset's `objects` layer holds vessels; a class list without "vessel"
    # makes every labelled window fail the task's graph check.
    args = [
        TRAIN, "fit", "--config", str(ROOT / "configs" / "detection.yaml"),
        "--data.init_args.task.init_args.classes", "[unknown, ship]",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    line = one_line_error(run(args, tmp_path, {"DATASET_PATH": sample_dataset}, timeout=400), "is not one of ['unknown', 'ship']", "window ")
    assert "InvalidArgumentError" not in line


def test_deterministic_with_xla_on_a_max_pooling_model_is_one_line(sample_dataset, tmp_path):
    """TF's op determinism refuses XLA's max-pool gradient (SimpleCNN pools): with
    jit_compile true that is one line naming both keys, exit 2; "auto" stays off under
    deterministic, so the same config trains."""
    args = [
        TRAIN, "fit", "--config", CLASSIFICATION, "--trainer.deterministic", "true",
        "--model.init_args.model.init_args.encoder.0.init_args.channels", "[8, 8, 8]",
        "--model.init_args.model.init_args.decoder.0.init_args.in_channels", "8",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--trainer.callbacks", "[]",
    ]
    # TF_CPP_MIN_LOG_LEVEL 3: TensorFlow's own C++ error log of the refused kernel is hidden.
    env = {"DATASET_PATH": sample_dataset, "TF_CPP_MIN_LOG_LEVEL": "3"}
    line = one_line_error(
        run(args + ["--trainer.jit_compile", "true", "--trainer.default_root_dir", str(tmp_path / "on")], tmp_path, env, timeout=400),
        "trainer.deterministic", "trainer.jit_compile", "MaxPool",
    )
    assert "UnimplementedError" not in line
    done = run(args + ["--trainer.default_root_dir", str(tmp_path / "auto")], tmp_path, env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]


def test_pipeline_assertion_from_a_compiled_step_is_surfaced():
    """A task's data check failing while a compiled train step pulls the batch (not the
    iterator itself) is still the task's one-line message (it came out as rc 1 before)."""
    import tensorflow as tf

    from rskeras.train.host_calls import pipeline_assertion, surface_errors
    from rskeras.train.dataset import DataReadError

    text = (
        "assertion failed: [DetectionTask: window default/w_1, input targets: value 'vessel' of property 'category' "
        "is not one of ['unknown', 'ship'] (set skip_unknown_categories to skip such features)]\n\t [[{{node Assert/Assert}}]]"
        "\n\t [[IteratorGetNext]] [Op:__inference_multi_step_on_iterator_11003]"
    )
    error = tf.errors.InvalidArgumentError(None, None, text)
    assert pipeline_assertion(error).startswith("DetectionTask: window default/w_1, input targets: value 'vessel'")
    with pytest.raises(DataReadError, match=r"^DetectionTask: window default/w_1, .*skip such features\)$"):
        with surface_errors():
            raise error
    graph = (
        "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call last):\n<stack traces unavailable>\n"
        "Error in user-defined function passed to ParallelMapDatasetV2:27 transformation with iterator: Iterator::Root::Prefetch::"
        "ParallelMapV2: assertion failed: [DetectionTask: window default/w_2, input targets: value \\'vessel\\' of property "
        "\\'category\\' is not one of [\\'unknown\\']]\n\t [[{{node Assert/Assert}}]]\n\t [[IteratorGetNext]] [Op:__inference_multi_step_on_iterator_1]"
    )
    assert pipeline_assertion(tf.errors.InvalidArgumentError(None, None, graph)) == (
        "DetectionTask: window default/w_2, input targets: value 'vessel' of property 'category' is not one of ['unknown']"
    )
    # An assertion of the model's own graph (no iterator) is not a data error.
    assert pipeline_assertion(tf.errors.InvalidArgumentError(None, None, "assertion failed: [x > 0]\n\t [[{{node Assert}}]]")) is None
