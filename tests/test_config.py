"""Config loading and instantiation: env substitution, merging, overrides, key-path errors."""

import pytest

from rskeras.config.class_paths import map_class_path
from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import instantiate
from rskeras.config.loader import load_config, load_yaml_text, set_by_path, substitute_env

TASK = {
    "class_path": "rslearn.train.tasks.classification.ClassificationTask",
    "init_args": {"property_name": "category", "classes": ["a", "b"]},
}


def test_env_substitution(monkeypatch):
    monkeypatch.setenv("RSK_TEST_PATH", "/data/x")
    monkeypatch.delenv("RSK_UNSET", raising=False)
    assert substitute_env("path: ${RSK_TEST_PATH}/y ${RSK_UNSET}.") == "path: /data/x/y ."
    assert load_yaml_text("a: ${RSK_TEST_PATH}") == {"a": "/data/x"}


def test_merge_and_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("data:\n  init_args:\n    batch_size: 4\n    path: p\ntrainer:\n  max_epochs: 3\n  callbacks: [1, 2]\n")
    b.write_text("data:\n  init_args:\n    batch_size: 8\ntrainer:\n  callbacks: [3]\n")
    cfg = load_config([str(a), str(b)], [("trainer.max_epochs", "5"), ("data.init_args.names", "[w1, w2]")])
    assert cfg["data"]["init_args"] == {"batch_size": 8, "path": "p", "names": ["w1", "w2"]}
    assert cfg["trainer"] == {"max_epochs": 5, "callbacks": [3]}


def test_override_list_index_and_errors():
    cfg = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    set_by_path(cfg, "a.b.1.c", 7)
    assert cfg["a"]["b"][1]["c"] == 7
    with pytest.raises(ConfigError, match="a.b.5"):
        set_by_path(cfg, "a.b.5.c", 1)


def test_class_path_mapping():
    assert map_class_path("rslearn.models.swin.Swin") == "rskeras.models.swin.Swin"
    assert map_class_path("rslearn.models.multitask.SingleTaskModel") == "rskeras.models.singletask.SingleTaskModel"
    assert map_class_path("rslearn.models.singletask.MultiTaskModel") == "rskeras.models.multitask.MultiTaskModel"
    assert map_class_path("torch.nn.ReLU") == "rskeras.models.activations.ReLU"


def test_instantiate_task():
    task = instantiate(TASK, "data.init_args.task")
    assert task.classes == ["a", "b"] and task.property_name == "category"


def test_unknown_class_path_names_key():
    with pytest.raises(ConfigError, match=r"^data\.init_args\.task\.class_path: unknown class 'rslearn\.train\.tasks\.nope\.Task'"):
        instantiate({"class_path": "rslearn.train.tasks.nope.Task"}, "data.init_args.task")


def test_misspelled_argument_names_key_and_suggests():
    node = {"class_path": TASK["class_path"], "init_args": {"property_name": "c", "clases": ["a"]}}
    with pytest.raises(ConfigError) as e:
        instantiate(node, "data.init_args.task")
    assert "data.init_args.task.init_args.clases: unknown argument" in str(e.value)
    assert "did you mean 'classes'" in str(e.value)


def test_missing_argument_names_key():
    node = {"class_path": TASK["class_path"], "init_args": {"property_name": "c"}}
    with pytest.raises(ConfigError, match=r"data\.init_args\.task\.init_args: missing required argument\(s\) \['classes'\]"):
        instantiate(node, "data.init_args.task")


def test_wrong_type_names_key():
    node = {"class_path": TASK["class_path"], "init_args": {"property_name": "c", "classes": "a"}}
    with pytest.raises(ConfigError, match=r"^data\.init_args\.task\.init_args\.classes: expected list\[str\], got str 'a'"):
        instantiate(node, "data.init_args.task")


def test_constructor_error_names_key():
    node = {
        "class_path": TASK["class_path"],
        "init_args": {"property_name": "c", "classes": ["a", "b", "c"], "positive_class_threshold": 0.3},
    }
    with pytest.raises(ConfigError, match=r"^data\.init_args\.task: ClassificationTask: .*exactly 2 classes"):
        instantiate(node, "data.init_args.task")


def test_plain_mapping_builds_typed_class_and_enum():
    from rskeras.config.dataset import DType
    from rskeras.train.data_module import RslearnDataModule

    node = {
        "class_path": "rslearn.train.data_module.RslearnDataModule",
        "init_args": {
            "path": "/nonexistent",
            "inputs": {"image": {"data_type": "raster", "layers": ["s2"], "bands": ["B04"], "dtype": "INT32"}},
            "task": TASK,
            "train_config": {"tags": {"split": "train"}, "crop_size": 32},
        },
    }
    dm = instantiate(node, "data")
    assert isinstance(dm, RslearnDataModule)
    assert dm.inputs["image"].dtype is DType.INT32
    assert dm.split_configs["train"].get_crop_size() == (32, 32)
    bad = {**node, "init_args": {**node["init_args"], "inputs": {"image": {"data_type": "raster", "layers": ["s2"], "bandz": ["B04"]}}}}
    with pytest.raises(ConfigError, match=r"^data\.init_args\.inputs\.image\.bandz: unknown argument"):
        instantiate(bad, "data")


def test_arguments_next_to_class_path_are_rejected():
    with pytest.raises(ConfigError, match="put arguments under init_args"):
        instantiate({"class_path": TASK["class_path"], "classes": ["a"]}, "data.init_args.task")
