"""Test configuration: quiet TensorFlow, make the repository importable, fixtures path."""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"

import pytest


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small sample dataset (40 windows of 32x32 + 2 predict windows of 48x48), shared
    read-only by the tests of a session."""
    from tools.make_sample_dataset import make_dataset

    root = tmp_path_factory.mktemp("sample") / "ds"
    return str(make_dataset(str(root), num_windows=40, size=32, seed=1, num_predict=2, predict_size=48, progress=False))
