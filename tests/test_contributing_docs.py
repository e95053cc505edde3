"""The examples of docs/contributing.md (an encoder and a task) run as written."""

import re

import pytest

from conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "contributing.md").read_text(), re.S)


def test_contributing_has_an_encoder_and_a_task_example():
    assert len(BLOCKS) == 2
    assert "class TinyEncoder(FeatureExtractor)" in BLOCKS[0] and "class BrightnessTask(BasicTask)" in BLOCKS[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["encoder", "task"][: len(BLOCKS)])
def test_contributing_example_runs(index):
    exec(compile(BLOCKS[index], f"docs/contributing.md block {index}", "exec"), {"__name__": "contributing_example"})
