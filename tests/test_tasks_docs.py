"""Every ``task:`` YAML example of docs/tasks.md builds (class_path + init_args), and the
head examples build too."""

import importlib
import re

import pytest

yaml = pytest.importorskip("yaml")

from conftest import ROOT  # noqa: E402


def build(spec):
    module, _, name = spec["class_path"].rpartition(".")
    args = dict(spec.get("init_args", {}))
    if name == "MultiTask":
        args["tasks"] = {k: build(v) for k, v in args["tasks"].items()}
    return getattr(importlib.import_module(module), name)(**args)


def test_docs_yaml_examples_build():
    text = (ROOT / "docs" / "tasks.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    built = 0
    for block in blocks:
        config = yaml.safe_load(block)
        if "task" in config:
            build(config["task"])
            built += 1
        for head in config.get("decoder", []):
            build(head)
    assert built >= 6
